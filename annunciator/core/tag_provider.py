"""The tag provider: path -> value, data type, quality, timestamp; subscribers hear of every change.

Plugins create their tags in ``annunciator_register_tags`` and write them whenever their data
changes::

    tags.define("System/Gateway/Twilio/MessagesSent", "Int4", 0)
    tags.write("System/Gateway/Twilio/MessagesSent", 42)
    tags.define("System/Gateway/Twilio/UserStatistics", "Dataset",
                Dataset(columns=["UserId", "Username"], rows=[[0, "maria"]]))

Writes may come from any thread (scripts run on worker threads): the provider holds a lock while
it changes a tag, and calls subscribers after releasing it, in the writer's thread. Subscribers
must not block; those that need the gateway's loop hop onto it (see ``tags.alarms``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .alarms import utcnow
from .tag_types import (
    BAD,
    DATA_TYPES,
    GOOD,
    QUALITIES,
    UNCERTAIN,
    Dataset,
    TagError,
    TagNotFound,
    TagReadOnly,
    check_path,
    check_quality,
    check_type,
    coerce,
    to_json,
)

__all__ = ["BAD", "DATA_TYPES", "GOOD", "QUALITIES", "UNCERTAIN", "Dataset", "TagError", "TagNotFound",
           "TagProvider", "TagReadOnly", "TagValue"]

log = logging.getLogger(__name__)

Subscriber = Callable[["TagValue"], None]


@dataclass(slots=True)
class TagValue:
    """One tag. Subscribers get a snapshot (a copy), so a later write cannot change what they saw."""

    path: str
    data_type: str
    value: Any
    quality: str = GOOD
    timestamp: datetime | None = None
    # tags written only by their owner (System/..., plugin statistics) refuse API and script writes
    writable: bool = False
    doc: str = ""
    # alarm definitions (tags.alarms.TagAlarm) evaluated on every change of this tag
    alarms: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``/api/tags``, MQTT): datasets as {columns, rows}, times as ISO 8601."""
        return {"path": self.path, "dataType": self.data_type, "value": to_json(self.value),
                "quality": self.quality,
                "timestamp": self.timestamp.isoformat() if self.timestamp else None,
                "writable": self.writable}

    # Ignition's QualifiedValue, so readBlocking results read the same in scripts
    def getValue(self) -> Any:
        return self.value

    def getQuality(self) -> str:
        return self.quality

    def getTimestamp(self) -> datetime | None:
        return self.timestamp


class TagProvider:
    """Every tag of the gateway, by path."""

    def __init__(self) -> None:
        self._tags: dict[str, TagValue] = {}
        self._subscribers: list[tuple[str, Subscriber]] = []
        self._lock = threading.RLock()

    def define(self, path: str, data_type: str, value: Any = None, *, quality: str = GOOD,
               writable: bool = False, doc: str = "", alarms: list[Any] | None = None) -> TagValue:
        """Create a tag (or return the existing one of the same type, so defining twice is harmless).

        ``writable=True`` lets the HTTP API, ``system.tag.writeBlocking`` and MQTT write it; the
        owner may always write. A TagError names what is wrong with the path, type or value.
        """
        check_path(path)
        check_type(data_type, path)
        check_quality(quality)
        value = coerce(data_type, value, path)
        with self._lock:
            tag = self._tags.get(path)
            if tag is not None:
                if tag.data_type != data_type:
                    raise TagError(f"tag {path} is already defined as {tag.data_type}, not {data_type}")
                return tag
            tag = TagValue(path, data_type, value, quality, utcnow(), writable, doc, list(alarms or []))
            self._tags[path] = tag
            snapshot = replace(tag)
        self._notify(snapshot)
        return tag

    def write(self, path: str, value: Any, quality: str = GOOD, *, external: bool = False) -> bool:
        """Set a tag's value and quality; True when that changed anything (subscribers then hear).

        Raises TagNotFound for an unknown path, TagError for a value of the wrong type (the tag
        keeps its value) and, when ``external`` (API, scripts, MQTT), TagReadOnly for a tag its
        owner did not make writable.
        """
        check_quality(quality)
        with self._lock:
            tag = self._tags.get(path)
            if tag is None:
                raise TagNotFound(f"no tag {path!r}")
            if external and not tag.writable:
                raise TagReadOnly(f"tag {path} is read-only (written by the gateway or a plugin)")
            value = coerce(tag.data_type, value, path)
            if value == tag.value and quality == tag.quality and type(value) is type(tag.value):
                return False
            tag.value, tag.quality, tag.timestamp = value, quality, utcnow()
            snapshot = replace(tag)
        self._notify(snapshot)
        return True

    def get(self, path: str) -> TagValue:
        """The tag itself; TagNotFound when there is none."""
        with self._lock:
            tag = self._tags.get(path)
        if tag is None:
            raise TagNotFound(f"no tag {path!r}")
        return tag

    def read(self, path: str) -> TagValue:
        """A snapshot of the tag; an unknown or invalid path reads as a Bad value (as Ignition does)."""
        with self._lock:
            tag = self._tags.get(path)
            if tag is not None:
                return replace(tag)
        return TagValue(path, "String", None, BAD, None)

    def browse(self, prefix: str = "") -> list[TagValue]:
        """Snapshots of the tags at or under ``prefix`` (every tag for ""), sorted by path."""
        prefix = prefix.strip("/")
        if prefix:
            check_path(prefix)
        with self._lock:
            return [replace(t) for p, t in sorted(self._tags.items())
                    if not prefix or p == prefix or p.startswith(prefix + "/")]

    def subscribe(self, fn: Subscriber, prefix: str = "") -> Callable[[], None]:
        """Call ``fn(snapshot)`` after every change of a tag at or under ``prefix`` (and when a tag
        is defined). Returns a function that unsubscribes."""
        entry = (prefix.strip("/"), fn)
        with self._lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)

        return unsubscribe

    def __contains__(self, path: str) -> bool:
        return path in self._tags

    def __len__(self) -> int:
        return len(self._tags)

    def _notify(self, tag: TagValue) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for prefix, fn in subscribers:
            if prefix and tag.path != prefix and not tag.path.startswith(prefix + "/"):
                continue
            try:
                fn(tag)
            except Exception:
                # a broken exporter must not stop the others, nor the writer
                log.exception("tag subscriber %r failed for %s", fn, tag.path)
