"""The open alarms and their lifecycle: raise, clear, acknowledge, shelve and unshelve, and
the short ack codes people reply with. The HTTP API, the CLI, scripts and the reply channels
call this; the pipeline engine is told of every transition.

Memory holds every event not yet cleared-and-acknowledged (and any a pipeline still carries);
each change is queued to the store in the same step, so memory is never ahead of what a commit
writes (a refused row is undone through ``forget_unstored``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import heapq
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import journal, schema, units
from .alarm_spec import AlarmSpec
from .alarms import SYSTEM_USER, AckMode, AlarmEvent, Priority, Transition, utcnow
from .audit import AuditLog, Code
from .config import AlarmDefinition
from .errors import Conflict, Invalid, NotFound
from .rows import event_from_row, event_row
from .store import Store
from .timers import Timers

if TYPE_CHECKING:
    from .consolidation import Batches
    from .engine import Engine
    from .pipeline import Pipeline

log = logging.getLogger(__name__)

MAX_SHORT_CODE = 999  # ack codes stay three digits, apart from PINs (four or more)


class Alarms:
    """The alarm registry (open events by id, by source, by ack code; shelves) and its lifecycle."""

    def __init__(self, *, store: Store, audit: AuditLog, timers: Timers, engine: Engine, batches: Batches,
                 pipelines: Mapping[str, Pipeline], definitions: Sequence[AlarmDefinition],
                 commit_timeout: float, announce: Callable[[AlarmEvent, str], None],
                 changed: Callable[[], None], events: dict[str, AlarmEvent] | None = None):
        self.store = store
        self.audit = audit
        self.timers = timers
        self.engine = engine
        self._batches = batches
        self._pipelines = pipelines
        self._definitions = definitions
        self._commit_timeout = commit_timeout
        self._announce = announce  # plugins hear of each transition (annunciator_alarm_event)
        self._changed = changed  # the System/ count tags are refreshed soon
        # every event not yet cleared-and-acknowledged (and any a pipeline still carries)
        self.events: dict[str, AlarmEvent] = {} if events is None else events
        self.by_code: dict[int, AlarmEvent] = {}  # ack code -> open event
        self.current: dict[str, AlarmEvent] = {}  # source -> its active event
        self.shelves: dict[str, dict[str, Any]] = {}
        self._code_top = 0
        self._freed_codes: list[int] = []

    def restore(self, events: Iterable[dict[str, Any]], shelves: Iterable[dict[str, Any]], last_code: int) -> None:
        """Bring back open events and shelves from the store at start."""
        now = utcnow()
        for row in events:
            event = event_from_row(row)
            self.events[event.id] = event
            if event.ack_code is not None and not event.done:
                self.by_code[event.ack_code] = event
            if event.active:
                self.current[event.source] = event
        # the count goes on from the last code ever given, so a restart does not reuse recent codes
        self._code_top = max([last_code, *self.by_code])
        self._freed_codes = [c for c in range(1, self._code_top) if c not in self.by_code]
        heapq.heapify(self._freed_codes)
        for row in shelves:
            self.shelves[row["source"]] = row
            if row["expires_at"] > now:
                self.timers.at(f"shelf:{row['source']}", row["expires_at"], self._shelf_expired, row["source"])

    def forget_finished(self) -> None:
        """Drop events loaded only for the pipelines and notifications that still hold them."""
        for event in [e for e in self.events.values() if e.done]:
            self.forget_if_done(event)

    def definition_for(self, source: str) -> Any:
        for d in self._definitions:
            if fnmatch.fnmatchcase(source, d.source):
                return d
        return None

    async def raise_alarms(self, specs: Iterable[AlarmSpec]) -> list[tuple[AlarmEvent, bool]]:
        """Make events active. A source already active returns its event (created False)."""
        out = []
        entering: list[tuple[AlarmEvent, str]] = []
        specs = list(specs)
        # all or nothing: a bad entry must not leave earlier ones stored but never routed
        for i, spec in enumerate(specs):
            d = self.definition_for(spec.source)
            for transition, pipeline in {**(d.pipelines if d else {}), **spec.pipelines}.items():
                if pipeline not in self._pipelines:
                    raise Invalid(f"alarms[{i}].pipelines.{transition}: unknown pipeline {pipeline!r}; "
                                  f"defined: {', '.join(sorted(self._pipelines)) or '(none)'}")
        for spec in specs:
            existing = self.current.get(spec.source)
            if existing is not None:
                # it may still be on its way to the database for another request: if it is
                # refused there, this request's "already active" must not stand either
                self.store.depend(schema.alarm_events, existing.id)
                out.append((existing, False))
                continue
            event = self._new_event(spec)
            event.ack_code = self._free_ack_code()
            self.by_code[event.ack_code] = event
            self.events[event.id] = event
            self.current[event.source] = event
            self.store.insert(schema.alarm_events, event_row(event),
                              on_refused=functools.partial(self.forget_unstored, [event]))
            self._journal(event, Transition.ACTIVE, None, event.notes)
            if event.acknowledged:
                self._journal(event, Transition.ACKNOWLEDGED, SYSTEM_USER, "ack mode unused")
            if event.shelved:
                self._journal(event, Transition.SHELVED, None, "raised while its source is shelved")
            self._announce(event, "active")
            if not event.shelved and "active" in event.pipelines:
                entering.append((event, event.pipelines["active"]))
            out.append((event, True))
        for event, pipeline in entering:
            await self.engine.enter(event, pipeline, "event active")
        self._changed()
        return out

    async def raise_alarms_stored(self, specs: Iterable[AlarmSpec], timeout: float | None = None
                                  ) -> list[tuple[AlarmEvent, bool]]:
        """Raise and wait until the events are durable. An event whose row the database refused
        is forgotten again (never "active" unless stored), so repeating the request raises it
        anew; Refused is raised then. TimeoutError (the database does not answer) keeps
        everything queued: it is stored when the database returns."""
        with units.joined("raise alarms"):
            results = await self.raise_alarms(specs)
            async with asyncio.timeout(self._commit_timeout if timeout is None else timeout):
                await self.store.commit()
        return results

    def forget_unstored(self, events: Iterable[AlarmEvent]) -> None:
        """Undo raising events whose rows were refused: memory never gets ahead of the store."""
        for event in events:
            if self.events.get(event.id) is not event:
                continue
            self.engine.discard(event)
            self._batches.discard(event)
            self.events.pop(event.id, None)
            if self.current.get(event.source) is event:
                del self.current[event.source]
            if event.ack_code is not None and self.by_code.get(event.ack_code) is event:
                del self.by_code[event.ack_code]
            log.error("alarm %s (%s) was not stored: the database refused it", event.id, event.source)
            self._announce(event, "discarded")
        self._changed()

    def _new_event(self, spec: AlarmSpec) -> AlarmEvent:
        d = self.definition_for(spec.source)

        def pick(value: Any, attr: str, default: Any) -> Any:
            if value is not None:
                return value
            if d is not None and getattr(d, attr) is not None:
                return getattr(d, attr)
            return default

        pipelines = dict(d.pipelines) if d is not None else {}
        pipelines.update(spec.pipelines)
        properties = dict(d.properties) if d is not None else {}
        properties.update(spec.properties)
        event = AlarmEvent(
            source=spec.source,
            name=pick(spec.name, "name", spec.source.rsplit("/", 1)[-1]),
            priority=pick(spec.priority, "priority", Priority.MEDIUM),
            display_path=pick(spec.display_path, "display_path", ""),
            label=spec.label or "",
            event_value=spec.event_value,
            notes=spec.notes,
            ack_mode=pick(spec.ack_mode, "ack_mode", AckMode.MANUAL),
            ack_notes_required=pick(spec.ack_notes_required, "ack_notes_required", False),
            properties=properties,
            pipelines=pipelines,
        )
        if event.ack_mode == AckMode.UNUSED:
            event.ack_time, event.ack_user = event.active_time, SYSTEM_USER
        shelf = self.shelves.get(event.source)
        if shelf is not None and shelf["expires_at"] > event.active_time:
            event.shelved = True
        return event

    def get_event(self, event_id: str) -> AlarmEvent:
        event = self.events.get(event_id)
        if event is None:
            raise NotFound(f"no open alarm event {event_id!r}")
        return event

    async def clear(self, event_ids: list[str], user: str | None = None, notes: str = "") -> list[AlarmEvent]:
        events = [self.get_event(i) for i in event_ids]
        for e in events:
            if not e.active:
                raise Conflict(f"alarm event {e.id} ({e.source}) is already cleared")
        for event in events:
            event.clear_time = utcnow()
            if self.current.get(event.source) is event:
                del self.current[event.source]
            self._journal(event, Transition.CLEARED, user, notes)
            self._announce(event, "cleared")
            await self.engine.on_transition(event, "cleared", f"cleared{_by(user)}")
            if event.ack_mode == AckMode.AUTO and not event.acknowledged:
                await self._ack(event, SYSTEM_USER, "auto-acknowledged on clear", "auto")
            self.save_event(event)
            if "cleared" in event.pipelines:
                await self.engine.enter(event, event.pipelines["cleared"], "event cleared")
            self.forget_if_done(event)
        self._changed()
        return events

    async def clear_sources(self, sources: list[str], user: str | None = None, notes: str = "") -> list[AlarmEvent]:
        ids = []
        for s in sources:
            event = self.current.get(s)
            if event is None:
                raise NotFound(f"no active alarm for source {s!r}")
            ids.append(event.id)
        return await self.clear(ids, user, notes)

    async def acknowledge(self, event_ids: list[str], user: str, notes: str = "",
                          via: str | None = None) -> list[AlarmEvent]:
        """Acknowledge events: every pipeline carrying them drops out at once (per its dropout).
        ``via`` names the channel it came through (sms, voice, email, api, cli) for the audit log."""
        events = [self.get_event(i) for i in event_ids]
        for e in events:
            if e.acknowledged:
                raise Conflict(f"alarm event {e.id} ({e.source}) is already acknowledged"
                               f"{_by(e.ack_user)}")
            if e.ack_notes_required and not notes.strip():
                raise Invalid(f"alarm event {e.id} ({e.source}) requires acknowledgement notes")
        for event in events:
            await self._ack(event, user, notes, via)
            self.save_event(event)
            self.forget_if_done(event)
        self._changed()
        return events

    async def _ack(self, event: AlarmEvent, user: str, notes: str, via: str | None = None) -> None:
        event.ack_time, event.ack_user, event.ack_notes = utcnow(), user, notes
        self._journal(event, Transition.ACKNOWLEDGED, user, notes)
        self.audit.record(Code.ACKNOWLEDGED, user=user, channel=via, text=notes or None, event_ids=[event.id])
        self._announce(event, "acknowledged")
        await self.engine.on_transition(event, "acknowledged", f"acknowledged{_by(user)}")
        if "acknowledged" in event.pipelines:
            await self.engine.enter(event, event.pipelines["acknowledged"], "event acknowledged")

    async def shelve(self, sources: list[str], minutes: float, user: str | None = None, notes: str = "") -> datetime:
        if minutes <= 0:
            raise Invalid("shelve time must be more than 0 minutes")
        now = utcnow()
        expires = now + timedelta(minutes=minutes)
        for source in sources:
            row = {"source": source, "expires_at": expires, "user": user, "notes": notes, "created": now}
            if source in self.shelves:
                self.store.update(schema.shelves, source, {k: v for k, v in row.items() if k != "source"})
            else:
                self.store.insert(schema.shelves, row)
            self.shelves[source] = row
            self.timers.at(f"shelf:{source}", expires, self._shelf_expired, source)
            for event in [e for e in self.events.values() if e.source == source and not e.shelved]:
                event.shelved = True
                self._journal(event, Transition.SHELVED, user, notes or f"shelved for {minutes:g} min")
                self._announce(event, "shelved")
                await self.engine.on_transition(event, "shelved", f"shelved{_by(user)}")
                self.save_event(event)
        self._changed()
        return expires

    async def unshelve(self, sources: list[str], user: str | None = None, why: str = "unshelved") -> None:
        now = utcnow()
        for source in sources:
            shelf = self.shelves.get(source)
            if shelf is None or (shelf["expires_at"] <= now and why != "shelf expired"):
                raise NotFound(f"source {source!r} is not shelved")
            shelf["expires_at"] = now
            self.store.update(schema.shelves, source, {"expires_at": now})
            self.timers.cancel(f"shelf:{source}")
            for event in [e for e in self.events.values() if e.source == source and e.shelved]:
                event.shelved = False
                self._journal(event, Transition.UNSHELVED, user, why)
                self._announce(event, "unshelved")
                self.save_event(event)
                # Still active and unacknowledged once the shelf is gone: it must reach people.
                if event.active and not event.acknowledged and "active" in event.pipelines:
                    await self.engine.enter(event, event.pipelines["active"], f"{why}; still active")
        self._changed()

    async def _shelf_expired(self, source: str) -> None:
        shelf = self.shelves.get(source)
        if shelf is not None and shelf["expires_at"] <= utcnow() + timedelta(seconds=1):
            await self.unshelve([source], SYSTEM_USER, "shelf expired")

    def shelved_sources(self) -> list[dict[str, Any]]:
        now = utcnow()
        return [{"source": s, "expiresAt": r["expires_at"].isoformat(), "user": r["user"], "notes": r["notes"]}
                for s, r in sorted(self.shelves.items()) if r["expires_at"] > now]

    def _journal(self, event: AlarmEvent, action: str, user: str | None, notes: str | None) -> None:
        journal.write(self.store, event, action, user, notes)

    def save_event(self, event: AlarmEvent) -> None:
        row = event_row(event)
        del row["id"]
        self.store.update(schema.alarm_events, event.id, row)

    def forget_if_done(self, event: AlarmEvent) -> None:
        """Drop a cleared-and-acknowledged event from memory once no pipeline carries it."""
        if event.done:
            # its ack code is free again: nobody can act on a finished event
            if event.ack_code is not None and self.by_code.get(event.ack_code) is event:
                del self.by_code[event.ack_code]
                heapq.heappush(self._freed_codes, event.ack_code)
            if not self.engine.by_event.get(event.id):
                self.events.pop(event.id, None)

    def _free_ack_code(self) -> int:
        """A short code no open event uses. Codes count up to 999 before a freed one is reused, so
        a late "ACK 12" from someone who was texted about an old #12 does not acknowledge a newer
        alarm that got #12; beyond 999 open alarms they keep counting (a heap of freed codes over a
        high-water mark: a flood must not scan every code for each alarm)."""
        if self._code_top < MAX_SHORT_CODE:
            self._code_top += 1
            return self._code_top
        while self._freed_codes:
            code = heapq.heappop(self._freed_codes)
            if code not in self.by_code:
                return code
        self._code_top += 1
        return self._code_top

    def event_by_code(self, code: int) -> AlarmEvent | None:
        return self.by_code.get(code)


    def query_status(self, *, state: str | None = None, priority: Any = None, source: str | None = None,
                     display_path: str | None = None) -> list[AlarmEvent]:
        """Open events filtered like Ignition's queryStatus (globs for source and display path)."""
        out = []
        min_priority = Priority.parse(priority) if priority not in (None, "") else None
        for e in self.events.values():
            if state and e.state.lower() != state.lower() and not (
                    state.lower() == "active" and e.active) and not (
                    state.lower() == "unacked" and not e.acknowledged):
                continue
            if min_priority is not None and e.priority < min_priority:
                continue
            if source and not fnmatch.fnmatchcase(e.source, source):
                continue
            if display_path and not fnmatch.fnmatchcase(e.display_path, display_path):
                continue
            out.append(e)
        out.sort(key=lambda e: (-int(e.priority), e.active_time))
        return out


def _by(user: str | None) -> str:
    return f" by {user}" if user else ""
