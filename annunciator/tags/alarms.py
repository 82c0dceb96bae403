"""Alarms from tags: a tag's alarm definitions raise and clear alarm events as its value changes.

Each (tag, alarm) is one alarm source, named as Ignition names tag alarms:
``prov:default:/tag:Plant/Tank1/Level:/alm:High``, so ``alarms:`` definitions can match them by
glob and the event goes through the ordinary lifecycle (journal, pipelines, shelving).

The provider calls subscribers in the writer's thread; the alarm work belongs to the gateway's
loop. So the subscriber only records which sources are dirty and wakes one reconciling task on
the loop, which compares the condition with the gateway's current events and raises or clears.
Reconciling (rather than replaying every write) means a burst of writes costs one raise or clear,
and the outcome cannot depend on the order in which tasks happen to run.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from annunciator.core.tag_types import GOOD

from ..core import units

if TYPE_CHECKING:
    from annunciator.core.tag_provider import TagValue

    from ..core.services import Services
    from .settings import TagAlarmSettings

log = logging.getLogger(__name__)


def alarm_source(path: str, name: str) -> str:
    return f"prov:default:/tag:{path}:/alm:{name}"


@dataclass
class TagAlarm:
    """One alarm definition of one tag, with the state of its condition."""

    path: str
    settings: TagAlarmSettings
    active: bool = False

    @property
    def source(self) -> str:
        return alarm_source(self.path, self.settings.name)

    def evaluate(self, value: Any, quality: str) -> bool:
        """The condition for this value; a setpoint alarm keeps its state while quality is not Good
        (a bad reading says nothing about the process: that is what ``bad_quality`` is for)."""
        s = self.settings
        if s.mode == "bad_quality":
            return quality != GOOD
        if quality != GOOD or value is None:
            return self.active
        if s.mode == "equal":
            return bool(value == s.setpoint)
        if s.mode == "not_equal":
            return bool(value != s.setpoint)
        # hysteresis: once active, clear only past the deadband, so a noisy value does not flap
        if s.mode == "above":
            return value > (s.setpoint - s.deadband if self.active else s.setpoint)
        return value < (s.setpoint + s.deadband if self.active else s.setpoint)


class TagAlarms:
    """Evaluates every tag alarm on its tag's changes and drives the gateway's alarm lifecycle."""

    def __init__(self, services: Services, loop: asyncio.AbstractEventLoop):
        self.services = services
        self.loop = loop
        self.by_path: dict[str, list[TagAlarm]] = {}
        self._dirty: dict[str, tuple[TagAlarm, Any]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, path: str, definitions: list[TagAlarmSettings]) -> None:
        alarms = [TagAlarm(path, d) for d in definitions if d.enabled]
        if alarms:
            self.by_path.setdefault(path, []).extend(alarms)

    def start(self) -> None:
        """Take the active state from the gateway's open events (they survive a restart); values
        are evaluated from the next write on, since config tag values start from the config."""
        for alarms in self.by_path.values():
            for a in alarms:
                a.active = a.source in self.services.alarms.current
        self._task = self.loop.create_task(self._run(), name="tag-alarms")
        self.services.tags.subscribe(self._changed)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def _changed(self, tag: TagValue) -> None:
        if tag.path not in self.by_path:
            return
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._evaluate(tag.path, tag.value, tag.quality)
        else:
            # a script thread wrote it: evaluate on the loop (the only place that touches the alarm
            # state), with the value as written; call_soon keeps the writes in order
            self.loop.call_soon_threadsafe(self._evaluate, tag.path, tag.value, tag.quality)

    def _evaluate(self, path: str, value: Any, quality: str) -> None:
        # evaluated per write, in order, so hysteresis sees every value
        for a in self.by_path.get(path, ()):
            a.active = a.evaluate(value, quality)
            self._dirty[a.source] = (a, value)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            for source, (alarm, value) in dirty.items():
                try:
                    with units.fresh(f"tag alarm {source}"):
                        await self._apply(source, alarm, value)
                except Exception:
                    # one bad alarm (an unknown pipeline after a reload) must not stop the others
                    log.exception("tag alarm %s could not be raised or cleared", source)

    async def _apply(self, source: str, alarm: Any, value: Any) -> None:
        from ..core.alarm_spec import AlarmSpec

        event = self.services.alarms.current.get(source)
        if alarm.active and event is None:
            s = alarm.settings
            spec = AlarmSpec(source=source, name=s.name,
                             display_path=s.display_path or f"{alarm.path}/{s.name}",
                             label=s.label, priority=s.priority, event_value=value, notes=s.notes,
                             ack_mode=s.ack_mode, properties={**s.properties, "tagPath": alarm.path,
                                                              "setpoint": s.setpoint, "mode": s.mode},
                             pipelines=s.pipelines)
            await self.services.alarms.raise_alarms([spec])
            log.info("tag alarm %s active (value %r)", source, value)
        elif not alarm.active and event is not None:
            await self.services.alarms.clear_sources([source], None, f"tag value {value!r}")
            log.info("tag alarm %s cleared (value %r)", source, value)
