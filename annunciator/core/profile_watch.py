"""The gateway watching its own notification profiles: a profile failing for a while with pages
waiting on it raises the alarm ``annunciator/profiles/NAME`` (into ``profile_alarms.pipeline``),
whose value follows what waits; it clears when the profile sends again (docs/delivery.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from . import units
from .alarm_spec import AlarmSpec
from .alarms import SYSTEM_USER, AlarmEvent, utcnow
from .config import ProfileAlarmSettings
from .profile_health import ProfileHealth

log = logging.getLogger(__name__)


class ProfileWatch:
    def __init__(self, settings: ProfileAlarmSettings, health: ProfileHealth, profiles: Mapping[str, Any],
                 waiting_counts: Callable[[], dict[str, int]], events: Mapping[str, AlarmEvent],
                 raise_alarms: Callable[[Iterable[AlarmSpec]], Awaitable[list[tuple[AlarmEvent, bool]]]],
                 clear: Callable[[list[str], str | None, str], Awaitable[Any]],
                 save_event: Callable[[AlarmEvent], None]):
        self._settings = settings
        self._health = health
        self._profiles = profiles
        self._waiting_counts = waiting_counts
        self._events = events
        self._raise_alarms = raise_alarms
        self._clear = clear
        self._save_event = save_event

    async def run(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                with units.fresh("profile check"):
                    await self.check()
            except Exception:  # the watcher must outlive any one bad check
                log.exception("checking the notification profiles failed")

    async def check(self) -> None:
        """Raise the gateway's own alarm for a profile failing longer than
        ``gateway.profile_alarms.after`` while pages wait for it (or were given up); clear it once
        the profile sends again."""
        settings = self._settings
        if not settings.enabled:
            return
        now = utcnow()
        waiting = self._waiting_counts()
        for name, state in list(self._health.states.items()):
            if name not in self._profiles:
                # raised before a restart for a profile the config no longer has: nothing will
                # ever send through it again, so nothing would ever clear it
                event = self._events.get(state.alarm_event or "")
                state.alarm_event = state.failing_since = None
                if event is not None and event.active:
                    await self._clear([event.id], SYSTEM_USER, f"profile {name} is no longer configured")
                continue
            if state.failing_since is None:
                if state.alarm_event is not None:
                    event = self._events.get(state.alarm_event)
                    state.alarm_event = None
                    if event is not None and event.active:
                        await self._clear([event.id], SYSTEM_USER, f"profile {name} sends again")
                        log.warning("profile %s sends again: its alarm is cleared", name)
                continue
            since = state.failing_since.strftime("%H:%M:%S UTC")
            text = (f"failing since {since}: {waiting.get(name, 0)} notification(s) waiting"
                    + (f", {state.given_up} given up" if state.given_up else "")
                    + (f"; last error: {state.last_error[:200]}" if state.last_error else ""))
            if state.alarm_event is not None:
                event = self._events.get(state.alarm_event)
                if event is not None and event.active:
                    if event.event_value != text:
                        event.event_value = text  # the value follows what waits, as a tag alarm's does
                        self._save_event(event)
                    continue
                # cleared by hand (or refused by the database) while the profile still fails: the
                # condition holds, so it is raised again, as a tag alarm would be
                state.alarm_event = None
            if (now - state.failing_since).total_seconds() < settings.after:
                continue
            if not waiting.get(name) and not state.given_up:
                continue
            spec = AlarmSpec(source=f"annunciator/profiles/{name}", name=f"Profile {name} failing",
                             display_path=f"Gateway/Profiles/{name}", priority=settings.priority,
                             event_value=text,
                             pipelines={"active": settings.pipeline} if settings.pipeline else {})
            [(event, _)] = await self._raise_alarms([spec])
            state.alarm_event = event.id
            log.error("profile %s %s (alarm %s)", name, text, event.id)

    def resume(self, current: Mapping[str, AlarmEvent]) -> None:
        """After a restart a raised profile alarm stays until its profile sends again."""
        for source, event in current.items():
            if source.startswith("annunciator/profiles/"):
                state = self._health.state(source.removeprefix("annunciator/profiles/"))
                state.failing_since = state.failing_since or event.active_time
                state.alarm_event = event.id
