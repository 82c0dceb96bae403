"""The gateway: wires config, store, plugins, engine, dispatcher and timers, and owns the alarm
lifecycle (raise, clear, acknowledge, shelve) that the HTTP API, the CLI and scripts call."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import heapq
import inspect
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import schema, units
from .alarm_spec import AlarmSpec
from .alarms import SYSTEM_USER, AckMode, AlarmEvent, Priority, Transition, render_message, utcnow
from .audit import AuditLog, Code
from .channels import Link
from .config import ChannelSettings, Config
from .delivery import Delivery
from .engine import Engine, Instance
from .errors import Conflict, Invalid, NotFound
from .history import History
from .notifications import HELD, PENDING, Dispatcher, Notification
from .oncall import OnCall, Resolution
from .pin_check import PinCheck
from .pipeline import Pipeline
from .plugins import PluginManager
from .profile_watch import ProfileWatch
from .profiles import NotificationProfile
from .rows import event_from_row, event_row
from .store import Store
from .system_tags import SystemTags
from .tag_provider import TagProvider
from .timers import Timers
from .user_directory import UserDirectory
from .users import User, load_secret

log = logging.getLogger(__name__)

MAX_SHORT_CODE = 999  # ack codes stay three digits, apart from PINs (four or more)
_NO_PREFERENCES = ChannelSettings()


class Gateway:
    def __init__(self, config: Config, plugins: PluginManager):
        self.config = config
        self.plugins = plugins
        self.hook = plugins.hook
        self.pipelines: dict[str, Pipeline] = config.pipelines
        self.store = Store(config.database_url)
        self.store.read_timeout = config.gateway.commit_timeout
        self.oncall = OnCall(config, self.store)
        self.audit = AuditLog(self.store)
        self.pins = PinCheck(lambda: self.secret, self.save_user, self.audit)
        self.timers = Timers()
        self.engine = Engine(self)
        g = config.gateway
        self.dispatcher = Dispatcher(self, g.retry, g.max_concurrent_sends)
        self.delivery = Delivery(self)
        self.tags = TagProvider()
        self.events: dict[str, AlarmEvent] = {}   # every event not yet cleared-and-acknowledged
        self.by_code: dict[int, AlarmEvent] = {}  # ack code -> open event
        self._code_top = 0
        self._freed_codes: list[int] = []
        self.current: dict[str, AlarmEvent] = {}  # source -> its active event
        self.shelves: dict[str, dict[str, Any]] = {}
        self.history = History(self.store, self.events, self.engine.live, self.held)
        self.directory = UserDirectory(self.store, config.settings.users, lambda: self.secret)
        self.users = self.directory.users
        self.users_by_id = self.directory.by_id
        self.profiles: dict[str, NotificationProfile] = {}
        self.secret = b""
        # per-gateway state of plugins (e.g. "twilio": the accounts the SMS and voice plugins share)
        self.extensions: dict[str, Any] = {}
        self.started = False
        self._watcher: asyncio.Task[None] | None = None
        types = plugins.profile_types()
        for name, settings in config.profiles.items():
            kind = config.settings.profiles[name]["type"]
            self.profiles[name] = types[kind](name, settings, self)
        self.system_tags = SystemTags(self.tags, self.events, self.engine.live, self.dispatcher)
        self.profile_watch = ProfileWatch(config.gateway.profile_alarms, self.dispatcher.health, self.profiles,
                                          self.dispatcher.waiting_counts, self.events, self.raise_alarms,
                                          self.clear, self._save_event)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.store.open, loop)
        self.secret = load_secret(self.config.resolve(self.config.gateway.secret_file))
        await self.directory.sync()
        await self.oncall.load()  # runtime overrides (API/CLI) that have not ended
        for profile in self.profiles.values():
            await profile.start()
        self.system_tags.define()
        self.hook.annunciator_register_tags(gateway=self, tags=self.tags)
        await self._recover()
        self.timers.start()
        self._watcher = asyncio.ensure_future(self.profile_watch.run())
        for result in self.hook.annunciator_startup(gateway=self):
            if inspect.isawaitable(result):
                await result
        for where, message in self.config.warnings:
            log.warning("config %s: %s (skipped)", where, message)
        for where, message in self.config.notices:
            log.warning("config %s: %s", where, message)
        self.started = True
        log.info("gateway %s started: %d pipelines, %d profiles, %d users, %d open events, %d running instances",
                 self.config.gateway.name, len(self.pipelines), len(self.profiles), len(self.users),
                 len(self.events), len(self.engine.live))

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for result in self.hook.annunciator_shutdown(gateway=self):
            if inspect.isawaitable(result):
                await result
        self.timers.stop()
        if self._watcher is not None:
            self._watcher.cancel()
        await self.dispatcher.drain()
        for profile in self.profiles.values():
            await profile.stop()
        await self.store.close()

    def get_user(self, username: str) -> User:
        return self.directory.get(username)

    def set_user_pin(self, username: str, pin: str) -> User:
        """Set a PIN (stored only as its keyed hash); clears any lockout."""
        return self.directory.set_pin(username, pin)

    def unlock_user(self, username: str) -> User:
        return self.directory.unlock(username)

    def save_user(self, user: User) -> None:
        """Persist PIN and lockout state after a check."""
        self.directory.save(user)

    async def _recover(self) -> None:
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

        events, shelves, instances, pending, last_code = await self.store.read(load)
        self._code_top = last_code
        for row in events:
            event = event_from_row(row)
            self.events[event.id] = event
            if event.ack_code is not None and not event.done:
                self.by_code[event.ack_code] = event
            if event.active:
                self.current[event.source] = event
        # the count goes on from the last code ever given, so a restart does not reuse recent codes
        self._code_top = max([self._code_top, *self.by_code])
        self._freed_codes = [c for c in range(1, self._code_top) if c not in self.by_code]
        heapq.heapify(self._freed_codes)
        for row in shelves:
            self.shelves[row["source"]] = row
            if row["expires_at"] > now:
                self.timers.at(f"shelf:{row['source']}", row["expires_at"], self._shelf_expired, row["source"])
        for row in instances:
            owner = self.events.get(row["event_id"])
            if owner is not None:
                self.engine.restore(row, owner)
        for row in pending:
            user = self.users.get(row["username"])
            evs = [i for i in row["event_ids"] if i in self.events]
            if user is None or not evs:
                why = "user or event no longer exists after restart"
                self.store.update(schema.notifications, row["id"], {"status": "failed", "updated": now,
                                                                    "last_error": why})
                self.audit.record(Code.NOTIFICATION_FAILED, user=row["username"], channel=row["profile"],
                                  contact=row["contact"], text=why, event_ids=row["event_ids"],
                                  notification_id=row["id"])
                continue
            n = self.notification_from_row(row, user)
            if n.status == HELD:
                self.delivery.batches.recover(n)
                continue
            log.info("resending notification %s to %s (pending at shutdown)", n.id, user.username)
            self.dispatcher.submit_committed(n)
        self.profile_watch.resume(self.current)
        # events loaded only for the notifications above are finished: the notifications hold them
        for event in [e for e in self.events.values() if e.done]:
            self.forget_if_done(event)
        self.refresh_tags_soon()

    # --- the gateway watching its profiles --------------------------------------------------

    # --- tags -----------------------------------------------------------------------------

    def refresh_tags_soon(self) -> None:
        """Refresh the System/ count tags soon (coalesced: see SystemTags)."""
        self.system_tags.refresh_soon(started=self.started)

    # --- alarm lifecycle ------------------------------------------------------------------

    def definition_for(self, source: str) -> Any:
        for d in self.config.settings.alarms:
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
                if pipeline not in self.pipelines:
                    raise Invalid(f"alarms[{i}].pipelines.{transition}: unknown pipeline {pipeline!r}; "
                                  f"defined: {', '.join(sorted(self.pipelines)) or '(none)'}")
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
            self.hook.annunciator_alarm_event(gateway=self, event=event, transition="active")
            if not event.shelved and "active" in event.pipelines:
                entering.append((event, event.pipelines["active"]))
            out.append((event, True))
        for event, pipeline in entering:
            await self.engine.enter(event, pipeline, "event active")
        self.refresh_tags_soon()
        return out

    async def raise_alarms_stored(self, specs: Iterable[AlarmSpec], timeout: float | None = None
                                  ) -> list[tuple[AlarmEvent, bool]]:
        """Raise and wait until the events are durable. An event whose row the database refused
        is forgotten again (never "active" unless stored), so repeating the request raises it
        anew; Refused is raised then. TimeoutError (the database does not answer) keeps
        everything queued: it is stored when the database returns."""
        with units.joined("raise alarms"):
            results = await self.raise_alarms(specs)
            async with asyncio.timeout(self.config.gateway.commit_timeout if timeout is None else timeout):
                await self.store.commit()
        return results

    def forget_unstored(self, events: Iterable[AlarmEvent]) -> None:
        """Undo raising events whose rows were refused: memory never gets ahead of the store."""
        for event in events:
            if self.events.get(event.id) is not event:
                continue
            self.engine.discard(event)
            self.delivery.batches.discard(event)
            self.events.pop(event.id, None)
            if self.current.get(event.source) is event:
                del self.current[event.source]
            if event.ack_code is not None and self.by_code.get(event.ack_code) is event:
                del self.by_code[event.ack_code]
            log.error("alarm %s (%s) was not stored: the database refused it", event.id, event.source)
            self.hook.annunciator_alarm_event(gateway=self, event=event, transition="discarded")
        self.refresh_tags_soon()

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
            self.hook.annunciator_alarm_event(gateway=self, event=event, transition="cleared")
            await self.engine.on_transition(event, "cleared", f"cleared{_by(user)}")
            if event.ack_mode == AckMode.AUTO and not event.acknowledged:
                await self._ack(event, SYSTEM_USER, "auto-acknowledged on clear", "auto")
            self._save_event(event)
            if "cleared" in event.pipelines:
                await self.engine.enter(event, event.pipelines["cleared"], "event cleared")
            self.forget_if_done(event)
        self.refresh_tags_soon()
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
            self._save_event(event)
            self.forget_if_done(event)
        self.refresh_tags_soon()
        return events

    async def _ack(self, event: AlarmEvent, user: str, notes: str, via: str | None = None) -> None:
        event.ack_time, event.ack_user, event.ack_notes = utcnow(), user, notes
        self._journal(event, Transition.ACKNOWLEDGED, user, notes)
        self.audit.record(Code.ACKNOWLEDGED, user=user, channel=via, text=notes or None, event_ids=[event.id])
        self.hook.annunciator_alarm_event(gateway=self, event=event, transition="acknowledged")
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
                self.hook.annunciator_alarm_event(gateway=self, event=event, transition="shelved")
                await self.engine.on_transition(event, "shelved", f"shelved{_by(user)}")
                self._save_event(event)
        self.refresh_tags_soon()
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
                self.hook.annunciator_alarm_event(gateway=self, event=event, transition="unshelved")
                self._save_event(event)
                # Still active and unacknowledged once the shelf is gone: it must reach people.
                if event.active and not event.acknowledged and "active" in event.pipelines:
                    await self.engine.enter(event, event.pipelines["active"], f"{why}; still active")
        self.refresh_tags_soon()

    async def _shelf_expired(self, source: str) -> None:
        shelf = self.shelves.get(source)
        if shelf is not None and shelf["expires_at"] <= utcnow() + timedelta(seconds=1):
            await self.unshelve([source], SYSTEM_USER, "shelf expired")

    def shelved_sources(self) -> list[dict[str, Any]]:
        now = utcnow()
        return [{"source": s, "expiresAt": r["expires_at"].isoformat(), "user": r["user"], "notes": r["notes"]}
                for s, r in sorted(self.shelves.items()) if r["expires_at"] > now]

    def _journal(self, event: AlarmEvent, action: str, user: str | None, notes: str | None) -> None:
        self.store.insert(schema.journal, {"event_id": event.id, "source": event.source, "ts": utcnow(),
                                           "action": str(action), "user": user, "notes": notes or None})

    def _save_event(self, event: AlarmEvent) -> None:
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

    # --- notifying ------------------------------------------------------------------------

    def resolve_roster(self, roster: str, event: AlarmEvent, at: datetime | None = None,
                       values: dict[str, Any] | None = None) -> Resolution:
        """Who to notify in ``roster`` for ``event``, in order, and why (core.oncall). A plugin's
        ``annunciator_resolve_roster`` decides first; ``values`` default to the event's."""
        at = at or utcnow()
        kwargs = {"gateway": self, "roster": roster, "event": event, "at": at}
        hook = self.hook.annunciator_resolve_roster
        # call the implementations as pluggy would (firstresult, last registered first), to know
        # which plugin chose: "chosen by plugin X" is what the trace must say
        for impl in reversed(hook.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            chosen: Any = impl.function(*[kwargs[a] for a in impl.argnames])
            if chosen is None:
                continue
            names = [u.username if isinstance(u, User) else str(u) for u in chosen]
            users = list(dict.fromkeys(n for n in names if n in self.users))
            why = [f"chosen by plugin {impl.plugin_name}"]
            why += [f"{n}: named by plugin {impl.plugin_name}, but there is no such user"
                    for n in names if n not in self.users]
            r = self.config.oncall.rosters.get(roster) if self.config.oncall else None
            return Resolution(roster, at.astimezone(UTC), users, r.order if r else "parallel",
                              r.ack_wait if r else None, why)
        res = self.oncall.resolve(roster, at, event.template_values() if values is None else values)
        res.users = [u for u in res.users if u in self.users]
        return res

    def render(self, template: str, event: AlarmEvent) -> str:
        return render_message(template, event.template_values())

    def render_values(self, template: str, values: dict[str, Any]) -> str:
        return render_message(template, values)

    def channel_preferences(self, username: str) -> ChannelSettings:
        us = self.config.settings.users.get(username)
        return (us.channels if us is not None else None) or _NO_PREFERENCES

    def journal_note(self, event: AlarmEvent, action: str, notes: str) -> None:
        """A journal line about an event that is not a state change (e.g. nobody could be notified)."""
        self._journal(event, action, None, notes)

    def held(self) -> list[dict[str, Any]]:
        """Notifications held for consolidation or throttled: who, how many alarms, until when, why."""
        return self.delivery.batches.held()

    def waiting(self) -> dict[str, Any]:
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

        return {"waiting": [item(n) for n in self.dispatcher.waiting()],
                "profiles": self.dispatcher.health.to_dict(self.dispatcher.waiting_counts()),
                "givenUp": list(self.dispatcher.given_up)}

    def notification_from_row(self, row: dict[str, Any], user: User) -> Notification:
        return Notification(
            profile=row["profile"], user=user, message=row["message"],
            events=[self.events[i] for i in row["event_ids"] if i in self.events],
            contact_type=row["contact_type"], contact=row["contact"], instance_id=row["instance_id"],
            pipeline=row["pipeline"], block=row["block"], id=row["id"], idempotency_key=row["idempotency_key"],
            status=row["status"], attempts=row["attempts"], last_error=row["last_error"],
            provider_id=row["provider_id"], created=row["created"], sent_at=row["sent_at"],
            chain=[Link.from_json(x) for x in row["chain"] or []], chain_id=row["chain_id"],
            batch_key=row["batch_key"], due_at=row["due_at"], attempt_log=list(row["attempt_log"] or []),
            delivery_status=row["delivery_status"], next_attempt_at=row.get("next_attempt_at"),
            # rows from before durable retries have no deadline: give them the configured one
            expires_at=row.get("expires_at") or row["created"] + timedelta(
                seconds=self.config.gateway.retry.max_age))

    # --- queries --------------------------------------------------------------------------

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

    def cancel_instance(self, instance_id: str, user: str | None = None) -> Instance:
        inst = self.engine.cancel(instance_id, f"cancelled{_by(user)}")
        if inst is None:
            raise NotFound(f"no running pipeline instance {instance_id!r}")
        return inst


def _by(user: str | None) -> str:
    return f" by {user}" if user else ""
