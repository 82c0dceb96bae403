"""Schedules: weekly ranges in wall-clock time (DST), holidays (dates and iCalendar), composites,
and what `load_config` refuses."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from annunciator.core.errors import ConfigError
from annunciator.core.loader import load_config
from annunciator.core.plugins import default_manager
from annunciator.core.schedules import TimeRange, ical_dates, parse_range, parse_time

PM = default_manager({})


def config(tmp_path: Path | None = None, **sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "users": {"maria": {}, "li": {}},
        "rosters": {"operators": ["maria", "li"]},
    }
    base.update(sections)
    return base


def load(data: dict[str, Any], tmp_path: Path | None = None):
    if tmp_path is not None:  # relative paths (iCal files) resolve against the config's folder
        import yaml

        path = tmp_path / "annunciator.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_config(path, PM.block_types(), PM.profile_types(), env={})
    return load_config(data, PM.block_types(), PM.profile_types(), env={})


def problems(data: dict[str, Any], tmp_path: Path | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(data, tmp_path)
    return info.value.problems


def schedule(data: dict[str, Any], name: str, tmp_path: Path | None = None):
    return load(data, tmp_path).oncall.schedules[name]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def on(s: Any, text: str) -> bool:
    return s.check(utc(text))[0]


def minutes_on(s: Any, start: str, end: str) -> int:
    t, stop, n = utc(start), utc(end), 0
    while t < stop:
        n += s.check(t)[0]
        t += timedelta(minutes=1)
    return n


NIGHTS = {"timezone": "Europe/Berlin", "ranges": [{"days": "daily", "start": "22:00", "end": "06:00"}]}


# --- DST -------------------------------------------------------------------------------------

def test_night_shift_across_the_march_change_is_seven_real_hours():
    s = schedule(config(schedules={"night": NIGHTS}), "night")
    # Sat 2026-03-28 22:00 CET is 21:00Z; Sun 06:00 CEST is 04:00Z
    assert not on(s, "2026-03-28T20:59:59")
    assert on(s, "2026-03-28T21:00:00")
    assert on(s, "2026-03-29T00:59:59")   # 01:59:59 CET, just before the clocks jump
    assert on(s, "2026-03-29T01:00:00")   # 03:00 CEST
    assert on(s, "2026-03-29T03:59:59")
    assert not on(s, "2026-03-29T04:00:00")
    assert minutes_on(s, "2026-03-28T18:00", "2026-03-29T08:00") == 7 * 60


def test_night_shift_across_the_october_change_is_nine_real_hours():
    s = schedule(config(schedules={"night": NIGHTS}), "night")
    # Sat 2026-10-24 22:00 CEST is 20:00Z; Sun 06:00 CET is 05:00Z
    assert not on(s, "2026-10-24T19:59:59")
    assert on(s, "2026-10-24T20:00:00")
    assert on(s, "2026-10-25T00:30:00")   # 02:30 CEST, the first time round
    assert on(s, "2026-10-25T01:30:00")   # 02:30 CET, the second
    assert on(s, "2026-10-25T04:59:59")
    assert not on(s, "2026-10-25T05:00:00")
    assert minutes_on(s, "2026-10-24T18:00", "2026-10-25T08:00") == 9 * 60


def test_weekday_nights_do_not_run_on_saturday_night():
    s = schedule(config(schedules={"night": {"timezone": "Europe/Berlin", "ranges": ["mon-fri 22:00-06:00"]}}),
                 "night")
    assert on(s, "2026-03-27T21:00:00")       # Friday 22:00 CET
    assert on(s, "2026-03-28T04:59:00")       # Saturday 05:59: Friday's shift, it started on a Friday
    assert not on(s, "2026-03-28T05:00:00")   # Saturday 06:00
    assert not on(s, "2026-03-28T21:00:00")   # Saturday 22:00
    assert not on(s, "2026-03-29T01:00:00")   # Sunday 03:00 CEST
    assert not on(s, "2026-03-29T22:30:00")   # Monday 00:30 CEST: Sunday's shift, and Sunday is not listed
    assert on(s, "2026-03-30T20:00:00")       # Monday 22:00 CEST
    assert s.check(utc("2026-03-28T21:00:00"))[1] == "night: mon-fri 22:00-06:00 Europe/Berlin"


def test_day_ranges_list_and_string_forms_agree():
    a = schedule(config(schedules={"d": {"timezone": "America/New_York", "ranges": [
        {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "17:00"}]}}), "d")
    b = schedule(config(schedules={"d": {"timezone": "America/New_York", "ranges": ["mon-fri 08:00-17:00"]}}), "d")
    for t in ("2026-11-23T12:59:59", "2026-11-23T13:00:00", "2026-11-23T21:59:59", "2026-11-23T22:00:00",
              "2026-11-28T15:00:00"):
        assert on(a, t) == on(b, t)
    assert [on(a, t) for t in ("2026-11-23T12:59:59", "2026-11-23T13:00:00", "2026-11-23T21:59:59",
                               "2026-11-23T22:00:00", "2026-11-28T15:00:00")] == [False, True, True, False, False]


def test_an_end_of_24_00_or_00_00_is_midnight():
    s = schedule(config(schedules={"late": {"timezone": "UTC", "ranges": ["mon 18:00-00:00", "tue 00:00-24:00"]}}),
                 "late")
    assert on(s, "2026-11-23T23:59:59") and on(s, "2026-11-24T00:00:00") and on(s, "2026-11-24T23:59:59")
    assert not on(s, "2026-11-25T00:00:00")


# --- holidays --------------------------------------------------------------------------------

HOLIDAY_NIGHTS = {"timezone": "Europe/Berlin", "ranges": ["daily 22:00-06:00"], "holidays": ["plant"]}


def test_a_holiday_stops_the_shifts_starting_that_day_but_not_the_night_before():
    s = schedule(config(schedules={"night": HOLIDAY_NIGHTS}, holidays={"plant": {"dates": ["2026-12-24"]}}),
                 "night")
    assert on(s, "2026-12-23T21:00:00")        # 23 Dec 22:00 CET: the shift before the holiday
    assert on(s, "2026-12-24T04:59:00")        # ...still runs into the holiday morning
    assert not on(s, "2026-12-24T21:00:00")    # 24 Dec 22:00: the holiday's own shift
    assert not on(s, "2026-12-25T04:00:00")    # its morning half, belonging to the 24th
    assert on(s, "2026-12-25T21:00:00")        # 25 Dec 22:00: not a holiday here
    assert s.check(utc("2026-12-24T21:00:00")) == (False, "night: 2026-12-24 is a holiday (plant)")


def test_holidays_are_local_dates_in_the_schedule_zone():
    # 2026-12-24T23:30Z is already the 25th in Tokyo
    s = schedule(config(schedules={"day": {"timezone": "Asia/Tokyo", "ranges": ["daily 00:00-24:00"],
                                           "holidays": ["h"]}},
                        holidays={"h": ["2026-12-25"]}), "day")
    assert on(s, "2026-12-24T14:59:59")
    assert not on(s, "2026-12-24T15:00:00")
    assert on(s, "2026-12-25T15:00:00")


ICS = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//annunciator//EN
BEGIN:VEVENT
UID:xmas@test
DTSTART;VALUE=DATE:20261224
DTEND;VALUE=DATE:20261226
SUMMARY:Christmas
END:VEVENT
BEGIN:VEVENT
UID:newyear@test
DTSTART;VALUE=DATE:20200101
RRULE:FREQ=YEARLY
SUMMARY:New Year
END:VEVENT
BEGIN:VEVENT
UID:labour@test
DTSTART;VALUE=DATE:20250501
RRULE:FREQ=YEARLY;UNTIL=20260501T000000Z
SUMMARY:Labour day, until 2026
END:VEVENT
BEGIN:VEVENT
UID:shutdown@test
DTSTART;TZID=Europe/Berlin:20260715T080000
DTEND;TZID=Europe/Berlin:20260716T120000
SUMMARY:Plant shutdown
END:VEVENT
END:VCALENDAR
"""


def test_ical_all_day_recurring_and_timed_events_become_holidays(tmp_path):
    (tmp_path / "holidays").mkdir()
    (tmp_path / "holidays" / "plant.ics").write_text(ICS, encoding="utf-8")
    data = config(schedules={"day": {"timezone": "Europe/Berlin", "ranges": ["daily 08:00-17:00"],
                                     "holidays": ["plant"]}},
                  holidays={"plant": {"dates": ["2026-11-30"], "ical": "holidays/plant.ics"}})
    s = schedule(data, "day", tmp_path)
    noon = "T11:00:00"  # 12:00 CET
    for day in ("2026-12-24", "2026-12-25", "2026-01-01", "2027-01-01", "2026-11-30", "2026-05-01"):
        assert not on(s, day + noon), day
    for day in ("2026-12-23", "2026-12-26", "2027-01-02", "2027-05-03"):
        assert on(s, day + noon), day
    assert not on(s, "2026-07-15T10:00:00") and not on(s, "2026-07-16T10:00:00")
    assert on(s, "2026-07-17T10:00:00")


def test_ical_dates_expand_yearly_rules_this_year_and_next():
    got = ical_dates(ICS.encode())
    this = date.today().year
    assert {date(this, 1, 1), date(this + 1, 1, 1)} <= got
    assert date(2027, 5, 1) not in got  # its rule ended in 2026


def test_unreadable_or_invalid_ical_is_a_config_problem(tmp_path):
    (tmp_path / "bad.ics").write_text("this is not a calendar\n", encoding="utf-8")
    data = config(holidays={"missing": {"ical": "nope.ics"}, "bad": {"ical": "bad.ics"}})
    found = dict(problems(data, tmp_path))
    assert "cannot read" in found["holidays.missing.ical"] and "nope.ics" in found["holidays.missing.ical"]
    assert "not an iCalendar file" in found["holidays.bad.ical"]


# --- composites ------------------------------------------------------------------------------

COMPOSITES = {
    "nights": {"timezone": "Europe/Berlin", "ranges": ["mon-fri 22:00-06:00"]},
    "weekend": {"timezone": "Europe/Berlin", "ranges": ["sat-sun 00:00-24:00"]},
    "office": {"timezone": "Europe/Berlin", "ranges": ["mon-fri 08:00-17:00"]},
    "mornings": {"timezone": "Europe/Berlin", "ranges": ["daily 06:00-12:00"]},
    "cover": {"any_of": ["nights", "weekend"]},
    "office-mornings": {"all_of": ["office", "mornings"]},
    "weekend-nights": {"any_of": ["cover"], "except": "nights"},
    "outside-office": {"except": ["office"]},
}


def test_composites_union_intersection_and_except():
    plan = load(config(schedules=COMPOSITES)).oncall
    tue_noon, tue_9, tue_23, sat_noon = ("2026-11-24T11:00:00", "2026-11-24T08:00:00", "2026-11-24T22:00:00",
                                         "2026-11-28T11:00:00")
    expect = {
        "cover": [False, False, True, True],
        "office-mornings": [False, True, False, False],
        "weekend-nights": [False, False, False, True],
        "outside-office": [False, False, True, True],
    }
    for name, want in expect.items():
        s = plan.schedules[name]
        assert [on(s, t) for t in (tue_noon, tue_9, tue_23, sat_noon)] == want, name
    assert plan.schedules["cover"].check(utc(sat_noon))[1] == "cover via weekend"


def test_composite_problems_name_the_key():
    found = problems(config(schedules={
        "a": {"any_of": ["b"]}, "b": {"any_of": ["a"]},
        "c": {"all_of": ["nowhere"]},
        "d": {"any_of": ["c"], "all_of": ["c"]},
        "e": {},
    }))
    keys = {p for p, _ in found}
    assert "schedules.c.all_of[0]" in keys
    assert any(p == "schedules.a" and "loop" in m for p, m in found)
    assert ("schedules.d", "give any_of or all_of, not both") in found
    assert any(p.startswith("schedules.e") for p in keys)


# --- config problems -------------------------------------------------------------------------

def test_bad_schedules_are_refused_naming_the_key():
    found = problems(config(
        schedules={
            "overlap": {"timezone": "UTC", "ranges": ["mon-fri 08:00-17:00", "fri 16:00-18:00"]},
            "wrap": {"timezone": "UTC", "ranges": ["sun 22:00-06:00", "mon 05:00-07:00"]},
            "zero": {"timezone": "UTC", "ranges": [{"days": "mon", "start": "08:00", "end": "08:00"}]},
            "days": {"timezone": "UTC", "ranges": [{"days": ["mon", "funday"], "start": "08:00", "end": "09:00"}]},
            "time": {"timezone": "UTC", "ranges": [{"days": "mon", "start": "8am", "end": "09:00"}]},
            "late": {"timezone": "UTC", "ranges": [{"days": "mon", "start": "08:00", "end": "25:00"}]},
            "yaml": {"timezone": "UTC", "ranges": [{"days": "mon", "start": 1320, "end": "23:00"}]},
            "zone": {"timezone": "Mars/Olympus", "ranges": ["mon 08:00-09:00"]},
            "hol": {"timezone": "UTC", "ranges": ["mon 08:00-09:00"], "holidays": ["xmas"]},
        },
        users={"maria": {"schedule": "nowhere"}, "li": {}},
    ))
    found_d = dict(found)
    assert "overlaps ranges[0]" in found_d["schedules.overlap.ranges[1]"]
    assert "overlaps ranges[0]" in found_d["schedules.wrap.ranges[1]"]  # Sunday night runs into Monday
    assert "zero-length" in found_d["schedules.zero.ranges[0]"]
    assert "unknown day 'funday'" in found_d["schedules.days.ranges[0].days"]
    assert "HH:MM" in found_d["schedules.time.ranges[0].start"]
    assert "00:00 to 23:59" in found_d["schedules.late.ranges[0].end"]
    assert "quotes" in found_d["schedules.yaml.ranges[0].start"]
    assert "unknown time zone 'Mars/Olympus'" in found_d["schedules.zone.timezone"]
    assert "unknown holiday list 'xmas'" in found_d["schedules.hol.holidays[0]"]
    assert "unknown schedule 'nowhere'" in found_d["users.maria.schedule"]


def test_check_command_names_line_and_key_of_a_bad_schedule(tmp_path):
    from click.testing import CliRunner

    from annunciator.cli import main

    path = tmp_path / "a.yaml"
    path.write_text("users:\n  maria: {}\nschedules:\n  night:\n    timezone: Europe/Berlin\n"
                    "    ranges:\n      - {days: mon-fri, start: \"22:00\", end: \"22:00\"}\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["check", str(path)])
    assert r.exit_code == 2
    assert f"{path}:7: schedules.night.ranges[0]: zero-length range 22:00-22:00" in r.stderr


# --- the range parser ------------------------------------------------------------------------

@given(st.text(max_size=40))
def test_any_text_is_a_range_or_a_clear_value_error(text):
    try:
        r = parse_range(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert parse_range(str(r)) == r
    assert 0 <= r.start < 1440 and 0 < r.end <= 1440 and r.start != r.end and r.days


_day = st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun", "Monday", "SUN"])


@given(st.lists(st.one_of(_day, st.tuples(_day, _day).map("-".join)), min_size=1, max_size=4).map(",".join),
       st.integers(0, 23), st.integers(0, 59), st.integers(0, 24), st.integers(0, 59), st.sampled_from([" ", "  "]))
def test_written_ranges_round_trip(days, h1, m1, h2, m2, gap):
    text = f"{days}{gap}{h1:02d}:{m1:02d}-{h2}:{m2:02d}"
    try:
        r = parse_range(text)
    except ValueError as exc:
        assert (h2, m2) > (24, 0) or (h1, m1) == (h2, m2) or h2 == 24, exc
        return
    assert r.start == h1 * 60 + m1
    assert r.end == (h2 * 60 + m2 or 1440)
    assert parse_range(str(r)) == r


def test_parse_range_examples():
    r = parse_range("fri-mon 22:00-06:00")
    assert r == TimeRange(frozenset({4, 5, 6, 0}), 22 * 60, 6 * 60) and r.overnight
    assert str(r) == "mon,fri-sun 22:00-06:00"
    assert str(parse_range("Monday,tue,wed 08:00-17:00")) == "mon-wed 08:00-17:00"
    assert parse_time("24:00", end=True) == 1440
    for bad in ("mon 8-9", "mon 08:00", "08:00-09:00", "xyz 08:00-09:00", "mon 24:00-01:00", "mon 08:00-08:00"):
        with pytest.raises(ValueError):
            parse_range(bad)


MOVED = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//annunciator//EN
BEGIN:VEVENT
UID:audit@test
DTSTART;VALUE=DATE:20260105
RRULE:FREQ=MONTHLY;COUNT=6
RDATE;VALUE=DATE:20260320
EXDATE;VALUE=DATE:20260405
SUMMARY:Monthly audit day
END:VEVENT
BEGIN:VEVENT
UID:audit@test
RECURRENCE-ID;VALUE=DATE:20260205
DTSTART;VALUE=DATE:20260209
SUMMARY:Audit day, moved to Monday
END:VEVENT
END:VCALENDAR
"""


def test_ical_rdate_exdate_and_an_occurrence_moved_with_recurrence_id():
    got = {d for d in ical_dates(MOVED.encode(), horizon=date(2026, 12, 31), since=date(2026, 1, 1))}
    assert date(2026, 3, 20) in got  # an RDATE adds a day
    assert date(2026, 4, 5) not in got  # an EXDATE takes one away
    assert date(2026, 2, 9) in got and date(2026, 2, 5) not in got  # moved, not kept at its old date
    assert {date(2026, 1, 5), date(2026, 3, 5), date(2026, 5, 5), date(2026, 6, 5)} <= got
    assert date(2026, 7, 5) not in got  # COUNT=6 ends in June
