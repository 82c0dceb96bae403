"""The tag provider: path -> value, quality, timestamp; subscribers hear of every change."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..core.alarms import utcnow

log = logging.getLogger(__name__)

DATA_TYPES = ("Int4", "Int8", "Float8", "Boolean", "String", "DateTime", "Dataset")
GOOD, BAD, UNCERTAIN = "Good", "Bad", "Uncertain"


@dataclass(slots=True)
class TagValue:
    path: str
    data_type: str
    value: Any
    quality: str = GOOD
    timestamp: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "dataType": self.data_type, "value": self.value,
                "quality": self.quality,
                "timestamp": self.timestamp.isoformat() if self.timestamp else None}


class TagProvider:
    def __init__(self) -> None:
        self._tags: dict[str, TagValue] = {}
        self._subscribers: list[Callable[[TagValue], None]] = []

    def define(self, path: str, data_type: str, value: Any = None) -> TagValue:
        if data_type not in DATA_TYPES:
            raise ValueError(f"tag {path}: unknown data type {data_type!r}; expected one of {DATA_TYPES}")
        tag = self._tags.get(path)
        if tag is None:
            tag = self._tags[path] = TagValue(path, data_type, value, GOOD, utcnow())
        return tag

    def write(self, path: str, value: Any, quality: str = GOOD) -> None:
        tag = self._tags.get(path)
        if tag is None:
            raise KeyError(f"no tag {path!r}")
        tag.value, tag.quality, tag.timestamp = value, quality, utcnow()
        for fn in self._subscribers:
            try:
                fn(tag)
            except Exception:
                log.exception("tag subscriber failed for %s", path)

    def read(self, path: str) -> TagValue:
        tag = self._tags.get(path)
        if tag is None:
            return TagValue(path, "String", None, BAD, None)
        return tag

    def browse(self, prefix: str = "") -> list[TagValue]:
        prefix = prefix.rstrip("/")
        return [t for p, t in sorted(self._tags.items())
                if not prefix or p == prefix or p.startswith(prefix + "/")]

    def subscribe(self, fn: Callable[[TagValue], None]) -> None:
        self._subscribers.append(fn)
