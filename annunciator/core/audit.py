"""The audit log: every notification sent, delivered, failed or withdrawn, every acknowledgement
and every inbound reply, each with an event code, the person, the channel and the text.

Codes follow the seed systems' style (``SMSReply``, ``ReplyWithPIN``); plugins may record their
own codes, and queries take any string.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import schema
from .alarms import utcnow

if TYPE_CHECKING:
    from .store import Store


class Code(StrEnum):
    NOTIFICATION_SENT = "NotificationSent"  # the provider accepted it
    NOTIFICATION_DELIVERED = "NotificationDelivered"  # the provider reported delivery
    NOTIFICATION_UNDELIVERED = "NotificationUndelivered"  # the provider reported failed/undelivered
    NOTIFICATION_RETRY = "NotificationRetry"  # an attempt failed; another follows after a backoff
    NOTIFICATION_FAILED = "NotificationFailed"  # no more attempts on this channel
    NOTIFICATION_CANCELLED = "NotificationCancelled"  # withdrawn: its alarm no longer needs it
    CHANNEL_FALLBACK = "ChannelFallback"  # the next channel of the person's policy is tried
    NO_CONTACT = "NoContactInfo"  # the person has no contact info any of the profiles can use
    NOBODY_ON_CALL = "NobodyOnCall"  # the roster resolved to nobody
    PIPELINE_REFUSED = "PipelineRefused"  # the database refused a pipeline instance: it pages nobody
    HELD = "NotificationHeld"  # collected for a consolidated message / throttled
    CONSOLIDATED = "NotificationConsolidated"  # several alarms sent as one message
    ACKNOWLEDGED = "Acknowledged"
    SMS_REPLY = "SMSReply"
    REPLY_WITH_PIN = "ReplyWithPIN"
    PIN_REJECTED = "PinRejected"  # a wrong PIN (or none set), counted toward the lockout
    PIN_EXPIRED = "PinExpired"  # the right PIN, but past its expiry (gateway.pins.expire_after)
    PIN_LOCKOUT = "PinLockout"  # too many wrong PINs: the person is locked out for a while
    CLUSTER_ACTIVE = "ClusterActive"  # a node became the active one (a failover names the one before)


class AuditLog:
    """Writes audit rows through the store's group commit and reads them back."""

    def __init__(self, store: Store):
        self.store = store

    def record(self, code: str, *, user: str | None = None, channel: str | None = None,
               contact: str | None = None, text: str | None = None, event_ids: list[str] | None = None,
               notification_id: str | None = None, details: dict[str, Any] | None = None) -> None:
        """Queue one entry; it is stored with the batch that holds the change it describes."""
        self.store.insert(schema.audit, {
            "ts": utcnow(), "code": str(code), "username": user, "channel": channel, "contact": contact,
            "text": text, "event_ids": event_ids or [], "notification_id": notification_id,
            "details": details or None})

    async def query(self, *, user: str | None = None, code: str | None = None, event_id: str | None = None,
                    notification_ids: list[str] | None = None, since: datetime | None = None,
                    until: datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Entries oldest first (the newest ``limit`` of those that match)."""
        return await self.store.read(lambda conn: select(
            conn, user=user, code=code, event_id=event_id, notification_ids=notification_ids,
            since=since, until=until, limit=limit))


def select(conn: sa.Connection, *, user: str | None = None, code: str | None = None,
           event_id: str | None = None, notification_ids: list[str] | None = None,
           since: datetime | None = None, until: datetime | None = None,
           limit: int = 500) -> list[dict[str, Any]]:
    """Audit entries oldest first, read on ``conn`` (so a caller can read them in one snapshot
    with other tables)."""
    a = schema.audit
    q = schema.narrow(sa.select(a).order_by(a.c.id.desc()), a, since, until, username=user, code=code)
    if notification_ids is not None:
        q = q.where(a.c.notification_id.in_(notification_ids))
    if event_id:
        # event ids sit in a JSON list; narrowing by text first keeps this portable
        q = q.where(sa.cast(a.c.event_ids, sa.Text).contains(event_id))
    rows = []
    for r in conn.execute(q):
        if event_id and event_id not in (r.event_ids or []):
            continue
        rows.append(_entry(r))
        if len(rows) >= limit:
            break
    return list(reversed(rows))


def _entry(r: Any) -> dict[str, Any]:
    return {"id": r.id, "ts": r.ts.isoformat(), "code": r.code, "user": r.username, "channel": r.channel,
            "contact": r.contact, "text": r.text, "eventIds": r.event_ids or [],
            "notificationId": r.notification_id, "details": r.details}
