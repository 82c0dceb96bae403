"""Rosters: rotations, overrides (config and runtime, through the real HTTP API), calculated
rosters, schedules applied to members, `annunciator oncall` and `annunciator override`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from annunciator.cli import main
from annunciator.core.alarms import AlarmEvent, Priority, utcnow
from annunciator.core.errors import ConfigError, NotFound
from annunciator.core.loader import load_config
from annunciator.core.oncall import OnCall
from annunciator.core.plugins import default_manager
from annunciator.testing.gateway import TOKEN

PM = default_manager({})
NEXT_YEAR = date.today().year + 1  # config overrides must not have expired when the test runs


def load(data: dict[str, Any]):
    return load_config(data, PM.block_types(), PM.profile_types(), env={})


def oncall(**sections: Any) -> OnCall:
    data: dict[str, Any] = {"users": {"maria": {}, "li": {}, "sam": {}}}
    data.update(sections)
    return OnCall(load(data))


def problems(**sections: Any) -> dict[str, str]:
    data: dict[str, Any] = {"users": {"maria": {}, "li": {}, "sam": {}}}
    data.update(sections)
    with pytest.raises(ConfigError) as info:
        load(data)
    return dict(info.value.problems)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def who(oc: OnCall, roster: str, at: str | datetime, values: dict[str, Any] | None = None) -> list[str]:
    return oc.resolve(roster, utc(at) if isinstance(at, str) else at, values).users


WEEKLY = {"users": ["maria", "li", "sam"],
          "rotation": {"every": "weekly", "start": "2026-11-02", "handoff": "08:00", "timezone": "Europe/Berlin"}}


# --- rotations -------------------------------------------------------------------------------

def test_weekly_rotation_hands_off_at_the_configured_minute():
    oc = oncall(rosters={"ops": WEEKLY})
    assert who(oc, "ops", "2026-11-02T06:59:59") == ["sam"]    # before the first hand-off: counted back
    assert who(oc, "ops", "2026-11-02T07:00:00") == ["maria"]  # Mon 08:00 CET
    assert who(oc, "ops", "2026-11-09T06:59:59") == ["maria"]  # Mon 07:59:59
    assert who(oc, "ops", "2026-11-09T07:00:00") == ["li"]     # Mon 08:00
    assert who(oc, "ops", "2026-11-16T07:00:00") == ["sam"]
    assert who(oc, "ops", "2026-11-23T07:00:00") == ["maria"]
    res = oc.resolve("ops", utc("2026-11-09T07:00:00"))
    assert res.why[0] == ("li: on call (rotation 'ops' week 2, hand-off Mon 08:00 Europe/Berlin; "
                          "no schedule: always on)")
    assert res.why[1:] == ["sam: off rotation (week 2)", "maria: off rotation (week 2)"]


def test_daily_hand_off_stays_at_08_00_on_the_clock_across_dst():
    rot = {"users": ["maria", "li"],
           "rotation": {"every": "daily", "start": "2026-03-27", "handoff": "08:00", "timezone": "Europe/Berlin"}}
    oc = oncall(rosters={"ops": rot})
    # Sat 28 March 08:00 CET = 07:00Z; Sun 29 March 08:00 CEST = 06:00Z (clocks went forward at 02:00)
    assert who(oc, "ops", "2026-03-28T06:59:59") == ["maria"]
    assert who(oc, "ops", "2026-03-28T07:00:00") == ["li"]
    assert who(oc, "ops", "2026-03-29T05:59:59") == ["li"]
    assert who(oc, "ops", "2026-03-29T06:00:00") == ["maria"]
    # and back in October: Sun 25 Oct 08:00 CET = 07:00Z
    assert who(oc, "ops", "2026-10-25T06:59:59") == who(oc, "ops", "2026-10-24T06:00:00")
    assert who(oc, "ops", "2026-10-25T07:00:00") != who(oc, "ops", "2026-10-25T06:59:59")


def test_sequential_rotation_escalates_down_the_rota_and_shift_puts_several_on_call():
    seq = {**WEEKLY, "order": "sequential", "ack_wait": "5m"}
    two = {**WEEKLY, "rotation": {**WEEKLY["rotation"], "shift": 2}}
    oc = oncall(rosters={"seq": seq, "two": two})
    res = oc.resolve("seq", utc("2026-11-10T12:00:00"))
    assert (res.users, res.order, res.ack_wait) == (["li", "sam", "maria"], "sequential", 300.0)
    assert res.why[1] == "sam: next in the rota after 5m without an acknowledgement"
    assert who(oc, "two", "2026-11-10T12:00:00") == ["li", "sam"]
    assert who(oc, "two", "2026-11-17T12:00:00") == ["sam", "maria"]


def test_an_off_schedule_member_passes_the_turn_to_the_next_in_the_rota():
    oc = oncall(users={"maria": {"schedule": "days"}, "li": {}, "sam": {}},
                schedules={"days": {"timezone": "Europe/Berlin", "ranges": ["mon-fri 08:00-17:00"]}},
                rosters={"ops": WEEKLY, "all": ["maria", "li"], "maria": ["maria"]})
    # week 1 is maria's; on Saturday she is off schedule
    assert who(oc, "ops", "2026-11-04T10:00:00") == ["maria"]
    res = oc.resolve("ops", utc("2026-11-07T10:00:00"))
    assert res.users == ["li"]
    assert res.why[0] == "maria: off schedule (days: mon-fri 08:00-17:00 Europe/Berlin)"
    assert who(oc, "all", "2026-11-07T10:00:00") == ["li"]
    assert who(oc, "all", "2026-11-04T10:00:00") == ["maria", "li"]
    res = oc.resolve("maria", utc("2026-11-07T10:00:00"))
    assert res.users == [] and res.why[-1] == "nobody on call: every member is off schedule"


# --- overrides in the config -----------------------------------------------------------------

def _override_config(**override: Any) -> dict[str, Any]:
    rot = {"users": ["maria", "li", "sam"],
           "rotation": {"every": "daily", "start": f"{NEXT_YEAR}-01-01", "handoff": "08:00", "timezone": "UTC"}}
    return {"rosters": {"ops": rot, "other": ["li"]},
            "overrides": [{"user": "sam", "covers": "li", "roster": "ops", "from": f"{NEXT_YEAR}-01-02 12:00",
                           "until": f"{NEXT_YEAR}-01-02 18:00", **override}]}


def test_a_config_override_beats_the_rotation_and_ends_on_time():
    oc = oncall(**_override_config())
    day = f"{NEXT_YEAR}-01-02T"
    assert who(oc, "ops", day + "11:59:59") == ["li"]  # day 2 is li's
    assert who(oc, "ops", day + "12:00:00") == ["sam"]
    assert who(oc, "ops", day + "17:59:59") == ["sam"]
    assert who(oc, "ops", day + "18:00:00") == ["li"]
    assert who(oc, "other", day + "13:00:00") == ["li"]  # the override names roster ops only
    res = oc.resolve("ops", utc(day + "13:00:00"))
    assert res.why[0] == f"sam: covers for li until {NEXT_YEAR}-01-02 18:00 UTC (override config:overrides[0])"


def test_an_override_beats_the_covering_users_schedule_and_says_so():
    oc = oncall(users={"maria": {}, "li": {}, "sam": {"schedule": "never-at-noon"}},
                schedules={"never-at-noon": {"timezone": "UTC", "ranges": ["daily 20:00-08:00"]}},
                **_override_config(timezone="Europe/Berlin"))
    at = utc(f"{NEXT_YEAR}-01-02T12:00:00")  # 13:00 Berlin, inside the override
    res = oc.resolve("ops", at)
    assert res.users == ["sam"]
    assert res.why[0] == (f"sam: covers for li until {NEXT_YEAR}-01-02 18:00 CET (override config:overrides[0]); "
                          "on call although off schedule (never-at-noon: daily 20:00-08:00 UTC)")


def test_an_added_override_joins_the_roster():
    oc = oncall(rosters={"ops": ["maria"]},
                overrides=[{"user": "li", "roster": "ops", "until": f"{NEXT_YEAR}-01-01"}])
    assert who(oc, "ops", f"{NEXT_YEAR - 1}-12-31T23:59:59") == ["maria", "li"]
    assert who(oc, "ops", f"{NEXT_YEAR}-01-01T00:00:00") == ["maria"]


def test_bad_rosters_and_overrides_are_refused_naming_the_key():
    found = problems(
        rosters={
            "empty": {"rotation": {"start": "2026-11-02"}},
            "wait": {"users": ["maria"], "ack_wait": "5m"},
            "zone": {"users": ["maria"], "rotation": {"start": "2026-11-02", "timezone": "Berlin/Mars"}},
            "every": {"users": ["maria"], "rotation": {"start": "2026-11-02", "every": "fortnightly"}},
            "calc": {"expression": "['maria' if"},
            "ops": ["maria", "li"],
        },
        overrides=[
            {"user": "sam", "covers": "li", "from": f"{NEXT_YEAR}-01-02 12:00", "until": f"{NEXT_YEAR}-01-02 11:00"},
            {"user": "sam", "covers": "li", "until": "2020-01-01 08:00"},
            {"user": "nobody", "covers": "li", "until": f"{NEXT_YEAR}-01-01"},
            {"user": "sam", "roster": "nowhere", "until": f"{NEXT_YEAR}-01-01"},
            {"user": "sam", "covers": "li", "roster": "wait", "until": f"{NEXT_YEAR}-01-01 08:00"},
            {"user": "sam", "until": f"{NEXT_YEAR}-01-01"},
            {"user": "sam", "covers": "li", "until": "next monday"},
            {"user": "sam", "covers": "maria", "roster": "wait", "until": f"{NEXT_YEAR}-01-01 08:00"},
        ],
    )
    assert found["rosters.empty.rotation"] == "a rotation needs members: list them under users"
    assert "only to order: sequential" in found["rosters.wait.ack_wait"]
    assert "unknown time zone 'Berlin/Mars'" in found["rosters.zone.rotation.timezone"]
    assert "daily, weekly" in found["rosters.every.rotation.every"]
    assert "invalid expression" in found["rosters.calc.expression"]
    assert "before it starts" in found["overrides[0].until"]
    assert "overrides[1].until" not in found  # expired: a warning (see below), not a problem
    assert "unknown user 'nobody'" in found["overrides[2].user"]
    assert "unknown roster 'nowhere'" in found["overrides[3].roster"]
    assert found["overrides[4].covers"] == "li is not in roster wait"
    assert "give covers" in found["overrides[5]"]
    assert "expected a time" in found["overrides[6].until"]
    assert not [k for k in found if k.startswith("overrides[7]")]  # a valid one among them


def test_a_bad_roster_shape_is_reported_once_at_its_key():
    assert problems(rosters={"ops": {"users": ["maria"], "order": "random"}}) == {
        "rosters.ops.order": "input should be 'parallel' or 'sequential', got 'random'"}
    assert problems(rosters={"ops": "maria"}) == {"rosters.ops": "input should be a valid list, got 'maria'"}


def test_plain_rosters_still_work_and_roster_users_lists_members():
    cfg = load({"users": {"maria": {}, "li": {}}, "rosters": {"operators": ["maria", "li"],
                                                              "ops": {"users": ["li"], "order": "sequential"}}})
    assert cfg.roster_users("operators") == ["maria", "li"]
    assert cfg.roster_users("ops") == ["li"]
    oc = OnCall(cfg)
    assert who(oc, "operators", "2026-11-23T12:00:00") == ["maria", "li"]
    assert oc.rosters_of("li") == ["operators", "ops"]
    with pytest.raises(NotFound):
        oc.resolve("nowhere", utcnow())


# --- calculated rosters ----------------------------------------------------------------------

def test_a_calculated_roster_names_users_from_the_alarm():
    oc = oncall(users={"maria": {}, "li": {"schedule": "never"}, "sam": {}},
                schedules={"never": {"timezone": "UTC", "ranges": ["sun 00:00-00:01"]}},
                rosters={"calc": {"expression": "['maria', 'sam'] if priority >= 'High' else "
                                                "(source.startswith('x/') and 'ghost' or 'li')"}})
    at = "2026-11-23T12:00:00"
    assert who(oc, "calc", at, {"priority": Priority.CRITICAL, "source": "a"}) == ["maria", "sam"]
    res = oc.resolve("calc", utc(at), {"priority": Priority.LOW, "source": "a"})
    assert res.users == [] and res.why[0].startswith("li: off schedule")
    res = oc.resolve("calc", utc(at), {"priority": Priority.LOW, "source": "x/1"})
    assert res.why == ["ghost: named by the expression, but there is no such user",
                       "nobody on call: the expression named nobody"]
    res = oc.resolve("calc", utc(at), {"source": "a"})  # no priority: the expression fails, visibly
    assert res.users == [] and res.why[0].startswith("expression failed")
    res = oc.resolve("calc", utc(at))
    assert res.users == [] and res.why[0].startswith("calculated from each alarm:")


# --- the gateway ------------------------------------------------------------------------------

def test_resolve_roster_honours_a_plugin_and_otherwise_asks_oncall(gateway_config, start_gateway):
    from annunciator import hookimpl

    class Pick:
        @hookimpl
        def annunciator_resolve_roster(self, roster, event, at):
            return ["sam", "ghost"] if roster == "supervisors" else None

    gateway_config["users"]["li"]["schedule"] = "nights"
    gateway_config["schedules"] = {"nights": {"timezone": "UTC", "ranges": ["daily 22:00-06:00"]}}
    gateway_config["rosters"]["operators"] = ["maria", "li"]
    gw = start_gateway(gateway_config, plugins=[Pick()]).gateway
    event = AlarmEvent(source="a", name="a", priority=Priority.HIGH)
    res = gw.resolve_roster("supervisors", event, utc("2026-11-23T12:00:00"))
    assert res.users == ["sam"] and res.why[0].startswith("chosen by plugin ")
    assert "ghost: named by plugin" in res.why[1]
    res = gw.resolve_roster("operators", event, utc("2026-11-23T12:00:00"))
    assert res.users == ["maria"] and res.why[1].startswith("li: off schedule")
    assert gw.resolve_roster("operators", event, utc("2026-11-23T23:00:00")).users == ["maria", "li"]


def _runtime_config(gateway_config: dict[str, Any]) -> dict[str, Any]:
    # li holds a long rotation turn from today, so only an override can change who is on call
    gateway_config["rosters"]["ops"] = {
        "users": ["li", "maria"], "order": "sequential", "ack_wait": "2m",
        "rotation": {"every": "1000 days", "start": date.today().isoformat(), "timezone": "UTC"}}
    return gateway_config


def test_a_runtime_override_through_the_api_beats_the_rotation_ends_on_time_and_survives_restart(
        gateway_config, start_gateway):
    config = _runtime_config(gateway_config)
    gw = start_gateway(config)
    api = gw.client
    until = (utcnow() + timedelta(hours=2)).replace(second=0, microsecond=0)

    def on_call(at: datetime) -> dict[str, Any]:
        r = api.get("/api/oncall", params={"at": at.isoformat(), "roster": "ops"})
        assert r.status_code == 200, r.text
        return r.json()["rosters"][0]

    assert on_call(until - timedelta(seconds=1))["users"] == ["li", "maria"]
    r = api.post("/api/overrides", json={"user": "sam", "covers": "li", "roster": "ops",
                                         "until": until.isoformat(), "notes": "li at the dentist",
                                         "createdBy": "maria"})
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    before = on_call(until - timedelta(seconds=1))
    assert before["users"] == ["sam", "maria"]
    assert before["why"][0].startswith(f"sam: covers for li until {until:%Y-%m-%d %H:%M} UTC (override {oid[:8]})")
    assert on_call(until + timedelta(seconds=1))["users"] == ["li", "maria"]
    assert on_call(until)["users"] == ["li", "maria"]
    listed = api.get("/api/overrides").json()["overrides"]
    assert [(o["id"], o["user"], o["covers"], o["createdBy"]) for o in listed] == [(oid, "sam", "li", "maria")]

    gw.stop()  # a new gateway on the same database loads the stored override
    gw = start_gateway(config)
    api = gw.client
    assert on_call(until - timedelta(seconds=1))["users"] == ["sam", "maria"]
    r = api.delete(f"/api/overrides/{oid}")
    assert r.status_code == 200, r.text
    assert on_call(until - timedelta(seconds=1))["users"] == ["li", "maria"]
    assert api.delete(f"/api/overrides/{oid}").status_code == 404
    assert api.get("/api/overrides").json()["overrides"] == []

    gw.stop()  # ...and removed stays removed
    api = start_gateway(config).client
    assert on_call(until - timedelta(seconds=1))["users"] == ["li", "maria"]


def test_bad_overrides_and_times_get_422_with_field_paths(gateway_config, start_gateway):
    api = start_gateway(_runtime_config(gateway_config)).client
    soon = (utcnow() + timedelta(hours=1)).isoformat()

    def fields(body: dict[str, Any]) -> dict[str, str]:
        r = api.post("/api/overrides", json=body)
        assert r.status_code == 422, r.text
        return {f["path"]: f["message"] for f in r.json()["fields"]}

    assert "unknown user 'ghost'" in fields({"user": "ghost", "covers": "li", "until": soon})["user"]
    assert "unknown roster" in fields({"user": "sam", "roster": "nope", "until": soon})["roster"]
    assert "before it starts" in fields({"user": "sam", "covers": "li", "until": soon,
                                         "from": (utcnow() + timedelta(hours=2)).isoformat()})["until"]
    assert "expired" in fields({"user": "sam", "covers": "li", "until": "2020-01-01T00:00:00Z"})["until"]
    assert "expected a time" in fields({"user": "sam", "covers": "li", "until": "monday"})["until"]
    assert "until" in fields({"user": "sam", "covers": "li"})
    assert "bogus" in fields({"user": "sam", "covers": "li", "until": soon, "bogus": 1})
    r = api.get("/api/oncall", params={"at": "yesterday"})
    assert r.status_code == 422 and r.json()["fields"][0]["path"] == "at"
    assert api.get("/api/oncall", params={"roster": "nope"}).status_code == 404
    assert api.delete("/api/overrides/0123456789abcdef").status_code == 404
    assert start_gateway  # the fixture stops the gateway


# --- the CLI ---------------------------------------------------------------------------------

ROTA = {
    "gateway": {"http": {"port": 9}, "api_tokens": ["t"]},
    "users": {"maria": {"schedule": "days"}, "li": {"schedule": "nights"}, "sam": {}},
    "schedules": {"days": {"timezone": "Europe/Berlin", "ranges": ["mon-fri 08:00-17:00"]},
                  "nights": {"timezone": "Europe/Berlin", "ranges": ["mon-fri 22:00-06:00"], "holidays": ["plant"]}},
    "holidays": {"plant": ["2026-12-24"]},
    "rosters": {"operators": ["maria", "li"],
                "ops": {"users": ["maria", "li", "sam"], "order": "sequential", "ack_wait": "5m",
                        "rotation": {"every": "weekly", "start": "2026-11-02", "handoff": "08:00",
                                     "timezone": "Europe/Berlin"}}},
}


def test_oncall_command_works_from_the_config_alone(tmp_path: Path):
    path = tmp_path / "rota.yaml"
    path.write_text(yaml.safe_dump(ROTA), encoding="utf-8")
    r = CliRunner().invoke(main, ["oncall", "2026-12-24 23:00", "--tz", "Europe/Berlin", "-c", str(path)])
    assert r.exit_code == 0, r.output
    assert "overrides added at runtime are not included" in r.stderr
    assert r.stdout.splitlines() == [
        "on call at 2026-12-24 23:00 CET (2026-12-24T22:00:00+00:00):",
        "operators (parallel): nobody",
        "    maria: off schedule (days: mon-fri 08:00-17:00 Europe/Berlin)",
        "    li: off schedule (nights: 2026-12-24 is a holiday (plant))",
        "    nobody on call: every member is off schedule",
        "ops (sequential, 5m each to acknowledge): sam",
        "    li: off schedule (nights: 2026-12-24 is a holiday (plant))",
        "    sam: on call (rotation 'ops' week 8, hand-off Mon 08:00 Europe/Berlin; no schedule: always on)",
        "    maria: off schedule (days: mon-fri 08:00-17:00 Europe/Berlin)",
    ]
    r = CliRunner().invoke(main, ["oncall", "2026-11-24T23:30:00+01:00", "--offline", "--json", "--roster", "ops",
                                  "-c", str(path)])
    assert r.exit_code == 0, r.output
    import json

    data = json.loads(r.stdout)
    assert data["offline"] is True and data["rosters"][0]["users"] == ["li", "sam"]
    r = CliRunner().invoke(main, ["oncall", "someday", "-c", str(path)])
    assert r.exit_code == 2 and "WHEN" in r.stderr


def test_oncall_and_override_commands_talk_to_a_running_gateway(gateway_config, start_gateway, tmp_path):
    gw = start_gateway(_runtime_config(gateway_config))
    cli = CliRunner(env={"ANNUNCIATOR_URL": gw.url, "ANNUNCIATOR_TOKEN": TOKEN})
    until = (utcnow() + timedelta(hours=3)).replace(second=0, microsecond=0)
    r = cli.invoke(main, ["override", "add", "--user", "sam", "--covers", "li", "--roster", "ops",
                          "--until", until.isoformat(), "--notes", "swap", "--by", "lead"])
    assert r.exit_code == 0, r.output
    oid = r.stdout.split()[0]
    assert "sam covers for li in ops from " in r.stdout and "[api, by lead]  swap" in r.stdout
    r = cli.invoke(main, ["oncall", "--roster", "ops", "--tz", "UTC"])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # the gateway answered: runtime overrides are included
    assert r.stdout.splitlines()[1] == "ops (sequential, 2m each to acknowledge): sam, maria"
    assert f"sam: covers for li until {until:%Y-%m-%d %H:%M} UTC (override {oid[:8]})" in r.stdout
    r = cli.invoke(main, ["oncall", (until + timedelta(seconds=1)).isoformat(), "--roster", "ops"])
    assert "ops (sequential, 2m each to acknowledge): li, maria" in r.stdout
    r = cli.invoke(main, ["override", "list", "--tz", "UTC"])
    assert r.exit_code == 0 and r.stdout.startswith(oid)
    r = cli.invoke(main, ["override", "remove", oid[:8]])
    assert r.exit_code == 0 and r.stdout.strip() == f"removed override {oid}"
    assert cli.invoke(main, ["override", "list"]).stdout.strip() == "no overrides"
    r = cli.invoke(main, ["override", "add", "--user", "ghost", "--covers", "li", "--until", until.isoformat()])
    assert r.exit_code == 1 and "unknown user 'ghost'" in r.stderr


def test_expired_config_override_is_skipped_at_start_but_refused_by_check(tmp_path):
    """An override that ran out must not stop a restart at 3 a.m.; `check` still flags it."""
    from click.testing import CliRunner

    from annunciator.cli import main
    from annunciator.testing.gateway import write_config

    data = {"users": {"maria": {}, "li": {}, "sam": {}}, "rosters": {"ops": ["maria", "li"]},
            "overrides": [{"user": "sam", "covers": "li", "until": "2020-01-01 08:00"}]}
    config = load(data)
    assert config.oncall.overrides == []
    assert config.warnings == [("overrides[0].until", "this override expired at 2020-01-01 08:00 UTC; remove it")]
    path = write_config(tmp_path / "annunciator.yaml", data)
    r = CliRunner().invoke(main, ["check", str(path)])
    assert r.exit_code == 1
    assert f"{path}:overrides[0].until: this override expired at 2020-01-01 08:00 UTC; remove it" in r.output
