"""The gateway's own tags under System/Gateway/: alarm counts by state and priority, running
pipelines, notifications pending, waiting, sent and failed (docs/tags.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .alarms import AlarmEvent, Priority
from .tag_provider import TagProvider

if TYPE_CHECKING:
    from .engine import Instance
    from .notifications import Dispatcher


class SystemTags:
    def __init__(self, tags: TagProvider, events: Mapping[str, AlarmEvent], live: Mapping[str, Instance],
                 dispatcher: Dispatcher):
        self._tags = tags
        self._events = events  # the gateway's open events
        self._live = live  # the engine's running instances
        self._dispatcher = dispatcher
        self._pending = False

    def define(self) -> None:
        for name in ("ActiveUnacked", "ActiveAcked", "ClearUnacked", "Shelved"):
            self._tags.define(f"System/Gateway/Alarms/{name}", "Int4", 0)
        for name in ("Sent", "Failed"):
            self._tags.define(f"System/Gateway/Notifications/{name}", "Int8", 0)
        self._tags.define("System/Gateway/Pipelines/Running", "Int4", 0)
        # the Alarming folder, as the issue names it: what an operator's dashboard shows
        for p in Priority:
            self._tags.define(f"System/Gateway/Alarming/ActiveUnacked/{p.name.title()}", "Int4", 0,
                             doc=f"active, unacknowledged, unshelved alarms of priority {p.name.title()}")
        self._tags.define("System/Gateway/Alarming/PipelinesRunning", "Int4", 0)
        self._tags.define("System/Gateway/Alarming/NotificationsPending", "Int4", 0,
                         doc="notifications stored and not yet sent, failed or cancelled")
        self._tags.define("System/Gateway/Alarming/NotificationsWaiting", "Int4", 0,
                         doc="notifications waiting for a retry after a failed attempt")
        self._tags.define("System/Gateway/Alarming/NotificationsFailed", "Int8", 0,
                         doc="notifications failed since the gateway started")

    def refresh_soon(self, started: bool = True) -> None:
        """Refresh the count tags soon: counting walks every open event, so during a flood the
        refreshes are coalesced to one per second rather than one per API call."""
        if self._pending:
            return
        self._pending = True

        def refresh() -> None:
            self._pending = False
            self.refresh()

        try:
            asyncio.get_running_loop().call_later(1.0 if started else 0, refresh)
        except RuntimeError:
            refresh()

    def refresh(self) -> None:
        counts = {"ActiveUnacked": 0, "ActiveAcked": 0, "ClearUnacked": 0, "Shelved": 0}
        for e in self._events.values():
            if e.shelved:
                counts["Shelved"] += 1
            elif e.state in counts:
                counts[e.state] += 1
        by_priority = dict.fromkeys(Priority, 0)
        for e in self._events.values():
            if e.active and not e.acknowledged and not e.shelved:
                by_priority[e.priority] += 1
        for name, value in counts.items():
            if self._tags.read(f"System/Gateway/Alarms/{name}").value != value:
                self._tags.write(f"System/Gateway/Alarms/{name}", value)
        # write() tells subscribers (MQTT) only of values that changed
        for p, value in by_priority.items():
            self._tags.write(f"System/Gateway/Alarming/ActiveUnacked/{p.name.title()}", value)
        self._tags.write("System/Gateway/Alarming/PipelinesRunning", len(self._live))
        self._tags.write("System/Gateway/Alarming/NotificationsPending", self._dispatcher.pending())
        self._tags.write("System/Gateway/Alarming/NotificationsWaiting", len(self._dispatcher.waiting()))
        self._tags.write("System/Gateway/Alarming/NotificationsFailed", self._dispatcher.failed)
        self._tags.write("System/Gateway/Pipelines/Running", len(self._live))
        self._tags.write("System/Gateway/Notifications/Sent", self._dispatcher.sent)
        self._tags.write("System/Gateway/Notifications/Failed", self._dispatcher.failed)
