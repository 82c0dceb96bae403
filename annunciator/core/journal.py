"""The alarm journal: one line per state change of an event, and notes about it (nobody could
be notified, a pipeline could not be stored)."""

from __future__ import annotations

from . import schema
from .alarms import AlarmEvent, utcnow
from .store import Store


def write(store: Store, event: AlarmEvent, action: str, user: str | None, notes: str | None) -> None:
    """Queue a journal line in the current batch (the same commit as the change it records)."""
    store.insert(schema.journal, {"event_id": event.id, "source": event.source, "ts": utcnow(),
                                  "action": str(action), "user": user, "notes": notes or None})
