"""Pipeline definitions: the block base class, what a block may answer, and building pipelines
from config (or Python) with every reference and loop checked before anything runs.

A pipeline is an ordered list of blocks. Flow goes to the next block in the list unless a block
names another one (``next: <name>``, a Switch case, a Splitter output) or ``end``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import ValidationError

from .config import StrictModel, installed, pydantic_problems

if TYPE_CHECKING:
    from .alarms import AlarmEvent
    from .config import Config

END = "end"


class BlockSettings(StrictModel):
    """Keys every block has."""

    type: str
    name: str | None = None
    next: str | None = None


# --- what a block answers ---------------------------------------------------------------------


@dataclass(slots=True)
class Next:
    """Go on to ``target`` (a block name or "end"); None means the block's default next."""

    target: str | None = None
    why: str = ""


@dataclass(slots=True)
class Fork:
    """Go on to several blocks at once; each becomes a branch of the same instance."""

    targets: list[str]
    why: str = ""


@dataclass(slots=True)
class Wait:
    """Park this branch for ``seconds``; ``resume`` is called with ``state`` when it is due.

    With ``until_ack`` the wait also ends the moment the event is acknowledged, whatever the
    pipeline's dropout conditions say (the Escalate block waits this way).
    """

    seconds: float
    state: dict[str, Any] = field(default_factory=dict)
    until_ack: bool = False
    why: str = ""


@dataclass(slots=True)
class Jump:
    """Leave this pipeline and enter another one."""

    pipeline: str
    why: str = ""


@dataclass(slots=True)
class Stop:
    """End this branch here."""

    why: str = ""


Outcome = Next | Fork | Wait | Jump | Stop


class BlockContext(Protocol):
    """What a block sees of the running instance and of the gateway's services."""

    @property
    def event(self) -> AlarmEvent: ...

    @property
    def properties(self) -> dict[str, Any]: ...

    @property
    def services(self) -> Any:
        """The gateway's services (core.services.Services) for blocks that need more than the
        calls below (a Script block runs scripts with them)."""

    def values(self) -> dict[str, Any]:
        """Event template values overlaid with runtime properties."""

    def evaluate(self, expression: Any) -> Any:
        """Evaluate a compiled Expression against ``values()``."""

    def on_call(self, roster: str) -> Any:
        """The roster's on-call users for this event (OnCallUsers: users, order, ack_wait), traced;
        the pipeline's fallback roster when nobody is on call."""

    def send(self, profiles: list[str], users: list[Any], message: str, **options: Any) -> int:
        """Queue notifications of this event to these users (options: ``policy``, ``consolidation``);
        returns how many were queued or held."""

    def notify(self, profiles: list[str], roster: str, message: str, **options: Any) -> int:
        """``send`` to the roster's on-call users; returns how many were queued."""

    def trace(self, action: str, why: str) -> None:
        """Add a line to this instance's trace."""


class Block:
    """Base class of pipeline blocks. Subclasses set ``type_name`` and ``Settings``.

    ``enter`` runs when flow reaches the block and returns an Outcome (or an awaitable of one,
    for blocks that must do I/O, such as Script). ``resume`` runs when a Wait is due.
    """

    type_name: ClassVar[str] = ""
    Settings: ClassVar[type[BlockSettings]] = BlockSettings
    description: ClassVar[str] = ""

    def __init__(self, settings: BlockSettings, index: int, pipeline: str):
        self.settings = settings
        self.index = index
        self.pipeline = pipeline
        self.name = settings.name or f"{self.type_name}-{index + 1}"

    def enter(self, ctx: BlockContext) -> Any:
        return Next()

    def resume(self, ctx: BlockContext, state: dict[str, Any], reason: str) -> Any:
        return Next()

    @property
    def waits(self) -> bool:
        """True when the block always parks the branch for a while (breaks a loop)."""
        return False

    def targets(self) -> list[str | None]:
        """Every place flow can go from here: block names, "end", or None for the default next."""
        return [self.settings.next]

    def jumps(self) -> list[str]:
        """Pipelines this block can jump to."""
        return []

    def check(self, config: Config | None) -> list[tuple[str, str]]:
        """Extra checks against the whole config, as (key relative to the block, message)."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pipeline}.{self.name}>"


@dataclass
class Pipeline:
    name: str
    blocks: list[Block]
    dropout: frozenset[str] = frozenset({"acknowledged", "cleared", "shelved"})
    description: str = ""
    fallback_roster: str | None = None
    _by_name: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {b.name: i for i, b in enumerate(self.blocks)}

    def resolve(self, block: Block, target: str | None) -> int | None:
        """Index of the block flow goes to from ``block``; None means the branch ends."""
        if target is None:
            target = block.settings.next
        if target is None:
            nxt = block.index + 1
            return nxt if nxt < len(self.blocks) else None
        if target == END:
            return None
        return self._by_name[target]

    def index_of(self, name: str) -> int:
        return self._by_name[name]


def build_pipelines(
    raw: Mapping[str, Any],
    block_types: Mapping[str, type[Block]],
    config: Config | None = None,
) -> tuple[dict[str, Pipeline], list[tuple[str, str]]]:
    """Build pipelines from their settings; return them with every problem found.

    ``raw`` maps a pipeline name to PipelineSettings (or a plain dict of the same shape).
    """
    from .config import PipelineSettings

    problems: list[tuple[str, str]] = []
    pipelines: dict[str, Pipeline] = {}
    for pname, psettings in raw.items():
        if not isinstance(psettings, PipelineSettings):
            try:
                psettings = PipelineSettings.model_validate(psettings)
            except ValidationError as exc:
                problems += pydantic_problems(exc, f"pipelines.{pname}")
                continue
        blocks: list[Block] = []
        for i, braw in enumerate(psettings.blocks):
            where = f"pipelines.{pname}.blocks[{i}]"
            kind = braw.get("type") if isinstance(braw, dict) else None
            if kind is None:
                problems.append((f"{where}.type", f"required; installed block types: {installed(block_types)}"))
                continue
            if not isinstance(kind, str) or kind not in block_types:
                problems.append((f"{where}.type",
                                 f"unknown block type {kind!r}; installed: {installed(block_types)}"))
                continue
            cls = block_types[kind]
            try:
                settings = cls.Settings.model_validate(braw)
            except ValidationError as exc:
                problems += pydantic_problems(exc, where)
                continue
            blocks.append(cls(settings, len(blocks), pname))
        if len(blocks) != len(psettings.blocks):
            continue
        if not blocks:
            problems.append((f"pipelines.{pname}.blocks", "a pipeline needs at least one block"))
            continue
        pipelines[pname] = Pipeline(pname, blocks, frozenset(psettings.dropout), psettings.description,
                                    psettings.fallback_roster)

    if problems:
        return pipelines, problems
    problems += _check_references(pipelines, config)
    if not problems:
        problems += _check_loops(pipelines)
    return pipelines, problems


def _check_references(pipelines: dict[str, Pipeline], config: Config | None) -> list[tuple[str, str]]:
    problems = []
    for p in pipelines.values():
        if config is not None and p.fallback_roster and p.fallback_roster not in config.settings.rosters:
            problems.append((f"pipelines.{p.name}.fallback_roster", f"unknown roster {p.fallback_roster!r}; "
                             f"defined: {installed(config.settings.rosters)}"))
        seen: set[str] = set()
        for b in p.blocks:
            where = f"pipelines.{p.name}.blocks[{b.index}]"
            if b.name in seen or b.name == END:
                problems.append((f"{where}.name", f"block name {b.name!r} is used twice in the pipeline"
                                 if b.name != END else '"end" is reserved'))
            seen.add(b.name)
            for target in b.targets():
                if target is not None and target != END and target not in p._by_name:
                    problems.append((where, f"goes to unknown block {target!r}; blocks in "
                                     f"{p.name}: {installed(p._by_name)}"))
            for target in b.jumps():
                if target not in pipelines:
                    problems.append((f"{where}.pipeline", f"unknown pipeline {target!r}; defined: "
                                     f"{installed(pipelines)}"))
            problems += [(f"{where}.{k}" if k else where, m) for k, m in b.check(config)]
    return problems


def _check_loops(pipelines: dict[str, Pipeline]) -> list[tuple[str, str]]:
    """Refuse any cycle of blocks that never waits: it would spin the gateway forever."""
    Node = tuple[str, int]
    edges: dict[Node, list[Node]] = {}
    for p in pipelines.values():
        for b in p.blocks:
            if b.waits:
                continue  # a waiting block breaks any cycle through it
            out: list[Node] = []
            for target in b.targets():
                idx = p.resolve(b, target)
                if idx is not None:
                    out.append((p.name, idx))
            out += [(target, 0) for target in b.jumps()]
            edges[(p.name, b.index)] = [n for n in out if not pipelines[n[0]].blocks[n[1]].waits]

    problems = []
    state: dict[Node, int] = {}  # 1 = on the current path, 2 = finished
    reported: set[frozenset[Node]] = set()

    def visit(node: Node, path: list[Node]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    steps = " -> ".join(f"{pn}.{pipelines[pn].blocks[i].name}" for pn, i in [*cycle, nxt])
                    pn, i = nxt
                    problems.append((f"pipelines.{pn}.blocks[{i}]",
                                     f"loop never reaches a wait (delay or escalate): {steps}"))
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [])
    return problems
