"""The history of alarms, as the API, the console and scripts read it: an event's journal,
its pipeline instances with their traces, its notifications and audit entries (its "story").

Read-only: it owns no state. Open events and live instances are read from memory (they may be
ahead of nothing: memory never holds what was not stored), the rest from the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import audit, schema
from .alarms import AlarmEvent
from .channels import Link
from .errors import NotFound
from .rows import event_from_row, instance_summary
from .store import Store

if TYPE_CHECKING:
    from .engine import Instance


class History:
    def __init__(self, store: Store, events: Mapping[str, AlarmEvent],
                 live: Mapping[str, Instance], held: Callable[[], list[dict[str, Any]]]):
        self._store = store
        self._events = events  # the gateway's open events
        self._live = live  # the engine's running instances
        self._held = held  # notifications held for consolidation

    async def find_event(self, event_id: str) -> AlarmEvent:
        event = self._events.get(event_id)
        if event is not None:
            return event

        def load(conn: sa.Connection) -> Any:
            return conn.execute(sa.select(schema.alarm_events).where(schema.alarm_events.c.id == event_id)).first()

        row = await self._store.read(load)
        if row is None:
            raise NotFound(f"no alarm event {event_id!r}")
        return event_from_row(dict(row._mapping))

    async def journal(self, *, event_id: str | None = None, source: str | None = None,
                      since: datetime | None = None, until: datetime | None = None,
                      limit: int = 500) -> list[dict[str, Any]]:
        return await self._store.read(lambda conn: _journal(conn, event_id=event_id, source=source,
                                                            since=since, until=until, limit=limit))

    async def instances_of(self, event_id: str) -> list[dict[str, Any]]:
        return self._summaries(await self._store.read(lambda conn: _instance_rows(conn, event_id)))

    def _summaries(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            live = self._live.get(row["id"])
            out.append(live.to_dict() if live else instance_summary(row))
        return out

    async def instance(self, instance_id: str) -> dict[str, Any]:
        live = self._live.get(instance_id)
        if live is not None:
            data = live.to_dict()
        else:
            pi = schema.pipeline_instances
            row = await self._store.read(lambda c: c.execute(sa.select(pi).where(pi.c.id == instance_id)).first())
            if row is None:
                raise NotFound(f"no pipeline instance {instance_id!r}")
            data = instance_summary(dict(row._mapping))
        data["trace"] = await self.traces(instance_id=instance_id)
        return data

    async def traces(self, *, instance_id: str | None = None, event_id: str | None = None) -> list[dict[str, Any]]:
        """Trace lines of one instance or of every instance of one event, oldest first."""
        return await self._store.read(lambda conn: _traces(conn, instance_id=instance_id, event_id=event_id))

    async def notifications_of(self, event_id: str) -> list[dict[str, Any]]:
        return await self._store.read(lambda conn: _notifications_of(conn, event_id))

    async def story(self, event_id: str) -> dict[str, Any]:
        """Everything that happened to one event: journal, pipelines with traces, notifications.

        Read in one snapshot: a notification shown as failed always comes with the trace line
        and the audit entry written in the same commit."""
        event = await self.find_event(event_id)

        def load(conn: sa.Connection) -> dict[str, Any]:
            return {"journal": _journal(conn, event_id=event_id), "instances": _instance_rows(conn, event_id),
                    "trace": _traces(conn, event_id=event_id),
                    "notifications": _notifications_of(conn, event_id),
                    "audit": audit.select(conn, event_id=event_id)}

        parts = await self._store.read(load)
        return {"event": event.to_dict(), "journal": parts["journal"],
                "instances": self._summaries(parts["instances"]), "trace": parts["trace"],
                "notifications": parts["notifications"],
                "held": [h for h in self._held() if event_id in h["eventIds"]], "audit": parts["audit"]}


def _journal(conn: sa.Connection, *, event_id: str | None = None, source: str | None = None,
             since: datetime | None = None, until: datetime | None = None,
             limit: int = 500) -> list[dict[str, Any]]:
    """Journal lines oldest first (the newest ``limit`` of those that match)."""
    j = schema.journal
    q = schema.narrow(sa.select(j).order_by(j.c.id.desc()).limit(limit), j, since, until,
                      event_id=event_id, source=source)
    return list(reversed([{"id": r.id, "eventId": r.event_id, "source": r.source, "ts": r.ts.isoformat(),
                           "action": r.action, "user": r.user, "notes": r.notes} for r in conn.execute(q)]))


def _instance_rows(conn: sa.Connection, event_id: str) -> list[dict[str, Any]]:
    pi = schema.pipeline_instances
    return [dict(r._mapping) for r in conn.execute(
        sa.select(pi).where(pi.c.event_id == event_id).order_by(pi.c.created))]


def _traces(conn: sa.Connection, *, instance_id: str | None = None,
            event_id: str | None = None) -> list[dict[str, Any]]:
    t = schema.trace_runs
    q = sa.select(t.c.instance_id, t.c.lines).order_by(t.c.id)
    q = q.where(t.c.instance_id == instance_id) if instance_id else q.where(t.c.event_id == event_id)
    out = [{"ts": ts, "instanceId": iid, "branch": branch, "block": block, "action": action, "why": why}
           for iid, lines in conn.execute(q) for ts, branch, block, action, why in lines]
    out.sort(key=lambda line: line["ts"])  # stable: lines of one run keep their order
    return out


def _notifications_of(conn: sa.Connection, event_id: str) -> list[dict[str, Any]]:
    n = schema.notifications
    pi = schema.pipeline_instances
    ids = sa.select(pi.c.id).where(pi.c.event_id == event_id)
    # a consolidated message carries alarms of other instances: find it by its event list
    batched = sa.and_(n.c.batch_key.is_not(None), sa.cast(n.c.event_ids, sa.Text).contains(event_id))
    rows = conn.execute(sa.select(n).where(sa.or_(n.c.instance_id.in_(ids), batched))
                        .order_by(n.c.created, n.c.id))
    return [{"id": r.id, "user": r.username, "profile": r.profile, "contactType": r.contact_type,
             "contact": r.contact, "message": r.message, "status": r.status, "attempts": r.attempts,
             "lastError": r.last_error, "providerId": r.provider_id, "pipeline": r.pipeline,
             "block": r.block, "created": r.created.isoformat(),
             "sentAt": r.sent_at.isoformat() if r.sent_at else None, "alarms": len(r.event_ids),
             "chainId": r.chain_id, "fallbacks": [Link.from_json(x).profile for x in r.chain or []],
             "deliveryStatus": r.delivery_status, "batch": r.batch_key,
             "dueAt": r.due_at.isoformat() if r.due_at else None, "attemptLog": r.attempt_log or []}
            for r in rows if event_id in r.event_ids]
