"""Schedules: when a person may be notified. Weekly ranges in a named time zone, holiday lists
(dates and iCalendar files), and composites of other schedules.

Everything is evaluated in the wall-clock time of the schedule's zone, so a 22:00-06:00 night
shift is 22:00-06:00 on the clock on the wall whatever the UTC offset: on the night clocks go
forward it lasts 7 real hours, on the night they go back 9.

Rules worth knowing (docs/oncall.md):

* A range whose end is at or before its start runs past midnight and belongs to the day it
  starts: ``fri 22:00-06:00`` is Friday night into Saturday morning.
* A holiday switches off the shifts that *start* on that date (local date in the schedule's
  zone). A night shift that began the evening before still runs until its end, so nobody is
  dropped from a shift halfway through; the shift starting on the holiday evening does not run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator

from .config import StrictModel, installed, join_path, pydantic_problems

Problems = list[tuple[str, str]]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})", re.ASCII)
_RANGE = re.compile(r"\s*(?P<days>.*?)\s+(?P<start>\S+?)\s*-\s*(?P<end>\S+)\s*", re.ASCII | re.DOTALL)
DAY_MINUTES = 24 * 60
WEEK_MINUTES = 7 * DAY_MINUTES


# --- parsing ---------------------------------------------------------------------------------

def parse_time(value: Any, *, end: bool = False) -> int:
    """Minutes after midnight from ``"HH:MM"`` (``"24:00"`` only as an end)."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 22:00 as the base-60 number 1320: say how to write it
        raise ValueError(f'expected a time like "08:00" in quotes, got the number {value} '
                         '(YAML reads an unquoted 22:00 as a number)')
    m = _TIME.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f'expected a time like "08:00" (HH:MM), got {value!r}')
    hours, minutes = int(m.group(1)), int(m.group(2))
    if end and (hours, minutes) == (24, 0):
        return DAY_MINUTES
    if hours > 23 or minutes > 59:
        raise ValueError(f"expected a time from 00:00 to 23:59{' (or 24:00)' if end else ''}, got {value!r}")
    return hours * 60 + minutes


def format_time(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _day(token: str) -> int:
    t = token.strip().lower()
    if t in DAYS:
        return DAYS.index(t)
    if t in _FULL_DAYS:
        return _FULL_DAYS.index(t)
    raise ValueError(f"unknown day {token.strip()!r}; expected one of: {', '.join(DAYS)} (or a range like mon-fri)")


def parse_days(value: Any) -> frozenset[int]:
    """Weekdays (0 = Monday) from ``"mon-fri"``, ``"mon,wed"``, ``"daily"`` or a list of those.
    A range may wrap past Sunday: ``fri-mon``."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f'expected days like "mon-fri" or [mon, wed], got {value!r}')
    days: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected a day name, got {item!r}")
        for part in item.split(","):
            if part.strip().lower() in ("daily", "every day", "all"):
                days.update(range(7))
                continue
            first, sep, last = part.partition("-")
            if not sep:
                days.add(_day(first))
                continue
            a, b = _day(first), _day(last)
            days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def format_days(days: Iterable[int]) -> str:
    """``mon-fri``, ``mon,wed,sat-sun``, ``daily``: runs of three or more as ranges."""
    ds = sorted(set(days))
    if len(ds) == 7:
        return "daily"
    parts: list[str] = []
    i = 0
    while i < len(ds):
        j = i
        while j + 1 < len(ds) and ds[j + 1] == ds[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{DAYS[ds[i]]}-{DAYS[ds[j]]}")
        else:
            parts.extend(DAYS[d] for d in ds[i:j + 1])
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class TimeRange:
    """Days of the week and a wall-clock time range; ``end <= start`` runs into the next day."""

    days: frozenset[int]
    start: int  # minutes after midnight
    end: int    # 1..1440; 1440 is midnight at the end of the day

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError("a range needs at least one day")
        if self.start == self.end:
            raise ValueError(f"zero-length range {self}: start equals end")

    @classmethod
    def make(cls, days: Any, start: Any, end: Any) -> TimeRange:
        """From the written days, start and end; ValueError says what is wrong."""
        return cls.of(parse_days(days), parse_time(start), parse_time(end, end=True))

    @classmethod
    def of(cls, days: frozenset[int], start: int, end: int) -> TimeRange:
        if start == end:  # checked before an end of 00:00 becomes 24:00 below
            raise ValueError(f"zero-length range {format_time(start)}-{format_time(end)}: start equals end "
                             "(for a whole day write 00:00-24:00)")
        return cls(days, start, end or DAY_MINUTES)  # an end of 00:00 is midnight: 24:00

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    def week_intervals(self) -> list[tuple[int, int]]:
        """Half-open intervals in minutes since Monday 00:00, split where they wrap past Sunday."""
        out = []
        for d in sorted(self.days):
            s = d * DAY_MINUTES + self.start
            e = d * DAY_MINUTES + self.end + (DAY_MINUTES if self.overnight else 0)
            if e > WEEK_MINUTES:
                out += [(s, WEEK_MINUTES), (0, e - WEEK_MINUTES)]
            else:
                out.append((s, e))
        return out

    def __str__(self) -> str:
        return f"{format_days(self.days)} {format_time(self.start)}-{format_time(self.end)}"


def parse_range(text: str) -> TimeRange:
    """A range written on one line: ``"mon-fri 22:00-06:00"``, ``"sat,sun 00:00-24:00"``.
    ``parse_range(str(r)) == r`` for every range."""
    m = _RANGE.fullmatch(text) if isinstance(text, str) else None
    if m is None or not m.group("days"):
        raise ValueError(f'expected a range like "mon-fri 08:00-17:00", got {text!r}')
    return TimeRange.make(m.group("days"), m.group("start"), m.group("end"))


def zone(name: Any) -> ZoneInfo:
    """The IANA time zone ``name``, or a ValueError that says it is unknown."""
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}; expected an IANA name like \"Europe/Berlin\"") from None


# --- settings --------------------------------------------------------------------------------

class RangeSettings(StrictModel):
    days: frozenset[int]
    start: int
    end: int

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, v: Any) -> frozenset[int]:
        return parse_days(v)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v: Any) -> int:
        return parse_time(v)

    @field_validator("end", mode="before")
    @classmethod
    def _end(cls, v: Any) -> int:
        return parse_time(v, end=True)


class WeeklySettings(StrictModel):
    """``{timezone, ranges, holidays}``; a range is ``{days, start, end}`` or ``"mon-fri 08:00-17:00"``."""

    timezone: str
    ranges: list[Any] = Field(min_length=1)  # each checked on its own: see build_schedules
    holidays: list[str] = []
    description: str = ""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v


class CompositeSettings(StrictModel):
    """``any_of`` (on when any is on) or ``all_of`` (on when all are on), minus ``except``.
    ``except`` alone means: always on, except when one of these is on."""

    any_of: list[str] | None = Field(None, min_length=1)
    all_of: list[str] | None = Field(None, min_length=1)
    except_: list[str] | None = Field(None, alias="except")
    description: str = ""

    @field_validator("except_", mode="before")
    @classmethod
    def _one(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class HolidaySettings(StrictModel):
    """Dates (``"2026-12-24"``) and/or an iCalendar file (path relative to the config file)."""

    dates: list[date] = []
    ical: str | None = None
    description: str = ""


# --- runtime ---------------------------------------------------------------------------------

@dataclass
class HolidayList:
    name: str
    dates: frozenset[date]


class Schedule(Protocol):
    name: str

    def check(self, at: datetime) -> tuple[bool, str]:
        """(on?, why) at the aware instant ``at``."""
        ...


@dataclass
class WeeklySchedule:
    name: str
    tz: ZoneInfo
    ranges: list[TimeRange]
    holidays: list[HolidayList] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.name}: {', '.join(map(str, self.ranges))} {self.tz.key}"
        if self.holidays:
            text += f", not on holidays ({', '.join(h.name for h in self.holidays)})"
        return text

    def _holiday(self, day: date) -> str | None:
        for h in self.holidays:
            if day in h.dates:
                return h.name
        return None

    def check(self, at: datetime) -> tuple[bool, str]:
        local = at.astimezone(self.tz)  # wall-clock time in the schedule's zone
        today, minute = local.date(), local.hour * 60 + local.minute
        yesterday = today - timedelta(days=1)
        skipped: str | None = None
        for r in self.ranges:
            starts: date | None = None
            if today.weekday() in r.days and r.start <= minute < (DAY_MINUTES if r.overnight else r.end):
                starts = today
            elif r.overnight and minute < r.end and yesterday.weekday() in r.days:
                starts = yesterday  # the part after midnight of a shift that started yesterday
            if starts is None:
                continue
            holiday = self._holiday(starts)
            if holiday is None:
                return True, f"{self.name}: {r} {self.tz.key}"
            skipped = f"{self.name}: {starts.isoformat()} is a holiday ({holiday})"
        return False, skipped or self.describe()


@dataclass
class CompositeSchedule:
    name: str
    any_of: list[Schedule] | None
    all_of: list[Schedule] | None
    except_: list[Schedule]

    def describe(self) -> str:
        parts = []
        if self.any_of:
            parts.append("any of " + ", ".join(s.name for s in self.any_of))
        if self.all_of:
            parts.append("all of " + ", ".join(s.name for s in self.all_of))
        if self.except_:
            parts.append(("always " if not parts else "") + "except " + ", ".join(s.name for s in self.except_))
        return f"{self.name}: {' '.join(parts)}"

    def check(self, at: datetime) -> tuple[bool, str]:
        if self.any_of is not None:
            on = [s for s in self.any_of if s.check(at)[0]]
            if not on:
                return False, f"{self.describe()}; none is on"
            because = f"{self.name} via {on[0].name}"
        elif self.all_of is not None:
            off = [s for s in self.all_of if not s.check(at)[0]]
            if off:
                return False, f"{self.describe()}; {off[0].name} is off"
            because = f"{self.name}: all of {', '.join(s.name for s in self.all_of)}"
        else:
            because = f"{self.name}: always"
        for s in self.except_:
            if s.check(at)[0]:
                return False, f"{self.describe()}; {s.name} is on"
        return True, because


# --- iCalendar -------------------------------------------------------------------------------

def ical_dates(data: bytes, horizon: date | None = None, since: date | None = None) -> set[date]:
    """Dates covered by the VEVENTs of an iCalendar file, from ``since`` (default: two years ago)
    to ``horizon`` (default: the end of the year five years from now).

    Recurrences are expanded by ``recurring-ical-events`` (RRULE, RDATE, EXDATE, and occurrences
    moved with RECURRENCE-ID, which land on their new date). All-day events cover DTSTART up to
    the day before DTEND (DTEND is exclusive); timed events the local dates they touch.
    Raises ValueError for a file that is not iCalendar.
    """
    import recurring_ical_events
    from icalendar import Calendar

    horizon = horizon or date(date.today().year + 5, 12, 31)
    since = since or date(date.today().year - 2, 1, 1)
    try:
        cal = Calendar.from_ical(data)
    except Exception as exc:  # icalendar raises ValueError, but also KeyError/IndexError on junk
        raise ValueError(f"not an iCalendar file: {exc}") from None
    if getattr(cal, "name", None) != "VCALENDAR":
        raise ValueError("not an iCalendar file: no VCALENDAR")
    for ev in cal.walk("VEVENT"):
        if ev.get("DTSTART") is None:
            raise ValueError(f"event {str(ev.get('SUMMARY', '?'))!r} has no DTSTART")
    try:
        occurrences = recurring_ical_events.of(cal).between(since, horizon + timedelta(days=1))
    except Exception as exc:  # a rule the library cannot expand is the file's problem, said so
        raise ValueError(f"cannot expand the calendar's recurrences: {exc}") from None
    out: set[date] = set()
    for ev in occurrences:
        start = ev.decoded("DTSTART")
        all_day = not isinstance(start, datetime)
        end = ev.decoded("DTEND") if ev.get("DTEND") is not None else None
        if all_day:
            last = (end - timedelta(days=1)) if isinstance(end, date) and end > start else start
        else:
            # the local (wall) dates it touches; an end at midnight does not touch the next day
            end_dt = end if isinstance(end, datetime) else start
            last = (end_dt - timedelta(microseconds=1)).date() if end_dt > start else start.date()
            start = start.date()
        day = start
        while day <= last:
            out.add(day)
            day += timedelta(days=1)
    return out


# --- building --------------------------------------------------------------------------------

def build_holidays(raw: Mapping[str, Any], base_dir: Path) -> tuple[dict[str, HolidayList], Problems]:
    """Holiday lists from the ``holidays:`` section; a plain list of dates is accepted too."""
    out: dict[str, HolidayList] = {}
    problems: Problems = []
    for name, body in raw.items():
        where = join_path("holidays", name)
        try:
            s = HolidaySettings.model_validate({"dates": body} if isinstance(body, list) else body)
        except ValidationError as exc:
            problems += pydantic_problems(exc, where)
            continue
        dates = set(s.dates)
        if s.ical:
            path = Path(s.ical).expanduser()
            path = path if path.is_absolute() else base_dir / path
            try:
                dates |= ical_dates(path.read_bytes())
            except OSError as exc:
                problems.append((f"{where}.ical", f"cannot read {path}: {exc.strerror}"))
            except ValueError as exc:
                problems.append((f"{where}.ical", f"{path}: {exc}"))
        out[str(name)] = HolidayList(str(name), frozenset(dates))
    return out, problems


def build_schedules(raw: Mapping[str, Any], holidays: Mapping[str, HolidayList]
                    ) -> tuple[dict[str, Schedule], Problems]:
    """Schedules from the ``schedules:`` section, every problem named by its key path."""
    problems: Problems = []
    weekly: dict[str, WeeklySchedule] = {}
    composite: dict[str, CompositeSettings] = {}
    for name, body in raw.items():
        name = str(name)
        where = join_path("schedules", name)
        if not isinstance(body, dict):
            problems.append((where, "expected a weekly schedule {timezone, ranges} or a composite "
                                    "{any_of | all_of, except}"))
            continue
        if any(k in body for k in ("any_of", "all_of", "except")) and not any(
                k in body for k in ("timezone", "ranges")):
            try:
                c = CompositeSettings.model_validate(body)
            except ValidationError as exc:
                problems += pydantic_problems(exc, where)
                continue
            if c.any_of is not None and c.all_of is not None:
                problems.append((where, "give any_of or all_of, not both"))
                continue
            composite[name] = c
            continue
        try:
            s = WeeklySettings.model_validate(body)
        except ValidationError as exc:
            problems += pydantic_problems(exc, where)
            continue
        ranges: list[TimeRange] = []
        for i, r in enumerate(s.ranges):
            key = f"{where}.ranges[{i}]"
            try:
                if isinstance(r, str):
                    ranges.append(parse_range(r))
                else:
                    rs = RangeSettings.model_validate(r)
                    ranges.append(TimeRange.of(rs.days, rs.start, rs.end))
            except ValidationError as exc:
                problems += pydantic_problems(exc, key)
            except ValueError as exc:
                problems.append((key, str(exc)))
        problems += _overlaps(where, ranges)
        lists = []
        for i, h in enumerate(s.holidays):
            if h in holidays:
                lists.append(holidays[h])
            else:
                problems.append((f"{where}.holidays[{i}]", f"unknown holiday list {h!r}; defined: "
                                                           f"{installed(holidays)}"))
        weekly[name] = WeeklySchedule(name, zone(s.timezone), ranges, lists)

    built: dict[str, Schedule] = dict(weekly)
    visiting: list[str] = []

    def resolve(name: str) -> Schedule | None:
        if name in built:
            return built[name]
        if name not in composite:
            return None
        if name in visiting:
            raise _Cycle([*visiting[visiting.index(name):], name])
        visiting.append(name)
        c = composite[name]
        where = join_path("schedules", name)
        parts: dict[str, list[Schedule]] = {}
        for key, names in (("any_of", c.any_of), ("all_of", c.all_of), ("except", c.except_)):
            for i, ref in enumerate(names or []):
                s = resolve(ref)
                if s is None:
                    known = installed(list(weekly) + list(composite))
                    problems.append((f"{where}.{key}[{i}]", f"unknown schedule {ref!r}; defined: {known}"))
                else:
                    parts.setdefault(key, []).append(s)
        visiting.pop()
        built[name] = CompositeSchedule(name, parts.get("any_of", []) if c.any_of is not None else None,
                                        parts.get("all_of", []) if c.all_of is not None else None,
                                        parts.get("except", []))
        return built[name]

    for name in composite:
        try:
            resolve(name)
        except _Cycle as cycle:
            problems.append((join_path("schedules", name), f"schedules refer to each other in a loop: "
                                                           f"{' -> '.join(cycle.names)}"))
            visiting.clear()
    return built, problems


class _Cycle(Exception):
    def __init__(self, names: list[str]):
        self.names = names


def _overlaps(where: str, ranges: list[TimeRange]) -> Problems:
    problems: Problems = []
    for i, a in enumerate(ranges):
        for j in range(i):
            b = ranges[j]
            if any(s1 < e2 and s2 < e1 for s1, e1 in a.week_intervals() for s2, e2 in b.week_intervals()):
                problems.append((f"{where}.ranges[{i}]", f"{a} overlaps ranges[{j}] ({b})"))
    return problems
