"""Notifications: the outbox record written before any provider is called, and the dispatcher
that sends them, retrying with exponential backoff and jitter.

A notification is inserted in the same transaction as the pipeline step that produced it and is
handed to its profile only after that commit. After a crash, rows still ``pending`` are sent at
start with the same idempotency key, so a receiver that honours the key sees them once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from . import schema, units
from .alarms import AlarmEvent, new_id, utcnow
from .audit import AuditLog, Code
from .channels import Link
from .profile_health import ProfileHealth
from .profiles import DeliveryResult, NotificationProfile
from .users import User

if TYPE_CHECKING:
    from .config import RetrySettings
    from .store import Store

# what an attempt answers when the node stepped down before the provider was called
_NOT_ACTIVE = DeliveryResult.failed("this node is no longer the active one", retryable=True)

log = logging.getLogger(__name__)

PENDING, SENT, FAILED, CANCELLED = "pending", "sent", "failed", "cancelled"
# consolidation: HELD collects alarms until due; CONSOLIDATED is the holder once its message went out
HELD, CONSOLIDATED = "held", "consolidated"


@dataclass(slots=True)
class Notification:
    """One message to one user (and contact) through one profile, about one or more events."""

    profile: str
    user: User
    message: str
    events: list[AlarmEvent]
    contact_type: str | None = None
    contact: str | None = None
    instance_id: str | None = None
    pipeline: str | None = None
    block: str | None = None
    id: str = field(default_factory=new_id)
    idempotency_key: str = ""
    status: str = PENDING
    attempts: int = 0
    last_error: str | None = None
    provider_id: str | None = None
    created: datetime = field(default_factory=utcnow)
    sent_at: datetime | None = None
    in_flight: bool = False  # handed to the provider: too late to withdraw, its result counts
    withdrawn: str | None = None  # why its pipeline no longer wants it (no retry after this attempt)
    chain: list[Link] = field(default_factory=list)  # channels still to try if this one fails
    chain_id: str | None = None  # the first notification of its fallback chain
    batch_key: str | None = None  # consolidation: pipeline/block/user of the batch it belongs to
    due_at: datetime | None = None  # consolidation: when a held batch is sent
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    delivery_status: str | None = None  # what the provider reported after accepting it
    next_attempt_at: datetime | None = None  # a retry waits until then (stored: re-armed at start)
    expires_at: datetime | None = None  # given up then if its channel has not recovered

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            self.idempotency_key = self.id
        if self.chain_id is None:
            self.chain_id = self.id

    @property
    def link(self) -> Link:
        return Link(self.profile, self.contact_type, self.contact)

    @property
    def event_ids(self) -> list[str]:
        return [e.id for e in self.events]

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id, "idempotency_key": self.idempotency_key,
            "event_ids": [e.id for e in self.events], "instance_id": self.instance_id,
            "pipeline": self.pipeline, "block": self.block, "username": self.user.username,
            "profile": self.profile, "contact_type": self.contact_type, "contact": self.contact,
            "message": self.message, "status": self.status, "attempts": self.attempts,
            "last_error": self.last_error, "provider_id": self.provider_id,
            "created": self.created, "updated": self.created, "sent_at": self.sent_at,
            "batch_key": self.batch_key, "due_at": self.due_at, "chain_id": self.chain_id,
            "chain": [link.to_json() for link in self.chain], "attempt_log": self.attempt_log,
            "delivery_status": self.delivery_status, "next_attempt_at": self.next_attempt_at,
            "expires_at": self.expires_at,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "idempotencyKey": self.idempotency_key, "profile": self.profile,
            "user": self.user.to_dict(), "contactType": self.contact_type, "contact": self.contact,
            "message": self.message, "events": [e.to_dict() for e in self.events],
            "pipeline": self.pipeline, "block": self.block, "attempt": self.attempts,
        }


def notification_from_row(row: dict[str, Any], user: User, events: Mapping[str, AlarmEvent],
                          max_age: float) -> Notification:
    """A notification from its stored row; ``events`` are the open events it may carry, and
    ``max_age`` the retry window for rows stored before notifications had a deadline."""
    return Notification(
        profile=row["profile"], user=user, message=row["message"],
        events=[events[i] for i in row["event_ids"] if i in events],
        contact_type=row["contact_type"], contact=row["contact"], instance_id=row["instance_id"],
        pipeline=row["pipeline"], block=row["block"], id=row["id"], idempotency_key=row["idempotency_key"],
        status=row["status"], attempts=row["attempts"], last_error=row["last_error"],
        provider_id=row["provider_id"], created=row["created"], sent_at=row["sent_at"],
        chain=[Link.from_json(x) for x in row["chain"] or []], chain_id=row["chain_id"],
        batch_key=row["batch_key"], due_at=row["due_at"], attempt_log=list(row["attempt_log"] or []),
        delivery_status=row["delivery_status"], next_attempt_at=row.get("next_attempt_at"),
        expires_at=row.get("expires_at") or row["created"] + timedelta(seconds=max_age))


def _ago(since: datetime, now: datetime) -> str:
    seconds = int((now - since).total_seconds())
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def backoff(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: a random wait up to base * 2^(attempt-1), capped."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))


class DispatchReports(Protocol):
    """What the dispatcher reports back to whoever planned the notifications (core.delivery)."""

    def unwanted_because(self, n: Notification) -> str | None:
        """Why no alarm of ``n`` needs anyone any more (None: send it)."""

    def sent(self, n: Notification) -> None:
        """``n`` was accepted by its provider."""

    def failed(self, n: Notification, why: str) -> None:
        """``n`` failed for good: its channel's fallback, if any, is next."""


class _EveryoneWanted:
    """Reports for a dispatcher on its own: every notification is wanted, none falls back."""

    def unwanted_because(self, n: Notification) -> str | None:
        return None

    def sent(self, n: Notification) -> None:
        pass

    def failed(self, n: Notification, why: str) -> None:
        pass


class Dispatcher:
    """Hands committed notifications to their profiles, bounded in concurrency.

    It is given the store (the outbox rows), the profiles it sends through, the audit log, and
    two ways to report: ``reports`` (delivery's decisions: still wanted? fall back?) and
    ``on_status`` (a notification's status changed: plugins and the System tags hear of it).
    """

    def __init__(self, *, store: Store, profiles: Mapping[str, NotificationProfile], audit: AuditLog,
                 retry: RetrySettings, max_concurrent: int, reports: DispatchReports | None = None,
                 on_status: Callable[[Notification, str], None] = lambda n, status: None,
                 may_send: Callable[[], bool] = lambda: True):
        self.store = store
        # False once this node is no longer the active one of its cluster: nothing new is sent
        # (a call already with the provider finishes); the new active resends what is pending
        self.may_send = may_send
        self.profiles = profiles
        self.audit = audit
        # set by the composition root once delivery exists (delivery is built with this outbox)
        self.reports: DispatchReports = reports or _EveryoneWanted()
        self.on_status = on_status
        self.retry = retry
        self._limit = asyncio.Semaphore(max_concurrent)
        self._live: dict[str, Notification] = {}
        self._by_instance: dict[str, set[str]] = {}  # so a dropout need not scan every notification
        self._tasks: set[asyncio.Task[None]] = set()
        self.health = ProfileHealth()
        # the latest notifications given up for good, for status and the console
        self.given_up: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.sent = 0
        self.failed = 0

    def pending(self) -> int:
        """Notifications stored and not finished (sending, retrying or waiting to be sent)."""
        return sum(1 for n in self._live.values() if n.status == PENDING)

    def waiting(self) -> list[Notification]:
        """Notifications waiting for a retry after a failed attempt, the longest-waiting first."""
        return sorted((n for n in self._live.values()
                       if n.status == PENDING and n.next_attempt_at is not None and not n.in_flight),
                      key=lambda n: n.created)

    def waiting_report(self) -> dict[str, Any]:
        """What waits for a failing provider: each notification (who, which channel, how many
        attempts, the next one, the last error, when it is given up), each profile's health, and
        the notifications given up lately (all of them are in the audit log as NotificationFailed)."""
        def item(n: Notification) -> dict[str, Any]:
            return {"id": n.id, "user": n.user.username, "profile": n.profile, "contact": n.contact,
                    "eventIds": n.event_ids, "sources": [e.source for e in n.events],
                    "attempts": n.attempts, "lastError": n.last_error, "created": n.created.isoformat(),
                    "nextAttemptAt": n.next_attempt_at.isoformat() if n.next_attempt_at else None,
                    "expiresAt": n.expires_at.isoformat() if n.expires_at else None,
                    "fallback": [str(link) for link in n.chain]}

        return {"waiting": [item(n) for n in self.waiting()],
                "profiles": self.health.to_dict(self.waiting_counts()),
                "givenUp": list(self.given_up)}

    def waiting_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self._live.values():
            if n.status == PENDING and n.attempts and n.sent_at is None:
                counts[n.profile] = counts.get(n.profile, 0) + 1
        return counts

    def submit(self, notification: Notification) -> None:
        """Send once the current store batch (which holds its row) commits."""
        self._track(notification)
        self.store.after_commit(lambda: self._spawn(notification))

    def submit_committed(self, notification: Notification) -> None:
        """Send a notification whose row is already stored (recovered at start)."""
        self._track(notification)
        self._spawn(notification)

    def _track(self, n: Notification) -> None:
        self._live[n.id] = n
        # a consolidated message carries alarms of many instances: no single one may withdraw it
        if n.instance_id and not n.batch_key:
            self._by_instance.setdefault(n.instance_id, set()).add(n.id)

    def _spawn(self, notification: Notification) -> None:
        if notification.status != PENDING:  # refused by the database, or cancelled meanwhile
            return
        # each delivery is a unit of work of its own, whoever queued it
        task = asyncio.get_running_loop().create_task(self._deliver(notification), context=units.outside())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_instance(self, instance_id: str, why: str) -> int:
        """Cancel not-yet-sent notifications of a pipeline instance that dropped out."""
        count = 0
        for nid in list(self._by_instance.get(instance_id, ())):
            n = self._live.get(nid)
            if n is None or n.status != PENDING:
                continue
            if n.in_flight:
                n.withdrawn = why
            else:
                self._finish(n, CANCELLED, error=why)
                count += 1
        return count

    def discard(self, n: Notification) -> None:
        """Forget a notification whose row the database refused: it is never sent."""
        if n.status == PENDING:
            log.error("notification %s to %s via %s was not stored: the database refused it; not sent",
                      n.id, n.user.username, n.profile)
        n.status = CANCELLED
        self._untrack(n)

    def _untrack(self, n: Notification) -> None:
        self._live.pop(n.id, None)
        ids = self._by_instance.get(n.instance_id or "")
        if ids is not None:
            ids.discard(n.id)
            if not ids:
                del self._by_instance[n.instance_id or ""]

    def discard_instance(self, instance_id: str) -> None:
        """Forget notifications of an instance whose rows the database refused (never sent: their
        after-commit send was dropped with the rows)."""
        for nid in self._by_instance.pop(instance_id, set()):
            n = self._live.pop(nid, None)
            if n is not None:
                n.status = CANCELLED

    @units.entry("delivery")
    async def _deliver(self, n: Notification) -> None:
        profile = self.profiles.get(n.profile)
        while n.status == PENDING:
            if n.next_attempt_at is not None:
                # a stored retry time: after a restart the wait goes on where it was
                delay = (n.next_attempt_at - utcnow()).total_seconds()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if n.status != PENDING:
                        return
            # a retry for an alarm someone has dealt with since (its pipeline may have ended long ago)
            done = self.reports.unwanted_because(n) if n.attempts else None
            if done is not None:
                self._finish(n, CANCELLED, error=f"{n.last_error}; not retried: {done}")
                return
            if not self.may_send():
                # the node's cluster lease lapsed: wait until it is renewed (or the term ends and
                # abandon() cancels this task; the row stays pending for the new active node)
                await asyncio.sleep(0.2)
                continue
            n.attempts += 1
            if profile is None:
                result = DeliveryResult.failed(f"profile {n.profile!r} is not configured", retryable=False)
            else:
                result = await self._attempt(profile, n)
                if result is _NOT_ACTIVE:
                    n.attempts -= 1
                    continue
            if n.status != PENDING:  # cancelled while in flight
                return
            now = utcnow()
            attempt: dict[str, Any] = {"at": now.isoformat(), "ok": result.ok, "error": result.error,
                                       "providerId": result.provider_id}
            n.attempt_log.append(attempt)
            if result.ok:
                n.provider_id = result.provider_id
                n.sent_at = now
                n.next_attempt_at = None
                self.health.success(n.profile)
                self.reports.sent(n)
                self._finish(n, SENT)
                return
            n.last_error = result.error
            if result.retryable:  # a refused recipient (bad number, opt-out) is not a provider outage
                self.health.failure(n.profile, result.error)
            if n.withdrawn:
                self._finish(n, CANCELLED, error=f"{result.error}; not retried: {n.withdrawn}")
                return
            give_up = self._give_up(n, result, now)
            if give_up is not None:
                log.warning("notification %s to %s via %s failed after %d attempt(s): %s (%s)",
                            n.id, n.user.username, n.profile, n.attempts, result.error, give_up)
                n.next_attempt_at = None
                self._finish(n, FAILED, error=f"{result.error} ({give_up})")
                return
            wait = result.retry_after if result.retry_after is not None else backoff(
                n.attempts, self.retry.backoff, self.retry.max_backoff)
            if n.chain and wait > self.retry.max_backoff:
                # the provider asks for a longer pause than a page may wait while the person has
                # another channel: fall back now instead of waiting it out
                log.warning("notification %s: %s asks to wait %.0fs; falling back to %s",
                            n.id, n.profile, wait, n.chain[0])
                n.next_attempt_at = None
                self._finish(n, FAILED, error=f"{result.error} (asked to wait {wait:.0f}s; falling back to "
                                              f"{n.chain[0]})")
                return
            # a floor: "Retry-After: 0" (or a profile failing without I/O) must not spin until max_age
            wait = max(wait, min(self.retry.backoff, 1.0), 0.05)
            if n.expires_at is not None:
                wait = max(0.0, min(wait, (n.expires_at - now).total_seconds()))
            n.next_attempt_at = now + timedelta(seconds=wait)
            attempt["retryIn"] = round(wait, 3)
            log.info("notification %s attempt %d failed (%s); retrying in %.1fs",
                     n.id, n.attempts, result.error, wait)
            # stored before waiting: a restart re-arms the retry at this time instead of losing it
            self.store.update(schema.notifications, n.id, {
                "attempts": n.attempts, "last_error": n.last_error, "attempt_log": list(n.attempt_log),
                "next_attempt_at": n.next_attempt_at, "updated": now})
            self._audit(n, Code.NOTIFICATION_RETRY, f"attempt {n.attempts} failed: {result.error}; "
                                                    f"retrying in {wait:.1f}s")
            self.on_status(n, "retrying")

    def _give_up(self, n: Notification, result: DeliveryResult, now: datetime) -> str | None:
        """Why this channel is given up after a failed attempt, or None to try it again.

        A refusal (a bad number, an opt-out) is final at once. Otherwise the channel gets
        ``retry.attempts`` tries while the person has another channel to fall back to; the last
        channel of the chain keeps trying, for as long as its alarm needs someone, until the
        notification is ``retry.max_age`` old: a provider outage of an hour must not lose a page.
        """
        if not result.retryable:
            return "not retryable"
        if n.chain and n.attempts >= self.retry.attempts:
            return f"{n.attempts} attempts; falling back to {n.chain[0]}"
        if n.expires_at is not None and now >= n.expires_at:
            return f"given up after {n.attempts} attempts over {_ago(n.created, now)}"
        return None

    async def _attempt(self, profile: NotificationProfile, n: Notification) -> DeliveryResult:
        async with self._limit:
            if n.status != PENDING:
                return DeliveryResult.failed("cancelled", retryable=False)
            if not self.may_send():  # checked again after the wait for a sending slot
                return _NOT_ACTIVE
            n.in_flight = True
            try:
                return await profile.send(n)
            except Exception as exc:  # a profile bug must not lose the notification silently
                log.exception("profile %s raised while sending %s", n.profile, n.id)
                return DeliveryResult.failed(f"{type(exc).__name__}: {exc}")
            finally:
                n.in_flight = False

    def _finish(self, n: Notification, status: str, error: str | None = None) -> None:
        n.status = status
        if error is not None:
            n.last_error = error
        self._untrack(n)
        if status == SENT:
            self.sent += 1
            self._audit(n, Code.NOTIFICATION_SENT, n.message)
        elif status == FAILED:
            self.failed += 1
            if not n.chain:  # no channel left to fall back to: the page is given up
                if n.profile in self.health.failing():
                    self.health.gave_up(n.profile)
                self.given_up.append({
                    "id": n.id, "user": n.user.username, "profile": n.profile, "contact": n.contact,
                    "eventIds": n.event_ids, "attempts": n.attempts, "error": n.last_error,
                    "at": utcnow().isoformat()})
            self._audit(n, Code.NOTIFICATION_FAILED, n.last_error)
        elif status == CANCELLED:
            self._audit(n, Code.NOTIFICATION_CANCELLED, n.last_error)
        self.store.update(schema.notifications, n.id, {
            "status": status, "attempts": n.attempts, "last_error": n.last_error,
            "provider_id": n.provider_id, "sent_at": n.sent_at, "attempt_log": list(n.attempt_log),
            "next_attempt_at": None, "updated": utcnow()})
        self.on_status(n, status)
        if status == FAILED:
            self.reports.failed(n, n.last_error or "failed")

    def _audit(self, n: Notification, code: str, text: str | None) -> None:
        self.audit.record(code, user=n.user.username, channel=n.profile, contact=n.contact, text=text,
                                  event_ids=n.event_ids, notification_id=n.id,
                                  details={"attempt": n.attempts, "providerId": n.provider_id} if n.attempts
                                  else None)

    def abandon(self) -> None:
        """This node stepped down: stop every delivery task (waits and retries); their rows stay
        pending in the database, where the new active node finds them."""
        for task in list(self._tasks):
            task.cancel()

    async def drain(self, timeout: float = 5.0) -> None:
        """Give in-flight sends a moment to finish at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
