"""From a Notification block to messages: who is on call, which channels reach them, and what
happens when a channel fails.

Every decision is written where an operator will look at 3 a.m.: the trace of the instance that
asked (who was on call and why, which channel, fallback), the audit log (with an event code), and,
when nobody could be reached at all, the alarm's journal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from . import journal, schema
from .alarms import AlarmEvent, render_message, utcnow
from .audit import AuditLog, Code
from .channels import plan
from .consolidation import DEFAULT_DROPOUT, Batches, ConsolidationSettings, still_wanted
from .notifications import Notification, notification_from_row
from .profiles import NotificationProfile
from .store import Store
from .timers import Timers
from .traces import Traces
from .users import User

if TYPE_CHECKING:
    from .config import ChannelSettings, RetrySettings
    from .oncall import Resolution
    from .pipeline import Pipeline

log = logging.getLogger(__name__)

# what providers report after accepting a message or call (Twilio's words)
DELIVERED = frozenset({"delivered", "read", "completed", "answered"})
UNDELIVERED = frozenset({"failed", "undelivered", "busy", "no-answer", "canceled"})


def _rank(status: str | None) -> int:
    """Callbacks can arrive out of order (Twilio says so): a later stage never goes back."""
    if status is None:
        return -1
    if status in DELIVERED or status in UNDELIVERED:
        return 2
    return 0 if status in ("accepted", "scheduled", "queued") else 1


@dataclass(slots=True)
class Origin:
    """Where a notification comes from, for its row and its trace lines."""

    instance_id: str | None
    event_id: str
    pipeline: str | None
    block: str | None
    trace: Callable[[str, str], None]


@dataclass(slots=True)
class OnCallUsers:
    """A roster resolved for one event: the people, the order, and why."""

    roster: str
    users: list[User]
    order: str = "parallel"
    ack_wait: float | None = None


class Resolve(Protocol):
    def __call__(self, roster: str, event: AlarmEvent, at: datetime | None = None,
                 values: dict[str, Any] | None = None) -> Resolution:
        """Who is on call in ``roster`` for ``event`` (core.roster_resolution)."""


class Outbox(Protocol):
    """Where planned notifications go (core.notifications.Dispatcher)."""

    def submit(self, notification: Notification) -> None: ...

    def discard(self, notification: Notification) -> None: ...


class Delivery:
    """Plans who gets which notification through which channels, and decides what a failed
    channel leads to. It is given the store, audit log, timers and trace writer, the users and
    profiles, the pipelines (for their dropout), the roster resolver, each person's channel
    preferences, and the ``outbox`` that sends (core.notifications.Dispatcher)."""

    def __init__(self, *, store: Store, audit: AuditLog, timers: Timers, traces: Traces,
                 users: Mapping[str, User], profiles: Mapping[str, NotificationProfile],
                 pipelines: Mapping[str, Pipeline], resolve: Resolve, retry: RetrySettings,
                 preferences: Callable[[str], ChannelSettings], outbox: Outbox,
                 known_events: Mapping[str, AlarmEvent]):
        self.store = store
        self.audit = audit
        self.traces = traces
        self.users = users
        self.profiles = profiles
        self.pipelines = pipelines
        self.resolve = resolve
        self.retry = retry
        self.preferences = preferences
        self.outbox = outbox
        self._known_events = known_events  # open events, for a notification loaded from the store
        self.batches = Batches(store=store, audit=audit, timers=timers, pipelines=pipelines,
                               traces=traces, delivery=self)
        self._reported: dict[str, str] = {}  # provider id -> latest delivery status acted on
        self._recent: dict[str, Notification] = {}  # provider id -> notification, for delivery reports

    def withdraw(self, event: AlarmEvent) -> None:
        """The event no longer needs anyone: take it out of held (consolidated) batches."""
        self.batches.withdraw(event)

    # --- who ------------------------------------------------------------------------------

    def on_call(self, origin: Origin, event: AlarmEvent, roster: str, fallback_roster: str | None = None,
                values: dict[str, Any] | None = None) -> OnCallUsers:
        """Resolve a roster for an event; trace why; use the fallback roster when nobody is on call.
        ``values`` (the event's and the pipeline's runtime properties) feed calculated rosters."""
        res = self.resolve(roster, event, values=values)
        users = [self.users[u] if isinstance(u, str) else u for u in res.users]
        origin.trace("on-call", f"roster {roster}: " + ("; ".join(res.why) if res.why else
                                                       ", ".join(u.username for u in users) or "nobody"))
        if users:
            return OnCallUsers(roster, users, res.order, res.ack_wait)
        self.audit.record(Code.NOBODY_ON_CALL, text=f"roster {roster}: " + "; ".join(res.why),
                                  event_ids=[event.id], details={"roster": roster})
        if fallback_roster and fallback_roster != roster:
            origin.trace("nobody-on-call", f"nobody on call in roster {roster}; "
                                           f"using the pipeline's fallback roster {fallback_roster}")
            return self.on_call(origin, event, fallback_roster, values=values)
        origin.trace("notify-failed", f"nobody on call in roster {roster} and no fallback roster")
        journal.write(self.store, event, "notify-failed", None, f"nobody on call in roster {roster}")
        return OnCallUsers(roster, [], res.order, res.ack_wait)

    # --- send -----------------------------------------------------------------------------

    def send(self, origin: Origin, event: AlarmEvent, users: list[User], profiles: list[str], message: str, *,
             policy: str | None = None, consolidation: ConsolidationSettings | None = None,
             values: dict[str, Any] | None = None) -> int:
        """Queue (or, consolidating, hold) notifications of one event for each user; returns how
        many were queued or held. ``values`` fill the message (default: the event's own)."""
        count = 0
        for user in users:
            if consolidation is not None and consolidation.active:
                self.batches.add(origin, event, user, profiles[0], consolidation)
                count += 1
            else:
                text = render_message(message, values or event.template_values())
                count += self.dispatch(origin, user, profiles, policy, text, [event])
        return count

    def dispatch(self, origin: Origin, user: User, profiles: list[str], policy: str | None, text: str,
                 events: list[AlarmEvent], batch_key: str | None = None) -> int:
        """Plan the person's channels and queue the first notification of each chain."""
        prefs = self.preferences(user.username)
        p = plan(user, profiles, self.profiles, policy, prefs.policy, prefs.order)
        if not p.chains:
            why = f"{user.username} cannot be reached: " + "; ".join(p.missing)
            origin.trace("notify-failed", why)
            self.audit.record(Code.NO_CONTACT, user=user.username, text=why,
                                      event_ids=[e.id for e in events])
            for e in events:
                journal.write(self.store, e, "notify-failed", None, why)
            return 0
        for chain in p.chains:
            first, rest = chain[0], chain[1:]
            n = Notification(profile=first.profile, user=user, message=text, events=events,
                             contact_type=first.contact_type, contact=first.contact,
                             instance_id=origin.instance_id, pipeline=origin.pipeline, block=origin.block,
                             chain=rest, batch_key=batch_key)
            self._queue(n)
            then = f"; if it fails: {', then '.join(map(str, rest))}" if rest else ""
            origin.trace("notify", f"{user.username} via {first} ({p.policy}){then} [notification {n.id}]")
        return len(p.chains)

    def _queue(self, n: Notification) -> None:
        if n.expires_at is None:  # a fallback keeps the deadline of the chain it continues
            n.expires_at = n.created + timedelta(seconds=self.retry.max_age)
        self.store.insert(schema.notifications, n.row(),
                                  on_refused=lambda: self.outbox.discard(n))
        self.outbox.submit(n)

    # --- after sending --------------------------------------------------------------------

    def origin_of(self, n: Notification) -> Origin:
        event_id = n.events[0].id if n.events else ""

        def trace(action: str, why: str) -> None:
            if n.instance_id:
                self.traces.line(n.instance_id, event_id, n.block, action, why)

        return Origin(n.instance_id, event_id, n.pipeline, n.block, trace)

    def wanted(self, n: Notification) -> bool:
        """Does any alarm of the notification still need someone, by its pipeline's dropout?"""
        return self.unwanted_because(n) is None

    def unwanted_because(self, n: Notification) -> str | None:
        """Why no alarm of the notification needs anyone any more (None: one still does)."""
        pipeline = self.pipelines.get(n.pipeline or "")
        dropout = pipeline.dropout if pipeline is not None else DEFAULT_DROPOUT
        if not n.events:
            return "its alarms are finished"
        if any(still_wanted(e, dropout) for e in n.events):
            return None
        e = n.events[-1]
        if e.acknowledged and "acknowledged" in dropout:
            return f"acknowledged by {e.ack_user or 'someone'}"
        return "cleared" if not e.active else "shelved"

    def failed(self, n: Notification, why: str) -> None:
        """A channel failed for good (retries used up, refused, or reported undelivered): try the
        next channel of the person's chain while an alarm in it still needs someone."""
        origin = self.origin_of(n)
        if not n.chain:
            if n.chain_id != n.id:
                origin.trace("notify-failed", f"{n.user.username}: every channel failed; last: {n.link}: {why}")
            else:
                origin.trace("notify-failed", f"{n.user.username} via {n.link} failed: {why}")
            return
        if not self.wanted(n):
            origin.trace("fallback", f"{n.user.username} via {n.link} failed, but the alarm no longer needs "
                                     f"anyone (acknowledged, cleared or shelved): not trying {n.chain[0]}")
            return
        nxt, rest = n.chain[0], n.chain[1:]
        new = Notification(profile=nxt.profile, user=n.user, message=n.message, events=n.events,
                           contact_type=nxt.contact_type, contact=nxt.contact, instance_id=n.instance_id,
                           pipeline=n.pipeline, block=n.block, chain=rest, chain_id=n.chain_id,
                           batch_key=n.batch_key, expires_at=self._fallback_deadline(n))
        self._queue(new)
        origin.trace("fallback", f"{n.user.username} via {n.link} failed ({why}); trying {nxt} "
                                 f"[notification {new.id}]")
        self.audit.record(Code.CHANNEL_FALLBACK, user=n.user.username, channel=nxt.profile,
                                  contact=nxt.contact, text=f"{n.link} failed: {why}; trying {nxt}",
                                  event_ids=n.event_ids, notification_id=new.id,
                                  details={"from": n.id, "chainId": n.chain_id})

    def _fallback_deadline(self, n: Notification) -> datetime | None:
        """A fallback keeps its chain's deadline, but gets a fair window of its own: the channel
        before it may have used the deadline up waiting out a long Retry-After or an outage."""
        if n.expires_at is None:
            return None
        retry = self.retry
        floor = utcnow() + timedelta(seconds=min(retry.max_age, max(5 * retry.max_backoff, 60.0)))
        return max(n.expires_at, floor)

    def sent(self, n: Notification) -> None:
        """Remember a notification the provider accepted, so its delivery report needs no read."""
        if n.provider_id:
            self._recent[n.provider_id] = n
            if len(self._recent) > 10_000:
                self._recent.pop(next(iter(self._recent)))

    async def delivery_status(self, provider_id: str, status: str, error: str | None = None) -> bool:
        """A provider reports what became of a message it accepted (e.g. a Twilio status
        callback). Returns False when no notification has that provider id."""
        status = status.lower()
        # decided before any await: two copies of one report in flight must not both act
        if _rank(status) <= _rank(self._reported.get(provider_id)):
            return True
        self._reported[provider_id] = status
        if len(self._reported) > 10_000:
            self._reported.pop(next(iter(self._reported)))
        n = self._recent.get(provider_id)
        if n is None:
            n = await self._load_sent(provider_id)
            if n is None:
                self._reported.pop(provider_id, None)
                return False
        if _rank(status) <= _rank(n.delivery_status):
            return True  # a replayed or late callback changes nothing
        n.delivery_status = status
        n.attempt_log.append({"at": utcnow().isoformat(), "status": status, "error": error})
        self.store.update(schema.notifications, n.id, {
            "delivery_status": status, "attempt_log": list(n.attempt_log), "updated": utcnow()})
        if status in DELIVERED or status in UNDELIVERED:
            code = Code.NOTIFICATION_DELIVERED if status in DELIVERED else Code.NOTIFICATION_UNDELIVERED
            self.audit.record(code, user=n.user.username, channel=n.profile, contact=n.contact,
                                      text=f"{status}{': ' + error if error else ''}", event_ids=n.event_ids,
                                      notification_id=n.id, details={"providerId": provider_id})
        self.origin_of(n).trace("delivery", f"{n.user.username} via {n.link}: provider reports {status}"
                                            f"{' (' + error + ')' if error else ''}")
        if status in UNDELIVERED:
            self.failed(n, f"provider reported {status}{' (' + error + ')' if error else ''}")
        return True

    async def _load_sent(self, provider_id: str) -> Notification | None:
        """A notification sent before this gateway started (or long ago), from the store."""
        t = schema.notifications

        def load(conn: sa.Connection) -> Any:
            return conn.execute(sa.select(t).where(t.c.provider_id == provider_id)).first()

        row = await self.store.read(load)
        if row is None:
            return None
        row = dict(row._mapping)
        user = self.users.get(row["username"])
        if user is None:
            return None
        return notification_from_row(row, user, self._known_events, self.retry.max_age)
