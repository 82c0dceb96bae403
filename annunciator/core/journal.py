"""The alarm journal: one line per state change of an event, and notes about it (nobody could
be notified, a pipeline could not be stored)."""

from __future__ import annotations

from . import schema
from .alarms import AlarmEvent, utcnow
from .store import Store


def write(store: Store, event: AlarmEvent, action: str, user: str | None, notes: str | None) -> None:
    """Queue a journal line in the current batch (the same commit as the change it records)."""
    write_source(store, event.source, action, user, notes, event_id=event.id)


def write_source(store: Store, source: str, action: str, user: str | None, notes: str | None,
                 event_id: str | None = None) -> None:
    """A journal line about a source with no event of its own (the gateway: annunciator/cluster)."""
    store.insert(schema.journal, {"event_id": event_id, "source": source, "ts": utcnow(),
                                  "action": str(action), "user": user, "notes": notes or None})
