"""The pipeline engine: one instance per (event, pipeline), each with branches that move through
blocks, park in waits, and end; every step is traced and every state change stored.

Dropout is immediate: when an event is acknowledged, cleared or shelved, each live instance whose
pipeline drops out on that condition ends at once, its timers are cancelled and its unsent
notifications withdrawn. Waits marked ``until_ack`` (Escalate) are resumed at once on an
acknowledgement even when the pipeline does not drop out on it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from . import journal, schema
from .alarms import AlarmEvent, new_id, utcnow
from .audit import AuditLog, Code
from .delivery import OnCallUsers, Origin
from .errors import NotFound
from .expressions import Expression
from .pipeline import Fork, Jump, Next, Pipeline, Stop, Wait
from .store import Store
from .timers import Timers
from .traces import Traces

if TYPE_CHECKING:
    from .consolidation import ConsolidationSettings
    from .services import Services
    from .users import User

log = logging.getLogger(__name__)

RUNNING, DONE, DROPPED, CANCELLED, JUMPED, ERROR = (
    "running", "done", "dropped", "cancelled", "jumped", "error")
MAX_STEPS = 1000  # per run of a branch without waiting; loops are refused at load, this is a net


@dataclass(slots=True)
class Branch:
    id: int
    block: int
    entered: datetime
    wake_at: datetime | None = None
    state: dict[str, Any] = field(default_factory=dict)
    until_ack: bool = False
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "block": self.block, "entered": self.entered.isoformat(),
                "wake_at": self.wake_at.isoformat() if self.wake_at else None,
                "state": self.state, "until_ack": self.until_ack, "why": self.why}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Branch:
        return cls(d["id"], d["block"], datetime.fromisoformat(d["entered"]),
                   datetime.fromisoformat(d["wake_at"]) if d.get("wake_at") else None,
                   d.get("state") or {}, bool(d.get("until_ack")), d.get("why", ""))


@dataclass(slots=True)
class Instance:
    event: AlarmEvent
    pipeline: Pipeline
    id: str = field(default_factory=new_id)
    status: str = RUNNING
    branches: list[Branch] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    created: datetime = field(default_factory=utcnow)
    ended: datetime | None = None
    end_reason: str | None = None
    next_branch: int = 0
    stored: bool = False

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "event_id": self.event.id, "pipeline": self.pipeline.name,
                "status": self.status, "branches": [b.to_json() for b in self.branches],
                "properties": _jsonable(self.properties), "created": self.created,
                "updated": utcnow(), "ended": self.ended, "end_reason": self.end_reason}

    def to_dict(self) -> dict[str, Any]:
        now = utcnow()
        return {
            "id": self.id, "eventId": self.event.id, "source": self.event.source,
            "pipeline": self.pipeline.name, "status": self.status, "properties": _jsonable(self.properties),
            "created": self.created.isoformat(), "ended": self.ended.isoformat() if self.ended else None,
            "endReason": self.end_reason,
            "branches": [{
                "id": b.id, "block": self.pipeline.blocks[b.block].name,
                "blockType": self.pipeline.blocks[b.block].type_name,
                "timeInBlock": round((now - b.entered).total_seconds(), 3),
                "wakeAt": b.wake_at.isoformat() if b.wake_at else None, "why": b.why,
            } for b in self.branches],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class _Context:
    """What a block sees while it runs (see pipeline.BlockContext)."""

    __slots__ = ("branch", "engine", "instance")

    def __init__(self, engine: Engine, instance: Instance, branch: Branch):
        self.engine, self.instance, self.branch = engine, instance, branch

    @property
    def event(self) -> AlarmEvent:
        return self.instance.event

    @property
    def properties(self) -> dict[str, Any]:
        return self.instance.properties

    @property
    def services(self) -> Services | None:
        return self.engine.services

    @property
    def block(self) -> Any:
        return self.instance.pipeline.blocks[self.branch.block]

    def values(self) -> dict[str, Any]:
        values = self.instance.event.template_values()
        values.update(self.instance.properties)
        return values

    def evaluate(self, expression: Expression) -> Any:
        return expression(self.values())

    def origin(self) -> Origin:
        inst = self.instance
        return Origin(inst.id, inst.event.id, inst.pipeline.name, self.block.name, self.trace)

    def on_call(self, roster: str) -> OnCallUsers:
        return self.engine.routing.on_call(self.origin(), self.event, roster,
                                           self.instance.pipeline.fallback_roster, self.values())

    def send(self, profiles: list[str], users: list[User], message: str, **options: Any) -> int:
        options.setdefault("values", self.values())
        return self.engine.routing.send(self.origin(), self.event, users, profiles, message, **options)

    def notify(self, profiles: list[str], roster: str, message: str, **options: Any) -> int:
        return self.send(profiles, self.on_call(roster).users, message, **options)

    def trace(self, action: str, why: str) -> None:
        self.engine.trace(self.instance, self.branch, action, why)


class Routing(Protocol):
    """What the engine asks of delivery (core.delivery.Delivery)."""

    def on_call(self, origin: Origin, event: AlarmEvent, roster: str, fallback_roster: str | None = None,
                values: dict[str, Any] | None = None) -> OnCallUsers: ...

    def send(self, origin: Origin, event: AlarmEvent, users: list[User], profiles: list[str], message: str, *,
             policy: str | None = None, consolidation: ConsolidationSettings | None = None,
             values: dict[str, Any] | None = None) -> int: ...

    def withdraw(self, event: AlarmEvent) -> None:
        """The event no longer needs anyone: take it out of held (consolidated) batches."""


class Outbox(Protocol):
    """What the engine asks of the dispatcher (core.notifications.Dispatcher)."""

    def cancel_instance(self, instance_id: str, why: str) -> int: ...

    def discard_instance(self, instance_id: str) -> None: ...


class Engine:
    """Runs pipeline instances. It is given the store, timers, audit log, the pipelines, the
    trace writer, delivery (``routing``) and the dispatcher (``outbox``), and reports back through
    two callbacks: ``on_finished`` (an instance ended: its event may now be forgotten) and
    ``is_open`` (is this event still one the gateway holds?)."""

    def __init__(self, *, store: Store, timers: Timers, audit: AuditLog, pipelines: Mapping[str, Pipeline],
                 traces: Traces, routing: Routing, outbox: Outbox,
                 on_finished: Callable[[AlarmEvent], None] = lambda event: None,
                 is_open: Callable[[AlarmEvent], bool] = lambda event: True,
                 services: Services | None = None):
        self.store = store
        self.timers = timers
        self.audit = audit
        self.pipelines = pipelines
        self.traces = traces
        self.routing = routing
        self.outbox = outbox
        self._on_finished = on_finished
        self._is_open = is_open
        self.services = services  # what Script blocks see (BlockContext.services)
        self.live: dict[str, Instance] = {}
        self.by_event: dict[str, dict[str, Instance]] = {}

    # --- entering -------------------------------------------------------------------------

    async def enter(self, event: AlarmEvent, pipeline_name: str, why: str,
                    properties: dict[str, Any] | None = None) -> Instance | None:
        """Start ``event`` in a pipeline; None when it is already there (one instance per pair)."""
        pipeline = self.pipelines.get(pipeline_name)
        if pipeline is None:
            log.error("event %s names unknown pipeline %r", event.id, pipeline_name)
            return None
        existing = self.by_event.get(event.id, {}).get(pipeline_name)
        if existing is not None:
            self.trace(existing, None, "skip", f"already in this pipeline; not entered again ({why})")
            return None
        inst = Instance(event, pipeline, properties=dict(properties or {}))
        self.live[inst.id] = inst
        self.by_event.setdefault(event.id, {})[pipeline_name] = inst
        branch = self._new_branch(inst, 0)
        self.trace(inst, branch, "start", why)
        await self._run(inst, branch)
        self._save(inst)
        return inst

    def _new_branch(self, inst: Instance, block: int) -> Branch:
        b = Branch(inst.next_branch, block, utcnow())
        inst.next_branch += 1
        inst.branches.append(b)
        return b

    # --- running --------------------------------------------------------------------------

    async def _run(self, inst: Instance, branch: Branch, outcome: Any = None) -> None:
        """Move a branch through blocks until it waits or ends; forks run after it."""
        pending = [(branch, outcome)]
        while pending:
            br, out = pending.pop(0)
            await self._run_branch(inst, br, out, pending)
            if inst.status != RUNNING:
                return
        if not inst.branches:
            self._end(inst, DONE, inst.end_reason or "every branch ended")

    async def _run_branch(self, inst: Instance, br: Branch, outcome: Any,
                          pending: list[tuple[Branch, Any]]) -> None:
        pipeline = inst.pipeline
        steps = 0
        while True:
            block = pipeline.blocks[br.block]
            if outcome is None:
                steps += 1
                if steps > MAX_STEPS:
                    self.trace(inst, br, "error", f"{MAX_STEPS} steps without a wait; branch stopped")
                    self._drop_branch(inst, br, "runaway loop")
                    return
                self.trace(inst, br, "enter", "")
                try:
                    outcome = block.enter(_Context(self, inst, br))
                    if inspect.isawaitable(outcome):
                        outcome = await outcome
                except Exception as exc:
                    log.exception("block %r failed", block)
                    outcome = Stop(why=f"block error: {type(exc).__name__}: {exc}")
                if inst.status != RUNNING:  # dropped while an async block ran
                    return
            why = getattr(outcome, "why", "")
            if isinstance(outcome, Next):
                try:
                    nxt = pipeline.resolve(block, outcome.target)
                except KeyError:
                    self.trace(inst, br, "error", f"unknown block {outcome.target!r}")
                    nxt = None
                self.trace(inst, br, "leave", why)
                if nxt is None:
                    self._drop_branch(inst, br, why or "end of pipeline")
                    return
                br.block, br.entered, br.state, br.why = nxt, utcnow(), {}, ""
            elif isinstance(outcome, Wait):
                br.wake_at = utcnow() + timedelta(seconds=outcome.seconds)
                br.state, br.until_ack, br.why = dict(outcome.state), outcome.until_ack, why
                self.trace(inst, br, "wait", why)
                self._arm(inst, br)
                return
            elif isinstance(outcome, Fork):
                self.trace(inst, br, "leave", why)
                resolved = [pipeline.resolve(block, t) for t in outcome.targets]
                targets = [t for t in resolved if t is not None]
                if not targets:
                    self._drop_branch(inst, br, why)
                    return
                for t in targets[1:]:
                    pending.append((self._new_branch(inst, t), None))
                br.block, br.entered, br.state = targets[0], utcnow(), {}
            elif isinstance(outcome, Jump):
                self.trace(inst, br, "leave", why)
                # Only this branch leaves: other branches of a split carry on here, and the
                # instance ends as "jumped" when the last branch jumps.
                self._drop_branch(inst, br, why)
                if not inst.branches:
                    self._end(inst, JUMPED, why)
                target = outcome.pipeline
                await self.enter(inst.event, target, f"jumped from {pipeline.name}", inst.properties)
                return
            else:  # Stop
                self.trace(inst, br, "leave", why or "stopped")
                self._drop_branch(inst, br, why or "stopped")
                return
            outcome = None

    def _drop_branch(self, inst: Instance, br: Branch, why: str) -> None:
        if br in inst.branches:
            inst.branches.remove(br)
        inst.end_reason = why

    def _arm(self, inst: Instance, br: Branch) -> None:
        assert br.wake_at is not None
        self.timers.at(f"wait:{inst.id}:{br.id}", br.wake_at, self._wake, inst.id, br.id, "timer")

    async def _wake(self, instance_id: str, branch_id: int, reason: str) -> None:
        inst = self.live.get(instance_id)
        if inst is None or inst.status != RUNNING:
            return
        br = next((b for b in inst.branches if b.id == branch_id), None)
        if br is None or br.wake_at is None:
            return
        block = inst.pipeline.blocks[br.block]
        state, br.wake_at, br.until_ack = br.state, None, False
        self.trace(inst, br, "resume", reason)
        try:
            outcome = block.resume(_Context(self, inst, br), state, reason)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except Exception as exc:
            log.exception("block %r failed on resume", block)
            outcome = Stop(why=f"block error: {type(exc).__name__}: {exc}")
        if inst.status == RUNNING:
            await self._run(inst, br, outcome)
        self._save(inst)

    # --- ending ---------------------------------------------------------------------------

    def _end(self, inst: Instance, status: str, why: str) -> None:
        if inst.status != RUNNING:
            return
        for br in inst.branches:
            if br.wake_at is not None:
                self.timers.cancel(f"wait:{inst.id}:{br.id}")
        inst.status, inst.ended, inst.end_reason = status, utcnow(), why
        inst.branches = []
        self.trace(inst, None, "end" if status in (DONE, JUMPED) else status, why)
        self.live.pop(inst.id, None)
        pipes = self.by_event.get(inst.event.id)
        if pipes is not None:
            if pipes.get(inst.pipeline.name) is inst:
                del pipes[inst.pipeline.name]
            if not pipes:
                del self.by_event[inst.event.id]
        if status in (DROPPED, CANCELLED):
            self.outbox.cancel_instance(inst.id, why)
        self._save(inst)
        self._on_finished(inst.event)

    async def on_transition(self, event: AlarmEvent, transition: str, why: str) -> None:
        """Apply dropout (at once) and wake acknowledgement waits for an event's transition."""
        self.routing.withdraw(event)
        for inst in list(self.by_event.get(event.id, {}).values()):
            if transition in inst.pipeline.dropout:
                self._end(inst, DROPPED, why)
            elif transition == "acknowledged":
                for br in [b for b in inst.branches if b.until_ack and b.wake_at is not None]:
                    self.timers.cancel(f"wait:{inst.id}:{br.id}")
                    await self._wake(inst.id, br.id, why)

    def discard(self, event: AlarmEvent) -> None:
        """Forget an event's instances whose rows the database refused: no timer, no trace, no
        row; nothing may go on as if they had been stored."""
        for inst in list(self.by_event.pop(event.id, {}).values()):
            self._discard(inst)

    def _discard(self, inst: Instance) -> None:
        for br in inst.branches:
            self.timers.cancel(f"wait:{inst.id}:{br.id}")
        inst.status, inst.branches = CANCELLED, []
        self.live.pop(inst.id, None)
        self.traces.drop(inst.id)
        instances = self.by_event.get(inst.event.id)
        if instances is not None:
            instances.pop(inst.id, None)
            if not instances:
                del self.by_event[inst.event.id]
        self.outbox.discard_instance(inst.id)

    def _refused(self, inst: Instance) -> None:
        """The database refused an instance's row. With its alarm refused too, the alarm is
        forgotten (the request failed). An alarm stored before its instance was refused stays
        active: that is written where an operator looks, since this pipeline will page nobody."""
        if inst.status == CANCELLED:
            return
        self._discard(inst)
        if self._is_open(inst.event):
            why = f"pipeline {inst.pipeline.name} could not be stored (the database refused it): it pages nobody"
            log.error("alarm %s (%s): %s", inst.event.id, inst.event.source, why)
            journal.write(self.store, inst.event, "pipeline-refused", None, why)
            self.audit.record(Code.PIPELINE_REFUSED, text=why, event_ids=[inst.event.id],
                                      details={"pipeline": inst.pipeline.name, "instance": inst.id})

    def cancel(self, instance_id: str, why: str) -> Instance | None:
        inst = self.live.get(instance_id)
        if inst is not None:
            self._end(inst, CANCELLED, why)
        return inst

    def cancel_running(self, instance_id: str, user: str | None = None) -> Instance:
        """Cancel a running instance by hand (API, CLI, console, scripts)."""
        inst = self.cancel(instance_id, f"cancelled by {user}" if user else "cancelled")
        if inst is None:
            raise NotFound(f"no running pipeline instance {instance_id!r}")
        return inst

    # --- storage --------------------------------------------------------------------------

    def _save(self, inst: Instance) -> None:
        row = inst.row()
        if not inst.stored:
            inst.stored = True
            self.store.insert(schema.pipeline_instances, row, on_refused=lambda: self._refused(inst))
        else:
            del row["id"], row["event_id"], row["pipeline"], row["created"]
            self.store.update(schema.pipeline_instances, inst.id, row)

    def trace(self, inst: Instance, branch: Branch | None, action: str, why: str) -> None:
        block = inst.pipeline.blocks[branch.block].name if branch is not None else None
        self.traces.line(inst.id, inst.event.id, block, action, why, branch.id if branch is not None else -1)

    def restore(self, row: dict[str, Any], event: AlarmEvent) -> None:
        """Bring back a running instance from the store at start and re-arm its waits."""
        pipeline = self.pipelines.get(row["pipeline"])
        if pipeline is None:
            log.error("instance %s: pipeline %r is no longer configured; cancelling", row["id"], row["pipeline"])
            self.store.update(schema.pipeline_instances, row["id"], {
                "status": CANCELLED, "ended": utcnow(), "updated": utcnow(),
                "end_reason": f"pipeline {row['pipeline']!r} removed from the config"})
            return
        branches = [Branch.from_json(b) for b in row["branches"]]
        inst = Instance(event, pipeline, id=row["id"], branches=branches,
                        properties=row["properties"] or {}, created=row["created"], stored=True,
                        next_branch=max((b.id for b in branches), default=-1) + 1)
        for br in branches:
            if br.block >= len(pipeline.blocks):
                br.block = len(pipeline.blocks) - 1
        self.live[inst.id] = inst
        self.by_event.setdefault(event.id, {})[pipeline.name] = inst
        for br in branches:
            if br.wake_at is not None:
                self._arm(inst, br)
            else:
                # Stored mid-step (cannot happen with the current writer, but a hand-edited or
                # older row must not stall forever): run the block again.
                self.timers.at(f"wait:{inst.id}:{br.id}", utcnow(), self._rerun, inst.id, br.id)

    async def _rerun(self, instance_id: str, branch_id: int) -> None:
        inst = self.live.get(instance_id)
        br = next((b for b in inst.branches if b.id == branch_id), None) if inst else None
        if inst is not None and br is not None:
            await self._run(inst, br)
            self._save(inst)
