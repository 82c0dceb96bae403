"""On-call decisions driving real notifications: schedules, overrides, sequential rosters and the
fallback roster, seen where a user sees them (the receiver, the trace)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import ack, raise_alarm, story

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def notify(roster: str, **extra: Any) -> dict[str, Any]:
    return {"type": "notification", "roster": roster, "profile": "hook", "message": "{name}", **extra}


def off_today() -> dict[str, Any]:
    """A schedule that is not on now: only the day after tomorrow (UTC)."""
    day = DAYS[(datetime.now(UTC).weekday() + 2) % 7]
    return {"timezone": "UTC", "ranges": [f"{day} 00:00-24:00"]}


def recipients(rx: Any) -> list[str]:
    return sorted(r.json["user"]["username"] for r in rx.requests)


def test_off_schedule_people_are_skipped_and_the_trace_says_why(gateway_config, pipeline_gateway,
                                                                 webhook_receiver):
    gateway_config["schedules"] = {"later": off_today()}
    gateway_config["users"]["li"]["schedule"] = "later"
    gateway_config["rosters"]["operators"] = ["maria", "li"]
    gw = pipeline_gateway({"page": {"blocks": [notify("operators")]}})
    event = raise_alarm(gw, "plant/x", "page")
    webhook_receiver.wait_for(1)
    time.sleep(0.3)
    assert recipients(webhook_receiver) == ["maria"]
    [line] = [t["why"] for t in story(gw, event["id"])["trace"] if t["action"] == "on-call"]
    assert line.startswith("roster operators: ")
    assert "maria: on call" in line and "li: off schedule" in line


def test_nobody_on_call_uses_the_pipelines_fallback_roster(gateway_config, pipeline_gateway, webhook_receiver):
    gateway_config["schedules"] = {"later": off_today()}
    gateway_config["users"]["maria"]["schedule"] = "later"
    gw = pipeline_gateway({"page": {"fallback_roster": "managers", "blocks": [notify("operators")]}})
    event = raise_alarm(gw, "plant/x", "page")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["user"]["username"] == "sam"
    told = story(gw, event["id"])
    [why] = [t["why"] for t in told["trace"] if t["action"] == "nobody-on-call"]
    assert why == "nobody on call in roster operators; using the pipeline's fallback roster managers"
    assert next(a["code"] for a in told["audit"]) == "NobodyOnCall"


def test_runtime_override_changes_who_is_paged_and_ends(gateway_config, pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"page": {"blocks": [notify("supervisors")]}})
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = gw.client.post("/api/overrides", json={"user": "sam", "covers": "li", "until": until,
                                               "notes": "li is at the dentist"})
    assert r.status_code == 201, r.text
    event = raise_alarm(gw, "plant/x", "page")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["user"]["username"] == "sam"
    [line] = [t["why"] for t in story(gw, event["id"])["trace"] if t["action"] == "on-call"]
    assert "sam: covers for li" in line

    assert gw.client.delete(f"/api/overrides/{r.json()['id']}").status_code == 200
    raise_alarm(gw, "plant/y", "page")
    webhook_receiver.wait_for(2)
    assert recipients(webhook_receiver) == ["li", "sam"]


def test_sequential_roster_pages_one_at_a_time_and_stops_at_the_ack(gateway_config, pipeline_gateway,
                                                                     webhook_receiver):
    gateway_config["rosters"]["ops"] = {"users": ["maria", "li", "sam"], "order": "sequential", "ack_wait": "30s"}
    gw = pipeline_gateway({"page": {"dropout": [], "blocks": [notify("ops"), notify("managers",
                                                                                     message="after")]}})
    event = raise_alarm(gw, "plant/x", "page")
    [first] = webhook_receiver.wait_for(1)
    assert first.json["user"]["username"] == "maria"
    time.sleep(0.3)
    assert webhook_receiver.count == 1  # li waits for maria's 30 s
    acked = time.monotonic()
    assert ack(gw, event["id"], user="maria").status_code == 200
    [_, after] = webhook_receiver.wait_for(2, timeout=5)
    # the acknowledgement ended the wait at once (not after 30 s), and nobody else was paged
    assert after.json["message"] == "after" and after.received_at - acked < 2.0
    whys = [t["why"] for t in story(gw, event["id"])["trace"]]
    assert any("sequential: maria (1 paged)" in w for w in whys)
    assert any("acknowledged by maria" in w for w in whys)


def test_sequential_roster_moves_on_after_the_wait_and_skips_the_unreachable(gateway_config, pipeline_gateway,
                                                                             webhook_receiver):
    gateway_config["profiles"]["pager"] = {"type": "webhook", "url": webhook_receiver.url, "contact": "sms"}
    # sam has no sms number: he is skipped at once instead of costing a whole ack wait
    gateway_config["rosters"]["ops"] = {"users": ["maria", "sam", "li"], "order": "sequential",
                                        "ack_wait": "700ms"}
    gw = pipeline_gateway({"page": {"blocks": [
        {"type": "notification", "roster": "ops", "profile": "pager", "message": "{name}"}]}})
    raise_alarm(gw, "plant/x", "page")
    first, second = webhook_receiver.wait_for(2, timeout=5)
    assert [first.json["user"]["username"], second.json["user"]["username"]] == ["maria", "li"]
    assert 0.6 <= second.received_at - first.received_at < 1.5


def test_sequential_roster_runs_out(gateway_config, pipeline_gateway, webhook_receiver):
    gateway_config["rosters"]["ops"] = {"users": ["maria", "li"], "order": "sequential", "ack_wait": "200ms"}
    gw = pipeline_gateway({"page": {"blocks": [notify("ops")]}})
    event = raise_alarm(gw, "plant/x", "page")
    webhook_receiver.wait_for(2, timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        told = story(gw, event["id"])
        if told["instances"][0]["status"] == "done":
            break
        time.sleep(0.05)
    assert told["instances"][0]["status"] == "done"
    assert any("all 2 people notified, nobody acknowledged" in t["why"] for t in told["trace"])
