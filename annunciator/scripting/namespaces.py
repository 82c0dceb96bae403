"""The core ``system`` namespaces, named as Ignition names them so integrators' habits carry over.

Scripts run on worker threads; everything that reads or changes the gateway's alarm state runs on
the gateway's loop through the Bridge (a dict walked on one thread while the loop changes it on
another can fail). The tag provider is thread-safe, so tag functions call it directly.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from annunciator.core.alarms import utcnow
from annunciator.core.tag_types import TagError, TagNotFound, TagReadOnly

from .runner import Bridge

if TYPE_CHECKING:
    from annunciator.core.services import Services
    from annunciator.core.tag_provider import TagValue


def _list(value: Any) -> list[Any]:
    """Ignition functions take a list or a single item; so do these."""
    if value is None:
        return []
    return [value] if isinstance(value, str | int) else list(value)


class AlarmFunctions:
    """``system.alarm``."""

    def __init__(self, services: Services, bridge: Bridge):
        self._gw, self._bridge = services, bridge

    def acknowledge(self, eventIds: list[str] | str, notes: str = "", user: str = "script") -> list[str]:
        """Acknowledge events by id; returns the ids acknowledged. An unknown id raises."""
        events = self._bridge.call(self._gw.alarms.acknowledge(_list(eventIds), user, notes or ""))
        return [e.id for e in events]

    def queryStatus(self, priority: Any = None, state: Any = None, source: Any = None,
                    displayPath: Any = None) -> list[dict[str, Any]]:
        """Open events. Each filter is one value or a list (any of them): ``priority`` a minimum
        priority ("High") or a list of priorities, ``state`` ("ActiveUnacked", "Active", "Unacked"),
        ``source`` and ``displayPath`` globs."""
        from annunciator.core.alarms import Priority

        priorities = None
        if isinstance(priority, list | tuple | set):
            priorities = {Priority.parse(p) for p in priority}
            priority = None

        async def query() -> list[dict[str, Any]]:
            found: dict[str, Any] = {}
            for st in _list(state) or [None]:
                for src in _list(source) or [None]:
                    for dp in _list(displayPath) or [None]:
                        for e in self._gw.alarms.query_status(priority=priority, state=st, source=src, display_path=dp):
                            if priorities is None or e.priority in priorities:
                                found.setdefault(e.id, e)
            events = sorted(found.values(), key=lambda e: (-int(e.priority), e.active_time))
            return [e.to_dict() for e in events]

        return self._bridge.call(query())

    def queryJournal(self, startDate: datetime | None = None, endDate: datetime | None = None,
                     source: str | None = None, eventId: str | None = None,
                     limit: int = 500) -> list[dict[str, Any]]:
        """Journal lines between two times (oldest first), optionally for one source or event."""
        return self._bridge.call(self._gw.history.journal(since=startDate, until=endDate, source=source,
                                                  event_id=eventId, limit=limit))

    def shelve(self, paths: list[str] | str, timeoutMinutes: float = 15, user: str = "script") -> None:
        """Shelve sources for ``timeoutMinutes``: their new events are journaled but routed nowhere."""
        self._bridge.call(self._gw.alarms.shelve(_list(paths), timeoutMinutes, user))

    def unshelve(self, paths: list[str] | str, user: str = "script") -> None:
        self._bridge.call(self._gw.alarms.unshelve(_list(paths), user))

    def getShelvedPaths(self) -> list[str]:
        async def shelved() -> list[str]:
            return [s["source"] for s in self._gw.alarms.shelved_sources()]
        return self._bridge.call(shelved())

    def listPipelines(self) -> list[str]:
        async def names() -> list[str]:
            return sorted(self._gw.pipelines)
        return self._bridge.call(names())

    def cancel(self, eventIds: list[str] | str) -> int:
        """Cancel every running pipeline instance of these events; returns how many."""
        async def run() -> int:
            count = 0
            for eid in _list(eventIds):
                for inst in list(self._gw.engine.by_event.get(eid, {}).values()):
                    self._gw.engine.cancel_running(inst.id, "script")
                    count += 1
            return count
        return self._bridge.call(run())


class QualityCode(str):
    """A write result as Ignition returns it: compares equal to its code ("Good", "Bad_NotFound",
    "Bad_ReadOnly", "Bad_TypeConversion"); ``message`` says what was wrong."""

    message: str

    def __new__(cls, code: str, message: str = "") -> QualityCode:
        obj = super().__new__(cls, code)
        obj.message = message
        return obj

    def isGood(self) -> bool:
        return self == "Good"

    def isBad(self) -> bool:
        return self.startswith("Bad")


class TagFunctions:
    """``system.tag``."""

    def __init__(self, services: Services):
        self._tags = services.tags
        self._log = logging.getLogger("annunciator.scripts.tag")

    def readBlocking(self, paths: list[str] | str) -> list[TagValue]:
        """Qualified values (``.value``, ``.quality``, ``.timestamp``); an unknown path reads as Bad."""
        return [self._tags.read(p) for p in _list(paths)]

    def writeBlocking(self, paths: list[str] | str, values: list[Any] | Any) -> list[QualityCode]:
        """Write writable tags; one quality code per path. A refused write leaves the tag's value
        as it was and is logged with the reason."""
        paths = _list(paths)
        values = [values] if len(paths) == 1 and not isinstance(values, list | tuple) else list(values)
        if len(paths) != len(values):
            raise ValueError(f"writeBlocking: {len(paths)} paths but {len(values)} values")
        out = []
        for p, v in zip(paths, values, strict=True):
            try:
                self._tags.write(p, v, external=True)
                out.append(QualityCode("Good"))
            except TagNotFound as exc:
                out.append(QualityCode("Bad_NotFound", str(exc)))
            except TagReadOnly as exc:
                out.append(QualityCode("Bad_ReadOnly", str(exc)))
            except TagError as exc:
                out.append(QualityCode("Bad_TypeConversion", str(exc)))
            if out[-1].isBad():
                self._log.warning("writeBlocking %s refused: %s", p, out[-1].message)
        return out

    def browse(self, path: str = "", filter: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The folders and tags directly under ``path`` (``filter={"recursive": True}``: every tag
        under it), each with ``name``, ``fullPath``, ``hasChildren``, ``tagType`` ("Folder" or
        "AtomicTag") and, for tags, ``dataType``, ``value``, ``quality``."""
        prefix = path.strip("/")
        tags = self._tags.browse(prefix)
        if filter and filter.get("recursive"):
            return [self._entry(t) for t in tags]
        depth = len(prefix.split("/")) if prefix else 0
        out: dict[str, dict[str, Any]] = {}
        for t in tags:
            parts = t.path.split("/")
            if len(parts) <= depth:
                continue  # the path itself is a tag, not a folder
            name = parts[depth]
            full = "/".join(parts[:depth + 1])
            if len(parts) == depth + 1:
                out[full] = self._entry(t)
            else:
                out.setdefault(full, {"name": name, "fullPath": full, "hasChildren": True, "tagType": "Folder"})
        return list(out.values())

    @staticmethod
    def _entry(t: TagValue) -> dict[str, Any]:
        d = t.to_dict()
        return {"name": t.path.rsplit("/", 1)[-1], "fullPath": t.path, "hasChildren": False,
                "tagType": "AtomicTag", "dataType": t.data_type, "value": t.value, "quality": t.quality,
                "timestamp": d["timestamp"]}


class UtilFunctions:
    """``system.util``."""

    def getLogger(self, name: str) -> logging.Logger:
        return logging.getLogger(f"annunciator.scripts.{name}")

    def now(self) -> datetime:
        """Now, in UTC (an aware datetime)."""
        return utcnow()
