"""Trace lines: what each pipeline instance did and why, as an operator reads it at 3 a.m.

Lines are buffered per instance and written as one row per instance per commit (the store asks
for them just before it takes a batch, so a trace line is always in the same commit as the step
it describes). The engine, delivery and consolidation write lines here; none of them owns it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import schema
from .alarms import utcnow
from .store import Store


class Traces:
    def __init__(self, store: Store):
        self._store = store
        self._buffer: dict[str, tuple[str, list[list[Any]]]] = {}
        store.before_flush(self._flush)

    def line(self, instance_id: str, event_id: str, block: str | None, action: str, why: str,
             branch: int = -1) -> None:
        """Add a line to an instance's trace, also after the instance ended (a late delivery
        failure, a channel fallback, a consolidated send)."""
        lines = self._buffer.get(instance_id)
        if lines is None:
            lines = self._buffer[instance_id] = (event_id, [])
            self._store.touch()
        lines[1].append([utcnow().isoformat(), branch, block, action, why])

    def drop(self, instance_id: str) -> None:
        """Forget unwritten lines of an instance whose row the database refused."""
        self._buffer.pop(instance_id, None)

    def _flush(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, {}
        for instance_id, (event_id, lines) in buffer.items():
            self._store.insert(schema.trace_runs, {
                "instance_id": instance_id, "event_id": event_id,
                "ts": datetime.fromisoformat(lines[0][0]), "lines": lines})
