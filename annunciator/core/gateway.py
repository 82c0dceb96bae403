"""The gateway: wires config, store, plugins, engine, dispatcher and timers, and owns the alarm
lifecycle (raise, clear, acknowledge, shelve) that the HTTP API, the CLI and scripts call."""

from __future__ import annotations

import asyncio
import inspect
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import schema
from .alarm_lifecycle import Alarms
from .alarms import AlarmEvent, render_message, utcnow
from .audit import AuditLog, Code
from .channels import Link
from .config import ChannelSettings, Config
from .delivery import Delivery
from .engine import Engine
from .history import History
from .notifications import HELD, PENDING, Dispatcher, Notification
from .oncall import OnCall, Resolution
from .pin_check import PinCheck
from .pipeline import Pipeline
from .plugins import PluginManager
from .profile_watch import ProfileWatch
from .profiles import NotificationProfile
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
        self.alarms = Alarms(store=self.store, audit=self.audit, timers=self.timers, engine=self.engine,
                             batches=self.delivery.batches, pipelines=self.pipelines,
                             definitions=config.settings.alarms, commit_timeout=config.gateway.commit_timeout,
                             announce=self._announce, changed=self.refresh_tags_soon)
        self.events = self.alarms.events
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
                                          self.dispatcher.waiting_counts, self.events, self.alarms.raise_alarms,
                                          self.alarms.clear, self.alarms.save_event)

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
        self.alarms.restore(events, shelves, last_code)
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
        self.profile_watch.resume(self.alarms.current)
        # events loaded only for the notifications above are finished: the notifications hold them
        self.alarms.forget_finished()
        self.refresh_tags_soon()

    # --- tags -----------------------------------------------------------------------------

    def _announce(self, event: AlarmEvent, transition: str) -> None:
        self.hook.annunciator_alarm_event(gateway=self, event=event, transition=transition)

    def refresh_tags_soon(self) -> None:
        """Refresh the System/ count tags soon (coalesced: see SystemTags)."""
        self.system_tags.refresh_soon(started=self.started)

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
