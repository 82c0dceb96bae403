"""The built-in pipeline blocks (the Script block lives in annunciator.scripting)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from .alarms import DEFAULT_MESSAGE, AckMode
from .config import ChannelPolicy, Config, Duration, StrictModel
from .consolidation import ConsolidationSettings
from .expressions import ExpressionError, check_expression, compile_expression
from .hookspecs import hookimpl
from .pipeline import END, Block, BlockContext, BlockSettings, Fork, Jump, Next, Stop, Wait

ExpressionText = Annotated[str, AfterValidator(check_expression)]

DEFAULT_ACK_WAIT = 300.0  # a sequential roster without ack_wait: five minutes per person


def _check_notify(config: Config | None, profiles: list[str], roster: str | None,
                  prefix: str = "") -> list[tuple[str, str]]:
    if config is None:
        return []
    s = config.settings
    problems = []
    for i, p in enumerate(profiles):
        if p not in s.profiles:
            problems.append((f"{prefix}profiles[{i}]" if len(profiles) > 1 else f"{prefix}profile",
                             f"unknown profile {p!r}; defined: {', '.join(sorted(s.profiles)) or '(none)'}"))
    if roster is not None and roster not in s.rosters:
        problems.append((f"{prefix}roster",
                         f"unknown roster {roster!r}; defined: {', '.join(sorted(s.rosters)) or '(none)'}"))
    return problems


class _NotifySettings(BlockSettings):
    profile: str | None = None
    profiles: list[str] = []
    message: str = DEFAULT_MESSAGE
    # how the profiles reach each person (core.channels); None: the person's own policy, else all
    policy: ChannelPolicy = None

    @model_validator(mode="after")
    def _one_profile(self) -> _NotifySettings:
        if self.profile:
            self.profiles = [self.profile, *[p for p in self.profiles if p != self.profile]]
        if not self.profiles:
            raise ValueError("needs a profile (profile: NAME) or profiles: [NAME, ...]")
        return self


class Keyword(StrictModel):
    """A reply word for the people this block notifies (e.g. ``ONSITE``): logs its event code,
    runs its action, answers with its reply."""

    code: str = Field("SMSKeyword", min_length=1, max_length=60)
    action: Literal["none", "ack", "shelve"] = "none"
    reply: str = ""
    minutes: float = Field(60.0, gt=0)  # for shelve


class NotificationBlock(Block):
    """Send the event to the on-call people of a roster through one or more profiles.

    A parallel roster is notified at once and flow goes on. A sequential roster is notified one
    person at a time: the block waits the roster's ``ack_wait`` for an acknowledgement before the
    next person, and goes on once someone acknowledges or everyone has been tried. With
    ``consolidation``, alarms for one person are collected and sent as one message (see
    core.consolidation); flow goes on at once.
    """

    type_name = "notification"
    description = "notify a roster through one or more profiles, then go on"

    settings: Settings

    class Settings(_NotifySettings):
        roster: str
        consolidation: ConsolidationSettings | None = None
        keywords: dict[str, Keyword] = {}

    def enter(self, ctx: BlockContext) -> Next | Wait:
        s = self.settings
        consolidating = s.consolidation is not None and s.consolidation.active
        team = ctx.on_call(s.roster)
        if team.order == "sequential" and len(team.users) > 1 and not consolidating:
            wait = DEFAULT_ACK_WAIT if team.ack_wait is None else team.ack_wait
            return self._next_person(ctx, team.users, [], wait)
        count = ctx.send(s.profiles, team.users, s.message, policy=s.policy, consolidation=s.consolidation)
        verb = "held for consolidation" if consolidating else "queued"
        return Next(why=f"{count} notification(s) {verb} to roster {team.roster}")

    def _next_person(self, ctx: BlockContext, candidates: list[Any], paged: list[str], wait: float) -> Wait | Next:
        """Page the first candidate not yet paged who can be reached; someone who cannot is
        skipped at once rather than waited for."""
        for user in candidates:
            if user.username in paged:
                continue
            paged = [*paged, user.username]
            count = ctx.send(self.settings.profiles, [user], self.settings.message, policy=self.settings.policy)
            if count:
                return Wait(wait, state={"paged": paged, "wait": wait}, until_ack=True,
                            why=f"sequential: {user.username} ({len(paged)} paged), {count} notification(s); "
                                f"waiting {wait:g}s for an acknowledgement")
        return Next(why=f"sequential: all {len(paged)} people notified, nobody acknowledged")

    def resume(self, ctx: BlockContext, state: dict[str, Any], reason: str) -> Wait | Next:
        if ctx.event.acknowledged:
            return Next(why=f"acknowledged by {ctx.event.ack_user or 'someone'}")
        # ask again who is on call: a hand-off or an override ending since the last page counts
        team = ctx.on_call(self.settings.roster)
        return self._next_person(ctx, team.users, list(state.get("paged") or state.get("people", [])[:1]),
                                 state["wait"])

    def check(self, config: Config | None) -> list[tuple[str, str]]:
        problems = _check_notify(config, self.settings.profiles, self.settings.roster)
        roster = config.settings.rosters.get(self.settings.roster) if config is not None else None
        cons = self.settings.consolidation
        if cons is not None and cons.active and getattr(roster, "order", None) == "sequential":
            problems.append(("consolidation", f"roster {self.settings.roster} is sequential (one person at a "
                                              "time): consolidation cannot be used with it"))
        return problems


class DelayBlock(Block):
    """Hold the event for a time; dropout (e.g. acknowledgement) ends the hold at once."""

    type_name = "delay"
    description = "wait, then go on"

    settings: Settings

    class Settings(BlockSettings):
        delay: Duration

    @property
    def waits(self) -> bool:
        return self.settings.delay > 0

    def enter(self, ctx: BlockContext) -> Next | Wait:
        if self.settings.delay <= 0:
            return Next(why="no delay")
        return Wait(self.settings.delay, why=f"delay {self.settings.delay:g}s")

    def resume(self, ctx: BlockContext, state: dict[str, Any], reason: str) -> Next:
        return Next(why="delay over")


class SplitterBlock(Block):
    """Send the event down several paths at once."""

    type_name = "splitter"
    description = "fan out to several blocks at once"

    settings: Settings

    class Settings(BlockSettings):
        outputs: list[str] = Field(min_length=1)

    def enter(self, ctx: BlockContext) -> Fork:
        return Fork(list(self.settings.outputs), why=f"split to {', '.join(self.settings.outputs)}")

    def targets(self) -> list[str | None]:
        return list(self.settings.outputs)


class SwitchBlock(Block):
    """Route by the value of an expression (e.g. ``priority``)."""

    type_name = "switch"
    description = "route by an expression's value"

    settings: Settings

    class Settings(BlockSettings):
        expression: ExpressionText
        cases: dict[str, str] = Field(min_length=1)
        default: str | None = END

    def enter(self, ctx: BlockContext) -> Next:
        s = self.settings
        try:
            value = ctx.evaluate(compile_expression(s.expression))
        except ExpressionError as exc:
            return Next(s.default, why=f"expression failed ({exc}); default")
        for case, target in s.cases.items():
            if value == case or str(value) == case:
                return Next(target, why=f"{s.expression} = {value!s}: case {case!r}")
        return Next(s.default, why=f"{s.expression} = {value!s}: no case matched; default")

    def targets(self) -> list[str | None]:
        return [*self.settings.cases.values(), self.settings.default]


class ExpressionBlock(Block):
    """Route by a condition: true goes on, false ends (or goes where ``false`` says)."""

    type_name = "expression"
    description = "go on when an expression is true"

    settings: Settings

    class Settings(BlockSettings):
        expression: ExpressionText
        true: str | None = None
        false: str | None = END

    def enter(self, ctx: BlockContext) -> Next:
        s = self.settings
        try:
            value = bool(ctx.evaluate(compile_expression(s.expression)))
        except ExpressionError as exc:
            return Next(s.false, why=f"expression failed ({exc}); taken as false")
        return Next(s.true if value else s.false, why=f"{s.expression} is {value}")

    def targets(self) -> list[str | None]:
        return [self.settings.true, self.settings.false]


class SetPropertyBlock(Block):
    """Set a runtime property of this instance, e.g. ``numCalls`` to ``numCalls|default(0) + 1``."""

    type_name = "set-property"
    description = "set a runtime property from an expression"

    settings: Settings

    class Settings(BlockSettings):
        property: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
        expression: ExpressionText

    def enter(self, ctx: BlockContext) -> Next | Stop:
        s = self.settings
        try:
            value = ctx.evaluate(compile_expression(s.expression))
        except ExpressionError as exc:
            return Stop(why=f"cannot set {s.property}: {exc}")
        ctx.properties[s.property] = value
        return Next(why=f"{s.property} = {value!r}")


class JumpBlock(Block):
    """Leave this pipeline for another one."""

    type_name = "jump"
    description = "move the event to another pipeline"

    settings: Settings

    class Settings(BlockSettings):
        pipeline: str

    def enter(self, ctx: BlockContext) -> Jump:
        return Jump(self.settings.pipeline, why=f"jump to {self.settings.pipeline}")

    def targets(self) -> list[str | None]:
        return []

    def jumps(self) -> list[str]:
        return [self.settings.pipeline]


class Tier(StrictModel):
    roster: str
    wait: Duration
    profiles: list[str] = []


class EscalateBlock(Block):
    """Notify tiers of rosters in order, waiting for an acknowledgement between tiers.

    Tier 1 is notified, then the block waits ``wait`` for an acknowledgement; without one, tier 2
    is notified, and so on; after the last tier the whole ladder runs ``repeat`` times more. An
    acknowledgement ends the wait at once. When the ladder is exhausted the block goes on.
    """

    type_name = "escalate"
    description = "notify tiers in turn until someone acknowledges"

    settings: Settings

    class Settings(_NotifySettings):
        tiers: list[Tier] = Field(min_length=1)
        repeat: int = Field(0, ge=0, le=1000)

    @property
    def waits(self) -> bool:
        return any(t.wait > 0 for t in self.settings.tiers)

    def _notify(self, ctx: BlockContext, tier: int, round_: int) -> Wait:
        t = self.settings.tiers[tier]
        count = ctx.notify(t.profiles or self.settings.profiles, t.roster, self.settings.message,
                           policy=self.settings.policy)
        return Wait(t.wait, state={"tier": tier, "round": round_}, until_ack=True,
                    why=f"tier {tier + 1} ({t.roster}, round {round_ + 1}): {count} notification(s); "
                        f"waiting {t.wait:g}s for an acknowledgement")

    def enter(self, ctx: BlockContext) -> Wait | Next:
        if ctx.event.ack_mode == AckMode.UNUSED:
            # nobody can acknowledge it, so there is nothing to escalate; but it must still reach
            # the first tier rather than pass silently
            t = self.settings.tiers[0]
            count = ctx.notify(t.profiles or self.settings.profiles, t.roster, self.settings.message)
            return Next(why=f"ack mode unused: tier 1 ({t.roster}) notified ({count}), no escalation")
        if ctx.event.acknowledged:
            return Next(why=f"already acknowledged by {ctx.event.ack_user or 'someone'}")
        return self._notify(ctx, 0, 0)

    def resume(self, ctx: BlockContext, state: dict[str, Any], reason: str) -> Wait | Next:
        if ctx.event.acknowledged:
            return Next(why=f"acknowledged by {ctx.event.ack_user or 'someone'}")
        tier, round_ = state["tier"] + 1, state["round"]
        if tier >= len(self.settings.tiers):
            tier, round_ = 0, round_ + 1
            if round_ > self.settings.repeat:
                return Next(why=f"no acknowledgement after {round_} round(s) of every tier")
        return self._notify(ctx, tier, round_)

    def check(self, config: Config | None) -> list[tuple[str, str]]:
        problems = _check_notify(config, self.settings.profiles, None)
        for i, t in enumerate(self.settings.tiers):
            problems += _check_notify(config, t.profiles, t.roster, prefix=f"tiers[{i}].")
        return problems


BUILTIN_BLOCKS: list[type[Block]] = [
    NotificationBlock, DelayBlock, SplitterBlock, SwitchBlock, ExpressionBlock,
    SetPropertyBlock, JumpBlock, EscalateBlock,
]


@hookimpl
def annunciator_block_types() -> list[type[Block]]:
    return BUILTIN_BLOCKS
