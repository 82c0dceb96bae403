"""Consolidation and throttling on the Notification block, as in Ignition.

Alarms for one person from one block are collected into a batch, held as a notification row with
status ``held``. The batch is sent when no new alarm has arrived for ``delay`` (each alarm re-arms
the delay), or when its first alarm has waited ``frequency``, whichever comes first; and never
sooner than ``frequency`` after the previous message of the same batch key (the per-person
throttle). A batch of one alarm is sent with the block's message; larger ones with the summary.

Nothing is held silently: the row, the trace of every alarm in it, the audit log and
``Batches.held()`` (pipeline status) say who is held, how many alarms, until when, and why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field

from . import schema
from .alarms import DEFAULT_MESSAGE, AlarmEvent, Priority, render_message, utcnow
from .audit import AuditLog, Code
from .config import Duration, StrictModel
from .notifications import CANCELLED, CONSOLIDATED, HELD, Notification
from .store import Store
from .timers import Timers
from .traces import Traces
from .users import User

if TYPE_CHECKING:
    from .delivery import Delivery, Origin
    from .pipeline import Pipeline

log = logging.getLogger(__name__)

DEFAULT_SUMMARY = "{count} alarms, highest priority {highestPriority}: {displayPaths}{more}"
DELAY_CAP = 10  # without a frequency, an alarm waits at most ten delays
DEFAULT_DROPOUT = frozenset({"acknowledged", "cleared", "shelved"})


class ConsolidationSettings(StrictModel):
    """``delay``: quiet time that closes a batch (re-armed by each new alarm); ``frequency``: the
    longest an alarm waits in a batch, and the shortest gap between two messages to one person."""

    delay: Duration = 0.0
    frequency: Duration = 0.0
    message: str = DEFAULT_SUMMARY  # for two or more alarms
    listed: int = Field(3, ge=1, le=100)  # display paths named in the summary; the rest are counted

    @property
    def active(self) -> bool:
        return self.delay > 0 or self.frequency > 0


@dataclass(slots=True)
class Batch:
    key: str
    holder: Notification
    opened: datetime
    last_added: datetime
    due: datetime
    reason: str = ""
    origins: dict[str, str] = field(default_factory=dict)  # event id -> the instance that held it
    ids: set[str] = field(default_factory=set)
    armed: datetime | None = None  # when its timer fires


def summary_values(events: list[AlarmEvent], listed: int) -> dict[str, Any]:
    """Names a summary template can use, beside the first alarm's own values."""
    ordered = sorted(events, key=lambda e: (-int(e.priority), e.active_time))
    paths = [e.display_path or e.source for e in ordered[:listed]]
    values = ordered[0].template_values()
    more = len(events) - len(paths)
    values.update(count=len(events), highestPriority=Priority(max(int(e.priority) for e in events)),
                  displayPaths=", ".join(paths), more=f" and {more} more" if more > 0 else "",
                  moreCount=more)
    return values


class Batches:
    """Held (consolidated) notifications, one batch per pipeline block and person. Part of
    delivery: it is given delivery's store, audit log, timers, pipelines and trace writer, and
    hands a due batch back to ``delivery.dispatch``."""

    def __init__(self, *, store: Store, audit: AuditLog, timers: Timers, pipelines: Mapping[str, Pipeline],
                 traces: Traces, delivery: Delivery):
        self.store = store
        self.audit = audit
        self.timers = timers
        self.pipelines = pipelines
        self.traces = traces
        self.delivery = delivery
        self.open: dict[str, Batch] = {}
        self.by_event: dict[str, set[str]] = {}  # event id -> keys of open batches holding it
        self.last_sent: dict[str, datetime] = {}

    def _settings(self, pipeline: str | None, block: str | None) -> Any:
        p = self.pipelines.get(pipeline or "")
        if p is None or block not in p._by_name:
            return None
        return p.blocks[p.index_of(block)].settings

    def add(self, origin: Origin, event: AlarmEvent, user: User, profile: str,
            settings: ConsolidationSettings) -> None:
        key = f"{origin.pipeline}/{origin.block}/{user.username}"
        now = utcnow()
        batch = self.open.get(key)
        if batch is None:
            holder = Notification(profile=profile, user=user, message="", events=[event],
                                  instance_id=origin.instance_id, pipeline=origin.pipeline, block=origin.block,
                                  batch_key=key, status=HELD)
            batch = Batch(key, holder, now, now, now, ids={event.id})
            self.open[key] = batch
            self._schedule(batch, settings, now)
            holder.due_at = batch.due
            # shared: the held message is every alarm's that joins it, not the first one's
            self.store.insert(schema.notifications, holder.row(),
                                      on_refused=lambda: self._drop(key, holder), shared=True)
        else:
            if event.id in batch.ids:
                return
            batch.holder.events.append(event)
            batch.ids.add(event.id)
            batch.last_added = now
            self._schedule(batch, settings, now)
            batch.holder.due_at = batch.due
            # folded into one write per store batch, however many alarms arrive in it
            self.store.update(schema.notifications, batch.holder.id, {
                "event_ids": batch.holder.event_ids, "due_at": batch.due, "updated": now}, shared=True)
        if origin.instance_id:
            batch.origins[event.id] = origin.instance_id
        self.by_event.setdefault(event.id, set()).add(key)
        origin.trace("held", f"{user.username}: {batch.reason} [notification {batch.holder.id}, "
                             f"{len(batch.holder.events)} alarm(s)]")
        if len(batch.holder.events) == 1:
            self.audit.record(Code.HELD, user=user.username, channel=profile, text=batch.reason,
                                      event_ids=[event.id], notification_id=batch.holder.id)

    def _schedule(self, batch: Batch, s: ConsolidationSettings, now: datetime) -> None:
        due = now + timedelta(seconds=s.delay)
        reason = f"collecting alarms until {_hms(due)} (delay {s.delay:g}s, re-armed by each alarm)"
        # without a frequency, a steady trickle would re-arm the delay forever: cap the wait
        longest = s.frequency or s.delay * DELAY_CAP
        latest = batch.opened + timedelta(seconds=longest)
        if latest < due:
            due, reason = latest, f"collecting alarms until {_hms(latest)} (longest wait {longest:g}s)"
        last = self.last_sent.get(batch.key)
        if s.frequency and last is not None and last + timedelta(seconds=s.frequency) > due:
            due = last + timedelta(seconds=s.frequency)
            reason = (f"throttled until {_hms(due)}: last message at {_hms(last)}, "
                      f"at most one every {s.frequency:g}s")
        batch.due, batch.reason = due, reason
        # one timer per batch, moved only when the batch falls due sooner; a later due date is
        # picked up when the timer fires (a flood must not reschedule a job per alarm)
        if batch.armed is None or due < batch.armed:
            batch.armed = due
            self.timers.at(f"batch:{batch.key}", due, self._due, batch.key)

    def _due(self, key: str) -> None:
        batch = self.open.get(key)
        if batch is None:
            return
        if batch.due > utcnow() + timedelta(milliseconds=5):
            batch.armed = batch.due
            self.timers.at(f"batch:{key}", batch.due, self._due, key)
            return
        self.flush(key)

    def withdraw(self, event: AlarmEvent) -> None:
        """An alarm changed state (acknowledged, cleared, shelved): take it out of the batches whose
        pipeline drops out on that at once, and withdraw a batch left with nothing to say."""
        for key in list(self.by_event.get(event.id, ())):
            batch = self.open.get(key)
            if batch is None:
                continue
            pipeline = self.pipelines.get(batch.holder.pipeline or "")
            if still_wanted(event, pipeline.dropout if pipeline else DEFAULT_DROPOUT):
                continue
            batch.ids.discard(event.id)
            self._forget(event.id, key)
            if batch.ids:
                batch.holder.events = [e for e in batch.holder.events if e.id != event.id]
                self.store.update(schema.notifications, batch.holder.id, {
                    "event_ids": batch.holder.event_ids, "updated": utcnow()}, shared=True)
                continue
            # the last one: the row keeps it, so the alarm's story shows the withdrawn batch
            self.open.pop(key, None)
            self.timers.cancel(f"batch:{key}")
            what = (f"acknowledged by {event.ack_user or 'someone'}" if event.acknowledged
                    else "cleared" if not event.active else "shelved")
            why = (f"every alarm in it was acknowledged, cleared or shelved before the message was due "
                   f"(last: {event.source} {what})")
            self._close(batch.holder, CANCELLED, why)
            self.delivery.origin_of(batch.holder).trace("held", f"{batch.holder.user.username}: batch withdrawn: "
                                                                f"{why}")
            self.audit.record(Code.NOTIFICATION_CANCELLED, user=batch.holder.user.username,
                                      channel=batch.holder.profile, text=why, event_ids=[event.id],
                                      notification_id=batch.holder.id)

    def _drop(self, key: str, holder: Notification) -> None:
        """The database refused a batch's holder row: the batch never existed. Its alarms'
        instances are refused with it when they share its request; any alarm added from other
        work is held again by its own pipeline on the next pass, so it is logged loudly."""
        batch = self.open.get(key)
        if batch is None or batch.holder is not holder:
            return
        self.open.pop(key)
        self.timers.cancel(f"batch:{key}")
        for event_id in batch.ids:
            self._forget(event_id, key)
        holder.status = CANCELLED
        log.error("held notification %s (%s, %d alarm(s)) was not stored: the database refused it",
                  holder.id, key, len(batch.ids))

    def discard(self, event: AlarmEvent) -> None:
        """Take an alarm whose row the database refused out of every batch, without a trace: it
        never was active. A batch left empty is withdrawn."""
        for key in list(self.by_event.get(event.id, ())):
            batch = self.open.get(key)
            if batch is None:
                continue
            batch.ids.discard(event.id)
            batch.origins.pop(event.id, None)
            batch.holder.events = [e for e in batch.holder.events if e.id != event.id]
            self._forget(event.id, key)
            if batch.ids:
                self.store.update(schema.notifications, batch.holder.id, {
                    "event_ids": batch.holder.event_ids, "updated": utcnow()}, shared=True)
            else:
                self.open.pop(key, None)
                self.timers.cancel(f"batch:{key}")
                self._close(batch.holder, CANCELLED, "its only alarm was refused by the database")

    def _forget(self, event_id: str, key: str) -> None:
        keys = self.by_event.get(event_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_event[event_id]

    def flush(self, key: str) -> None:
        batch = self.open.pop(key, None)
        if batch is None:
            return
        holder = batch.holder
        for event_id in batch.ids:
            self._forget(event_id, key)
        settings = self._settings(holder.pipeline, holder.block)
        origin = self.delivery.origin_of(holder)
        now = utcnow()
        pipeline = self.pipelines.get(holder.pipeline or "")
        events = [e for e in holder.events if still_wanted(e, pipeline.dropout if pipeline else DEFAULT_DROPOUT)]
        if not events:
            why = (f"all {len(holder.events)} alarm(s) were acknowledged, cleared or shelved before the message "
                   "was due")
            self._close(holder, CANCELLED, why)
            origin.trace("held", f"{holder.user.username}: batch withdrawn, nothing left to send")
            self.audit.record(Code.NOTIFICATION_CANCELLED, user=holder.user.username, channel=holder.profile,
                                      text=why, event_ids=holder.event_ids, notification_id=holder.id)
            return
        # the block may have changed (or gone) since a restart: the alarms are still sent
        cons: ConsolidationSettings = getattr(settings, "consolidation", None) or ConsolidationSettings()
        message = getattr(settings, "message", None) or DEFAULT_MESSAGE
        profiles = getattr(settings, "profiles", None) or [holder.profile]
        if len(events) == 1:
            text = render_message(message, events[0].template_values())
        else:
            text = render_message(cons.message, summary_values(events, cons.listed))
        holder.message = text
        self._close(holder, CONSOLIDATED, None if settings is not None else
                    f"block {holder.pipeline}/{holder.block} is no longer configured; sent with the default message")
        self.last_sent[key] = now
        self.audit.record(Code.CONSOLIDATED, user=holder.user.username, channel=holder.profile, text=text,
                                  event_ids=[e.id for e in events], notification_id=holder.id,
                                  details={"count": len(events), "held": len(holder.events)})
        count = self.delivery.dispatch(origin, holder.user, profiles, getattr(settings, "policy", None), text,
                                       events, batch_key=key)
        for e in events[1:]:
            inst = batch.origins.get(e.id)
            if inst is not None:
                self.traces.line(inst, e.id, holder.block, "notify",
                                               f"{holder.user.username}: sent in a message of {len(events)} "
                                               f"alarms [batch {holder.id}]")
        log.info("batch %s: %d alarm(s) to %s in %d notification(s)", key, len(events), holder.user.username,
                 count)

    def _close(self, holder: Notification, status: str, why: str | None) -> None:
        holder.status = status
        holder.last_error = why
        self.store.update(schema.notifications, holder.id, {
            "status": status, "message": holder.message, "last_error": why, "event_ids": holder.event_ids,
            "updated": utcnow()})

    def recover(self, holder: Notification) -> None:
        """A batch held when the gateway stopped: re-arm it (a late one is sent at once)."""
        due = holder.due_at or utcnow()
        batch = Batch(holder.batch_key or "", holder, holder.created, holder.created, due,
                      f"held before restart; due {_hms(due)}", ids={e.id for e in holder.events}, armed=due)
        self.open[batch.key] = batch
        for event_id in batch.ids:
            self.by_event.setdefault(event_id, set()).add(batch.key)
        self.timers.at(f"batch:{batch.key}", due, self._due, batch.key)

    def held(self) -> list[dict[str, Any]]:
        """Pipeline status of every open batch: who, how many alarms, until when, why."""
        return [{"notificationId": b.holder.id, "pipeline": b.holder.pipeline, "block": b.holder.block,
                 "user": b.holder.user.username, "alarms": len(b.holder.events),
                 "eventIds": b.holder.event_ids, "since": b.opened.isoformat(), "until": b.due.isoformat(),
                 "why": b.reason}
                for b in sorted(self.open.values(), key=lambda b: b.due)]


def still_wanted(e: AlarmEvent, dropout: frozenset[str] = DEFAULT_DROPOUT) -> bool:
    """Does an alarm still need people, by its pipeline's dropout conditions?"""
    return not (("acknowledged" in dropout and e.acknowledged) or ("cleared" in dropout and not e.active)
                or ("shelved" in dropout and e.shelved))


def _hms(t: datetime) -> str:
    return t.strftime("%H:%M:%S") + "Z"
