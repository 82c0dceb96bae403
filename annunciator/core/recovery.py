"""Start-up after a stop or a crash: the store is the source of truth, and this brings back
into memory what it holds unfinished — open events and shelves, running pipeline instances
(their waits re-armed), held batches, and notifications not yet sent (resent with the same
idempotency key)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from . import schema
from .alarm_lifecycle import Alarms
from .alarms import utcnow
from .audit import AuditLog, Code
from .delivery import Delivery
from .engine import Engine
from .notifications import HELD, PENDING, Dispatcher, notification_from_row
from .store import Store
from .users import User

log = logging.getLogger(__name__)


async def recover(*, store: Store, audit: AuditLog, alarms: Alarms, engine: Engine, delivery: Delivery,
                  dispatcher: Dispatcher, users: Mapping[str, User], max_age: float) -> None:
    """Load open events, shelves, running pipeline instances and unsent notifications."""
    now = utcnow()

    def load(conn: sa.Connection) -> tuple[list[Any], list[Any], list[Any], list[Any], int]:
        inst = [dict(r._mapping) for r in conn.execute(
            sa.select(schema.pipeline_instances).where(schema.pipeline_instances.c.status == "running"))]
        ids = {r["event_id"] for r in inst}
        notes = [dict(r._mapping) for r in conn.execute(
            sa.select(schema.notifications).where(schema.notifications.c.status.in_([PENDING, HELD])))]
        for n in notes:
            ids.update(n["event_ids"])
        ev = schema.alarm_events
        events = [dict(r._mapping) for r in conn.execute(sa.select(ev).where(
            sa.or_(ev.c.done.is_(False), ev.c.id.in_(ids) if ids else sa.false())))]
        shelves = [dict(r._mapping) for r in conn.execute(sa.select(schema.shelves))]
        last_code = conn.execute(sa.select(sa.func.max(ev.c.ack_code))).scalar() or 0
        return events, shelves, inst, notes, last_code

    events, shelves, instances, pending, last_code = await store.read(load)
    alarms.restore(events, shelves, last_code)
    for row in instances:
        owner = alarms.events.get(row["event_id"])
        if owner is not None:
            engine.restore(row, owner)
    for row in pending:
        user = users.get(row["username"])
        if user is None or not any(i in alarms.events for i in row["event_ids"]):
            why = "user or event no longer exists after restart"
            store.update(schema.notifications, row["id"], {"status": "failed", "updated": now, "last_error": why})
            audit.record(Code.NOTIFICATION_FAILED, user=row["username"], channel=row["profile"],
                         contact=row["contact"], text=why, event_ids=row["event_ids"], notification_id=row["id"])
            continue
        n = notification_from_row(row, user, alarms.events, max_age)
        if n.status == HELD:
            delivery.batches.recover(n)
            continue
        log.info("resending notification %s to %s (pending at shutdown)", n.id, user.username)
        dispatcher.submit_committed(n)
    # events loaded only for the notifications above are finished: the notifications hold them
    alarms.forget_finished()
