"""The composition root: builds the gateway's services from the config, wires each to the
collaborators it is given, and starts and stops them. It holds no domain logic: the alarm
lifecycle is core.alarm_lifecycle, pipelines core.engine, delivery core.delivery, sending
core.notifications, start-up recovery core.recovery.

Where two services report to each other (delivery plans notifications the dispatcher sends,
and the dispatcher reports back what became of them), the report goes through a callback or a
Protocol wired here, so neither imports the other's owner.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from . import journal
from .alarm_lifecycle import Alarms
from .alarms import AlarmEvent
from .audit import AuditLog, Code
from .cluster import Term, shared_secret
from .config import Config
from .delivery import Delivery
from .engine import Engine
from .history import History
from .notifications import Dispatcher, Notification
from .oncall import OnCall
from .pin_check import PinCheck
from .plugins import PluginManager
from .profile_watch import ProfileWatch
from .profiles import NotificationProfile
from .recovery import recover
from .replies import Replies, pin_policy
from .roster_resolution import RosterResolver
from .services import PluginState, Secret, Services
from .store import Store
from .system_tags import SystemTags
from .tag_provider import TagProvider
from .timers import Timers
from .traces import Traces
from .user_directory import UserDirectory
from .users import load_secret

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: Config, plugins: PluginManager, term: Term | None = None):
        """``term``: this gateway is the active node of a cluster for that term (core.cluster);
        its writes are fenced by the lease and it sends only while the term lasts."""
        self.config = config
        self.term = term
        self.plugins = plugins
        self.hook = plugins.hook
        g = config.gateway
        self.pipelines = config.pipelines
        self.started = False
        self._secret = Secret()
        self.store = store = Store(config.database_url)
        store.read_timeout = g.commit_timeout
        if term is not None:
            store.fence = term.fence
            store.on_fenced = term.lost
        self.audit = audit = AuditLog(store)
        self.timers = timers = Timers()
        self.tags = TagProvider()
        self.traces = traces = Traces(store)
        self.directory = UserDirectory(store, config.settings.users, lambda: self._secret.value,
                                       pin_lifetime=g.pins.expire_after)
        self.pins = PinCheck(lambda: self._secret.value, self.directory.save, audit)
        self.oncall = OnCall(config, store)
        self.resolve_roster = RosterResolver(self.oncall, self.directory.users, self.hook.annunciator_resolve_roster)
        self.profiles: dict[str, NotificationProfile] = {}  # filled below, once services exist
        # the open events: the alarm registry keeps them; delivery, built first, reads them
        events: dict[str, AlarmEvent] = {}

        # sending and planning report to each other: the dispatcher's reports go to delivery
        self.dispatcher = Dispatcher(store=store, profiles=self.profiles, audit=audit, retry=g.retry,
                                     max_concurrent=g.max_concurrent_sends, on_status=self._notification_status,
                                     may_send=term.valid if term is not None else lambda: True)
        self.delivery = Delivery(store=store, audit=audit, timers=timers, traces=traces, users=self.directory.users,
                                 profiles=self.profiles, pipelines=self.pipelines, resolve=self.resolve_roster,
                                 retry=g.retry, preferences=self.directory.channel_preferences,
                                 outbox=self.dispatcher, known_events=events)
        self.dispatcher.reports = self.delivery
        self.engine = Engine(store=store, timers=timers, audit=audit, pipelines=self.pipelines, traces=traces,
                             routing=self.delivery, outbox=self.dispatcher,
                             on_finished=lambda event: self.alarms.forget_if_done(event),
                             is_open=lambda event: self.alarms.events.get(event.id) is event)
        self.alarms = Alarms(store=store, audit=audit, timers=timers, engine=self.engine,
                             batches=self.delivery.batches, pipelines=self.pipelines,
                             definitions=config.settings.alarms, commit_timeout=g.commit_timeout, events=events,
                             announce=self._alarm_transition, changed=self.refresh_tags_soon)
        self.replies = Replies(self.pins, self.alarms, pin_policy(g.pins.failures, g.pins.lockout), g.pins.contact)
        self.history = History(store, self.alarms.events, self.engine.live, self.delivery.batches.held)
        self.services = Services(
            config=config, plugins=plugins, store=store, audit=audit, timers=timers, tags=self.tags,
            traces=traces, alarms=self.alarms, engine=self.engine, delivery=self.delivery,
            dispatcher=self.dispatcher, directory=self.directory, pins=self.pins, oncall=self.oncall,
            resolve_roster=self.resolve_roster, history=self.history, replies=self.replies, profiles=self.profiles,
            secret_holder=self._secret, state=PluginState(), term=term)
        self.engine.services = self.services  # what Script blocks run with
        types = plugins.profile_types()
        for name, settings in config.profiles.items():
            kind = config.settings.profiles[name]["type"]
            self.profiles[name] = types[kind](name, settings, self.services)
        self.system_tags = SystemTags(self.tags, self.alarms.events, self.engine.live, self.dispatcher)
        self.profile_watch = ProfileWatch(g.profile_alarms, self.dispatcher.health, self.profiles,
                                          self.dispatcher.waiting_counts, self.alarms.events,
                                          self.alarms.raise_alarms, self.alarms.clear, self.alarms.save_event)
        self._watcher: asyncio.Task[None] | None = None

    @property
    def secret(self) -> bytes:
        return self._secret.value

    # --- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.store.open, loop)
        self._secret.value = load_secret(self.config.resolve(self.config.gateway.secret_file))
        if self.term is not None:
            # every node of a cluster must key PINs and cookies alike: the first one's secret
            self._secret.value = await self.store.read(
                lambda conn: shared_secret(conn, self._secret.value), fresh=False)
        await self.directory.sync()
        await self.oncall.load()  # runtime overrides (API/CLI) that have not ended
        for profile in self.profiles.values():
            await profile.start()
        self.system_tags.define()
        self.hook.annunciator_register_tags(services=self.services, tags=self.tags)
        await recover(store=self.store, audit=self.audit, alarms=self.alarms, engine=self.engine,
                      delivery=self.delivery, dispatcher=self.dispatcher, users=self.directory.users,
                      max_age=self.config.gateway.retry.max_age)
        if self.term is not None:
            self._journal_term()
        self.profile_watch.resume(self.alarms.current)
        self.refresh_tags_soon()
        self.timers.start()
        self._watcher = asyncio.ensure_future(self.profile_watch.run())
        for result in self.hook.annunciator_startup(services=self.services):
            if inspect.isawaitable(result):
                await result
        for where, message in self.config.warnings:
            log.warning("config %s: %s (skipped)", where, message)
        for where, message in self.config.notices:
            log.warning("config %s: %s", where, message)
        self.started = True
        log.info("gateway %s started: %d pipelines, %d profiles, %d users, %d open events, %d running instances",
                 self.config.gateway.name, len(self.pipelines), len(self.profiles), len(self.directory.users),
                 len(self.alarms.events), len(self.engine.live))

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for result in self.hook.annunciator_shutdown(services=self.services):
            if inspect.isawaitable(result):
                await result
        self.timers.stop()
        if self._watcher is not None:
            self._watcher.cancel()
        await self.dispatcher.drain()
        for profile in self.profiles.values():
            await profile.stop()
        await self.store.close()

    async def abandon(self) -> None:
        """Stop at once, writing and sending nothing more: this node lost the lease, so another
        node is (or soon will be) active and takes over from what the database holds."""
        if self.term is not None:
            self.store.fence_now(f"epoch {self.term.epoch} is over")
        self.started = False
        self.timers.stop()
        if self._watcher is not None:
            self._watcher.cancel()
        self.dispatcher.abandon()
        for result in self.hook.annunciator_shutdown(services=self.services):
            if inspect.isawaitable(result):
                try:
                    await result
                except Exception:
                    log.exception("a plugin's shutdown failed while stepping down")
        for profile in self.profiles.values():
            try:
                await profile.stop()
            except Exception:
                log.exception("profile %s failed to stop while stepping down", profile.name)
        await self.store.close()

    def _journal_term(self) -> None:
        """A failover is audited and journaled (source annunciator/cluster) by the new active."""
        assert self.term is not None
        lease = self.term.lease
        text = (f"node {lease.name} took over from {lease.took_over_from} ({lease.took_over_why}), "
                f"epoch {self.term.epoch}" if lease.took_over_from else
                f"node {lease.name} is active, epoch {self.term.epoch} ({lease.took_over_why})")
        self.audit.record(Code.CLUSTER_ACTIVE, channel="cluster", text=text,
                          details={"node": lease.name, "epoch": self.term.epoch,
                                   "previous": lease.took_over_from, "why": lease.took_over_why})
        journal.write_source(self.store, "annunciator/cluster", "failover" if lease.took_over_from else "active",
                             None, text)

    # --- reports wired to plugins and tags ------------------------------------------------

    def _alarm_transition(self, event: AlarmEvent, transition: str) -> None:
        self.hook.annunciator_alarm_event(event=event, transition=transition)

    def _notification_status(self, n: Notification, status: str) -> None:
        self.hook.annunciator_notification_event(notification=n, status=status)
        self.refresh_tags_soon()

    def refresh_tags_soon(self) -> None:
        """Refresh the System/ count tags soon (coalesced: see SystemTags)."""
        self.system_tags.refresh_soon(started=self.started)

