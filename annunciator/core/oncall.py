"""Who is on call: rosters (members, order, rotation, calculated), overrides, and resolution.

A roster is resolved for an instant in four steps, each leaving a line in ``Resolution.why``:

1. **Candidates**, in order: the members; rotated to this hand-off for a rotation; or the users
   a calculated roster's expression names for the alarm.
2. **Overrides** active at that instant: a covering user takes the covered user's place; an
   added user joins the on-call group. An override's person is on call for the whole window,
   whatever their schedule says: an override is a person's explicit promise to answer.
3. **Schedules**: a candidate whose schedule is off is skipped (a user with no schedule is always
   on). In a rotation the next people in the rota move up, so an off-schedule person's turn
   passes to whoever is next rather than leaving a gap.
4. **Selection**: a rotation's first ``shift`` people are on call; in a sequential roster the
   rest of the rota follows them as escalation, one at a time.

See docs/oncall.md for the configuration grammar.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import Field, ValidationError, field_validator

from . import schema
from .alarms import new_id, utcnow
from .config import Config, RosterSettings, StrictModel, installed, join_path, parse_duration, pydantic_problems
from .errors import Invalid, NotFound
from .expressions import Expression, ExpressionError, compile_expression
from .schedules import DAYS, Schedule, build_holidays, build_schedules, parse_time, zone

if TYPE_CHECKING:
    from .store import Store

Problems = list[tuple[str, str]]
PARALLEL, SEQUENTIAL = "parallel", "sequential"
ALWAYS = datetime(1970, 1, 1, tzinfo=UTC)  # the start of an override written without `from`


# --- the answer ------------------------------------------------------------------------------

@dataclass
class Resolution:
    """Who is on call in one roster at one instant, in notification order, and why."""

    roster: str
    at: datetime                 # aware UTC
    users: list[str]             # usernames on call, in notification order, no repeats
    order: str                   # "parallel" (everyone at once) | "sequential" (one at a time)
    ack_wait: float | None       # seconds to wait for an ack before the next person (sequential)
    why: list[str] = field(default_factory=list)  # one human line per decision

    def to_dict(self) -> dict[str, Any]:
        """JSON for the API."""
        return {"roster": self.roster, "at": self.at.isoformat(), "users": list(self.users), "order": self.order,
                "ackWait": self.ack_wait, "why": list(self.why)}


# --- settings checked here (the file's shape is in core.config) -----------------------------

_EVERY = re.compile(r"\s*([0-9]+)\s*(day|days|d|week|weeks|w)\s*", re.ASCII | re.IGNORECASE)


def parse_every(value: Any) -> tuple[timedelta, str]:
    """How often a rotation hands off: ``daily``, ``weekly``, ``"3 days"``, ``"2 weeks"``, or a
    duration (``12h``). Returns the period and a short description."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "daily":
            return timedelta(days=1), "daily"
        if text == "weekly":
            return timedelta(days=7), "weekly"
        m = _EVERY.fullmatch(text)
        if m:
            n = int(m.group(1)) * (7 if m.group(2).startswith("w") else 1)
            if n < 1:
                raise ValueError(f"expected a hand-off period of at least one day, got {value!r}")
            return timedelta(days=n), f"every {n} days"
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f'expected daily, weekly, "N days" or a duration like "12h", got {value!r}') from None
    if seconds < 60:
        raise ValueError(f"expected a hand-off period of at least a minute, got {value!r}")
    return timedelta(seconds=seconds), f"every {value}"


class RotationSettings(StrictModel):
    """``rotation:`` of a roster: the on-call person changes at each hand-off."""

    every: Any = "weekly"
    start: date
    handoff: Any = "00:00"
    timezone: str = "UTC"
    shift: int = Field(1, ge=1)  # how many people are on call at once

    @field_validator("every")
    @classmethod
    def _every(cls, v: Any) -> Any:
        parse_every(v)
        return v

    @field_validator("handoff")
    @classmethod
    def _handoff(cls, v: Any) -> Any:
        parse_time(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v


class OverrideSettings(StrictModel):
    """An override in the config: ``{user, covers | roster, from, until, timezone, notes}``."""

    user: str
    covers: str | None = None
    roster: str | None = None
    starts: Any = Field(None, alias="from")
    until: Any
    timezone: str = "UTC"
    notes: str = ""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v


def parse_when(value: Any, tz: ZoneInfo | Any = UTC) -> datetime:
    """An aware UTC instant from an ISO time (``2026-11-30 08:00``, ``2026-11-30T08:00+01:00``),
    a date (midnight), or a datetime; a time without an offset is wall time in ``tz``."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f'expected a time like "2026-11-30 08:00" or ISO 8601 with an offset, '
                             f'got {value!r}') from None
    else:
        raise ValueError(f'expected a time like "2026-11-30 08:00", got {value!r}')
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


def format_local(at: datetime, tz: ZoneInfo | Any = UTC) -> str:
    """``2026-11-30 08:00 CET``: how a person reads a time in the zone they think in."""
    local = at.astimezone(tz)
    fmt = "%Y-%m-%d %H:%M:%S %Z" if local.second else "%Y-%m-%d %H:%M %Z"
    return local.strftime(fmt)


# --- runtime objects -------------------------------------------------------------------------

@dataclass
class Rotation:
    """Hand-offs at ``epoch + k * period`` in wall-clock time of ``tz``: a daily 08:00 hand-off
    stays at 08:00 on the clock across DST changes."""

    epoch: datetime        # naive wall time of the first hand-off
    period: timedelta
    every: str             # "weekly", "daily", "every 3 days", ...
    tz: ZoneInfo
    shift: int

    def handoff(self, k: int) -> datetime:
        """The aware UTC instant of hand-off ``k``. A wall time skipped by DST resolves as the
        same offset as before the change (zoneinfo, fold=0), i.e. one hour later on the clock."""
        return (self.epoch + k * self.period).replace(tzinfo=self.tz).astimezone(UTC)

    def index(self, at: datetime) -> int:
        """Number of hand-offs since the first one (negative before it)."""
        local = at.astimezone(self.tz).replace(tzinfo=None)
        k = math.floor((local - self.epoch) / self.period)
        # wall-clock arithmetic is off by the UTC offset change near a DST switch: settle on
        # the real instants, which are increasing in k
        while self.handoff(k + 1) <= at:
            k += 1
        while self.handoff(k) > at:
            k -= 1
        return k

    def label(self, k: int) -> str:
        """``week 3, hand-off Mon 08:00 Europe/Berlin``: which turn this is, and when turns change."""
        if k < 0:
            first = format_local(self.handoff(0), self.tz)
            return f"before the first hand-off, {first}; counted back from it"
        unit = {"weekly": "week", "daily": "day"}.get(self.every, "shift")
        when = self.epoch.strftime("%H:%M")
        if self.every == "weekly":
            handoff = f"hand-off {DAYS[self.epoch.weekday()].capitalize()} {when} {self.tz.key}"
        elif self.every == "daily":
            handoff = f"hand-off daily {when} {self.tz.key}"
        else:
            handoff = f"hand-off {self.every} from {self.epoch:%Y-%m-%d} {when} {self.tz.key}"
        return f"{unit} {k + 1}, {handoff}"


@dataclass
class Roster:
    name: str
    users: list[str]
    order: str = PARALLEL
    ack_wait: float | None = None
    rotation: Rotation | None = None
    expression: Expression | None = None
    description: str = ""


@dataclass
class Override:
    """Someone on call in someone else's place (``covers``), or added to a roster, for a window."""

    id: str
    user: str
    covers: str | None
    roster: str | None
    starts: datetime
    ends: datetime
    source: str = "api"            # "config" | "api"
    notes: str = ""
    created: datetime | None = None
    created_by: str | None = None
    tz: Any = UTC                  # the zone its times are shown in
    deleted: bool = False

    def active(self, at: datetime) -> bool:
        return not self.deleted and self.starts <= at < self.ends

    def short_id(self) -> str:
        return self.id if self.source == "config" else self.id[:8]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "covers": self.covers, "roster": self.roster,
                "from": self.starts.isoformat(), "until": self.ends.isoformat(), "source": self.source,
                "notes": self.notes, "created": self.created.isoformat() if self.created else None,
                "createdBy": self.created_by}

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "roster": self.roster, "username": self.user, "covers": self.covers,
                "starts": self.starts, "ends": self.ends, "created": self.created or utcnow(),
                "created_by": self.created_by, "notes": self.notes or None, "deleted": self.deleted}

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Override:
        return cls(id=r["id"], user=r["username"], covers=r["covers"], roster=r["roster"], starts=r["starts"],
                   ends=r["ends"], notes=r["notes"] or "", created=r["created"], created_by=r["created_by"],
                   deleted=r["deleted"])


@dataclass
class OnCallPlan:
    """Everything the config says about on-call, built and checked once at load."""

    schedules: dict[str, Schedule]
    rosters: dict[str, Roster]
    user_schedules: dict[str, Schedule]     # username -> schedule; absent: always on
    overrides: list[Override]               # from the config file
    users: list[str]


# --- building and checking -------------------------------------------------------------------

def check_oncall(config: Config, now: datetime | None = None) -> Problems:
    """Build schedules, holidays, rosters and config overrides into ``config.oncall``; return
    every problem with its key path."""
    s = config.settings
    now = now or utcnow()
    holidays, problems = build_holidays(s.holidays, config.base_dir)
    schedules, more = build_schedules(s.schedules, holidays)
    problems += more
    user_schedules: dict[str, Schedule] = {}
    for name, us in s.users.items():
        if us.schedule is None:
            continue
        if us.schedule in schedules:
            user_schedules[name] = schedules[us.schedule]
        elif us.schedule not in s.schedules:  # a broken schedule was reported where it is defined
            problems.append((f"users.{name}.schedule",
                             f"unknown schedule {us.schedule!r}; defined: {installed(s.schedules)}"))
    rosters: dict[str, Roster] = {}
    for name, raw in s.rosters.items():
        roster, more = _build_roster(str(name), raw)
        problems += more
        if roster is not None:
            rosters[roster.name] = roster
    plan = OnCallPlan(schedules, rosters, user_schedules, [], list(s.users))
    for i, raw in enumerate(s.overrides):
        where = f"overrides[{i}]"
        try:
            o = OverrideSettings.model_validate(raw)
        except ValidationError as exc:
            problems += pydantic_problems(exc, where)
            continue
        tz = zone(o.timezone)
        times: dict[str, datetime] = {}
        for key, value in (("from", o.starts), ("until", o.until)):
            if value is None:
                continue
            try:
                times[key] = parse_when(value, tz)
            except ValueError as exc:
                problems.append((f"{where}.{key}", str(exc)))
        if "until" not in times:
            continue
        override = Override(id=f"config:overrides[{i}]", user=o.user, covers=o.covers, roster=o.roster,
                            starts=times.get("from", ALWAYS), ends=times["until"],
                            source="config", notes=o.notes, tz=tz)
        bad = check_override(plan, override, None, where, explicit_start="from" in times)
        problems += bad
        if bad:
            continue
        if override.ends <= now:
            # a warning, not a problem: an override that ran out must not stop a restart at 3 a.m.;
            # `annunciator check` still refuses it so the file gets cleaned up
            config.warnings.append((f"{where}.until", f"this override expired at "
                                                      f"{format_local(override.ends, override.tz)}; remove it"))
            continue
        plan.overrides.append(override)
    config.oncall = plan
    return problems


def _build_roster(name: str, raw: list[str] | RosterSettings) -> tuple[Roster | None, Problems]:
    if isinstance(raw, list):
        return Roster(name, list(raw)), []
    where = join_path("rosters", name)
    problems: Problems = []
    roster = Roster(name, list(raw.users), raw.order, raw.ack_wait, description=raw.description)
    if raw.ack_wait is not None and raw.order != SEQUENTIAL:
        problems.append((f"{where}.ack_wait", "ack_wait applies only to order: sequential (a parallel roster "
                                              "notifies everyone at once)"))
    if raw.expression is not None:
        if raw.users or raw.rotation is not None:
            problems.append((f"{where}.expression", "a calculated roster names its users in the expression; "
                                                    "remove users and rotation"))
        try:
            roster.expression = compile_expression(raw.expression)
        except ExpressionError as exc:
            problems.append((f"{where}.expression", str(exc)))
    elif raw.rotation is not None:
        try:
            rs = RotationSettings.model_validate(raw.rotation)
        except ValidationError as exc:
            problems += pydantic_problems(exc, f"{where}.rotation")
        else:
            if not raw.users:
                problems.append((f"{where}.rotation", "a rotation needs members: list them under users"))
            period, every = parse_every(rs.every)
            epoch = datetime.combine(rs.start, time()) + timedelta(minutes=parse_time(rs.handoff))
            roster.rotation = Rotation(epoch, period, every, zone(rs.timezone), rs.shift)
    elif not raw.users:
        problems.append((f"{where}.users", "a roster needs users, a rotation of users, or an expression"))
    return roster, problems


def check_override(plan: OnCallPlan, o: Override, now: datetime | None, where: str = "",
                   explicit_start: bool = True) -> Problems:
    """What is wrong with an override, as (key path, message); empty when it can be used.
    ``now``: refuse one that has already ended (None: leave that to the caller)."""
    problems: Problems = []

    def at(key: str) -> str:
        return join_path(where, key)

    if o.user not in plan.users:
        problems.append((at("user"), f"unknown user {o.user!r}; known users: {installed(plan.users)}"))
    if o.roster is not None and o.roster not in plan.rosters:
        problems.append((at("roster"), f"unknown roster {o.roster!r}; defined: {installed(plan.rosters)}"))
    if o.covers is not None:
        if o.covers not in plan.users:
            problems.append((at("covers"), f"unknown user {o.covers!r}; known users: {installed(plan.users)}"))
        elif o.covers == o.user:
            problems.append((at("covers"), f"{o.user} cannot cover for themselves"))
        elif o.roster in plan.rosters and o.covers not in plan.rosters[o.roster].users \
                and plan.rosters[o.roster].expression is None:
            problems.append((at("covers"), f"{o.covers} is not in roster {o.roster}"))
        elif o.roster is None and not rosters_of(plan, o.covers):
            problems.append((at("covers"), f"{o.covers} is in no roster; nothing to cover"))
    elif o.roster is None:
        problems.append((where or "covers", "give covers (whom the user replaces) or roster (to add the user to)"))
    if explicit_start and o.ends <= o.starts:
        problems.append((at("until"), f"ends ({format_local(o.ends, o.tz)}) before it starts "
                                      f"({format_local(o.starts, o.tz)})"))
    elif now is not None and o.ends <= now:
        problems.append((at("until"), f"this override expired at {format_local(o.ends, o.tz)}; remove it"))
    return problems


def rosters_of(plan: OnCallPlan, username: str) -> list[str]:
    return [name for name, r in plan.rosters.items() if username in r.users]


# --- resolving -------------------------------------------------------------------------------

@dataclass
class _Slot:
    user: str
    override: Override | None = None


class OnCall:
    """Resolves rosters for an instant: the config's plan plus overrides added at runtime."""

    def __init__(self, config: Config, store: Store | None = None):
        self.config = config
        self.store = store
        if config.oncall is None:  # a Config built without load_config
            problems = check_oncall(config)
            if problems:
                raise ValueError("; ".join(f"{p}: {m}" for p, m in problems))
        self.plan: OnCallPlan = config.oncall
        self.runtime: dict[str, Override] = {}

    def roster_settings(self, roster: str) -> Roster | None:
        """The configured roster (its order and ack wait), None when there is no such roster."""
        return self.plan.rosters.get(roster)

    # --- overrides ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the stored overrides that have not ended (at gateway start)."""
        assert self.store is not None
        t = schema.oncall_overrides
        now = utcnow()

        def read(conn: sa.Connection) -> list[dict[str, Any]]:
            q = sa.select(t).where(t.c.deleted.is_(False), t.c.ends > now).order_by(t.c.created)
            return [dict(r._mapping) for r in conn.execute(q)]

        for row in await self.store.read(read):
            o = Override.from_row(row)
            o.tz = self._zone_of(o.roster)
            self.runtime[o.id] = o

    def add_override(self, user: str, until: datetime, *, covers: str | None = None, roster: str | None = None,
                     starts: datetime | None = None, notes: str = "", created_by: str | None = None,
                     now: datetime | None = None) -> Override:
        """Add an override (effective at once) and queue it for storage; ``Invalid`` (with
        ``.path``) when it cannot be used. Times must be aware."""
        now = now or utcnow()
        o = Override(id=new_id(), user=user, covers=covers, roster=roster, starts=starts or now, ends=until,
                     notes=notes, created=now, created_by=created_by, tz=self._zone_of(roster))
        problems = check_override(self.plan, o, now, explicit_start=starts is not None)
        if problems:
            raise OverrideInvalid(problems)
        self.runtime[o.id] = o
        if self.store is not None:
            self.store.insert(schema.oncall_overrides, o.row())
        return o

    def remove_override(self, override_id: str) -> Override:
        """Remove a runtime override (kept in the database, marked deleted). A unique prefix of
        the id (as shown in the why lines) is enough."""
        o = self.runtime.get(override_id)
        if o is None and len(override_id) >= 6:
            matches = [x for x in self.runtime.values() if x.id.startswith(override_id)]
            if len(matches) > 1:
                raise Invalid(f"override id {override_id!r} is ambiguous: give more of it")
            o = matches[0] if matches else None
        if o is None or o.deleted:
            if any(c.id == override_id for c in self.plan.overrides):
                raise Invalid(f"override {override_id} is in the config file: remove it there")
            raise NotFound(f"no override {override_id!r}")
        o.deleted = True
        del self.runtime[o.id]
        if self.store is not None:
            self.store.update(schema.oncall_overrides, o.id, {"deleted": True})
        return o

    def overrides(self, now: datetime | None = None) -> list[Override]:
        """Config and runtime overrides that have not ended, soonest first."""
        now = now or utcnow()
        items = [o for o in [*self.plan.overrides, *self.runtime.values()] if o.ends > now and not o.deleted]
        return sorted(items, key=lambda o: (o.starts, o.ends, o.id))

    def _zone_of(self, roster: str | None) -> Any:
        r = self.plan.rosters.get(roster) if roster else None
        return r.rotation.tz if r is not None and r.rotation is not None else UTC

    # --- resolution ---------------------------------------------------------------------------

    def rosters_of(self, username: str) -> list[str]:
        """Rosters listing ``username`` as a member (calculated rosters are not counted)."""
        return rosters_of(self.plan, username)

    def who(self, at: datetime) -> list[Resolution]:
        """Every roster at ``at``, in config order."""
        return [self.resolve(name, at) for name in self.plan.rosters]

    def resolve(self, roster: str, at: datetime, values: Mapping[str, Any] | None = None) -> Resolution:
        """Who is on call in ``roster`` at ``at``. ``values`` are the alarm's template values, for
        calculated rosters; None when asked without an alarm (CLI, API)."""
        r = self.plan.rosters.get(roster)
        if r is None:
            raise NotFound(f"no roster {roster!r}; defined: {installed(self.plan.rosters)}")
        if at.tzinfo is None:
            raise ValueError("resolve() needs an aware datetime")
        at = at.astimezone(UTC)
        why: list[str] = []
        rotation_k: int | None = None

        # 1. candidates, in order
        if r.expression is not None:
            names = self._calculated(r, values, why)
        elif r.rotation is not None:
            rotation_k = r.rotation.index(at)
            turn = rotation_k % len(r.users) if r.users else 0
            names = r.users[turn:] + r.users[:turn]
        else:
            names = list(r.users)
        slots = [_Slot(u) for u in names]

        # 2. overrides: the latest created wins when two cover the same person
        active = [o for o in [*self.plan.overrides, *self.runtime.values()] if o.active(at)]
        active.sort(key=lambda o: o.created or ALWAYS)
        for slot in slots:
            for o in active:
                if o.covers == slot.user and o.roster in (None, roster):
                    slot.user, slot.override = o.user, o
        added = [_Slot(o.user, o) for o in active if o.covers is None and o.roster == roster]

        # 3. schedules, 4. selection
        on_call: list[str] = []
        backups: list[str] = []
        off_schedule = 0
        limit = r.rotation.shift if r.rotation is not None else None
        for slot in slots:
            if slot.user in on_call or slot.user in backups:
                continue
            schedule = self.plan.user_schedules.get(slot.user)
            on, because = schedule.check(at) if schedule is not None else (True, "no schedule: always on")
            if slot.override is None and not on:
                off_schedule += 1
                why.append(f"{slot.user}: off schedule ({because})")
                continue
            if slot.override is not None:
                # the override beats the schedule, not the rota: it takes the covered person's turn
                line = self._override_line(slot.override, on, because)
                if limit is None or len(on_call) < limit:
                    on_call.append(slot.user)
                elif r.order == SEQUENTIAL:
                    backups.append(slot.user)
                    line += "; next in the rota"
                else:
                    line += f"; not their turn ({r.rotation.label(rotation_k or 0).split(',')[0]})"  # type: ignore[union-attr]
                why.append(line)
                continue
            if limit is None or len(on_call) < limit:
                on_call.append(slot.user)
                source = f"rotation {r.name!r} {r.rotation.label(rotation_k or 0)}" if r.rotation else (
                    "named by the expression" if r.expression else "member")
                why.append(f"{slot.user}: on call ({source}; schedule {because})"
                           if schedule is not None else f"{slot.user}: on call ({source}; {because})")
            elif r.order == SEQUENTIAL:
                backups.append(slot.user)
                wait = f" after {format_seconds(r.ack_wait)} without an acknowledgement" if r.ack_wait else ""
                why.append(f"{slot.user}: next in the rota{wait}")
            else:
                why.append(f"{slot.user}: off rotation ({r.rotation.label(rotation_k or 0).split(',')[0]})"
                           if r.rotation else f"{slot.user}: not on call")
        for slot in added:
            if slot.user not in on_call and slot.user not in backups:
                schedule = self.plan.user_schedules.get(slot.user)
                on, because = schedule.check(at) if schedule is not None else (True, "")
                why.append(self._override_line(slot.override, on, because))  # type: ignore[arg-type]
                on_call.append(slot.user)
        users = on_call + backups
        if not users and not (r.expression is not None and values is None):
            if off_schedule and off_schedule == len(slots):
                why.append("nobody on call: every member is off schedule")
            elif r.expression is not None:
                why.append("nobody on call: the expression named nobody")
            else:
                why.append("nobody on call: the roster has no members")
        return Resolution(roster, at, users, r.order, r.ack_wait, why)

    def _calculated(self, r: Roster, values: Mapping[str, Any] | None, why: list[str]) -> list[str]:
        assert r.expression is not None
        if values is None:
            why.append(f"calculated from each alarm: {r.expression.source}")
            return []
        try:
            result = r.expression(dict(values))
        except ExpressionError as exc:
            why.append(f"expression failed: {exc}")
            return []
        if result is None or result is False or result == "":
            names: list[str] = []
        elif isinstance(result, str):
            names = [result]
        elif isinstance(result, list | tuple):
            names = [str(x) for x in result]
        else:
            why.append(f"expression gave {result!r}; expected a user name or a list of them")
            return []
        known = [n for n in names if n in self.plan.users]
        for n in names:
            if n not in self.plan.users:
                why.append(f"{n}: named by the expression, but there is no such user")
        return known

    def _override_line(self, o: Override, on: bool, because: str) -> str:
        until = format_local(o.ends, o.tz)
        what = f"covers for {o.covers}" if o.covers else f"added to {o.roster}"
        line = f"{o.user}: {what} until {until} (override {o.short_id()})"
        if not on:
            line += f"; on call although off schedule ({because})"
        return line


class OverrideInvalid(Invalid):
    """An override that cannot be used; ``problems`` are (field, message) pairs."""

    def __init__(self, problems: Problems):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))


def format_seconds(seconds: float) -> str:
    """``5m``, ``1.5h``, ``90s``: a wait as a person would write it."""
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
