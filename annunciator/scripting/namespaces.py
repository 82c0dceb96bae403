"""The core ``system`` namespaces, named as Ignition names them so integrators' habits carry over."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from annunciator.core.alarms import utcnow

from .runner import Bridge

if TYPE_CHECKING:
    from annunciator.core.gateway import Gateway


class AlarmFunctions:
    """``system.alarm``."""

    def __init__(self, gateway: Gateway, bridge: Bridge):
        self._gw, self._bridge = gateway, bridge

    def acknowledge(self, eventIds: list[str], notes: str = "", user: str = "script") -> list[str]:
        events = self._bridge.call(self._gw.acknowledge(list(eventIds), user, notes or ""))
        return [e.id for e in events]

    def queryStatus(self, priority: Any = None, state: str | None = None, source: str | None = None,
                    displayPath: str | None = None) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self._gw.query_status(
            priority=priority, state=state, source=source, display_path=displayPath)]

    def queryJournal(self, startDate: datetime | None = None, endDate: datetime | None = None,
                     source: str | None = None, eventId: str | None = None) -> list[dict[str, Any]]:
        return self._bridge.call(self._gw.journal(since=startDate, until=endDate, source=source, event_id=eventId))

    def shelve(self, path: list[str], timeoutMinutes: float = 15, user: str = "script") -> None:
        self._bridge.call(self._gw.shelve(list(path), timeoutMinutes, user))

    def unshelve(self, path: list[str], user: str = "script") -> None:
        self._bridge.call(self._gw.unshelve(list(path), user))

    def getShelvedPaths(self) -> list[str]:
        return [s["source"] for s in self._gw.shelved_sources()]

    def listPipelines(self) -> list[str]:
        return sorted(self._gw.pipelines)

    def cancel(self, eventIds: list[str]) -> int:
        """Cancel every running pipeline instance of these events; returns how many."""
        async def run() -> int:
            count = 0
            for eid in eventIds:
                for inst in list(self._gw.engine.by_event.get(eid, {}).values()):
                    self._gw.cancel_instance(inst.id, "script")
                    count += 1
            return count
        return self._bridge.call(run())


class TagFunctions:
    """``system.tag``."""

    def __init__(self, gateway: Gateway):
        self._tags = gateway.tags

    def readBlocking(self, paths: list[str]) -> list[Any]:
        return [self._tags.read(p) for p in paths]

    def writeBlocking(self, paths: list[str], values: list[Any]) -> list[str]:
        out = []
        for p, v in zip(paths, values, strict=True):
            try:
                self._tags.write(p, v)
                out.append("Good")
            except KeyError:
                out.append("Bad_NotFound")
        return out

    def browse(self, path: str = "") -> list[dict[str, Any]]:
        return [t.to_dict() for t in self._tags.browse(path)]


class UtilFunctions:
    """``system.util``."""

    def getLogger(self, name: str) -> logging.Logger:
        return logging.getLogger(f"annunciator.scripts.{name}")

    def now(self) -> datetime:
        return utcnow()
