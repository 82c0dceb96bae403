"""Consolidation and throttling on the Notification block: the flood, the visible hold, the
summary text, acknowledged alarms leaving a batch, and a held batch surviving a restart."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from click.testing import CliRunner

from annunciator.cli import main
from annunciator.testing.gateway import TOKEN, RunningGateway
from annunciator.testing.receiver import WebhookReceiver

from conftest import ack, raise_alarm, story


def consolidating(delay: str, frequency: str, **extra: Any) -> dict[str, Any]:
    return {"page": {"blocks": [{
        "type": "notification", "roster": "operators", "profile": "hook", "message": "{name}: {displayPath}",
        "consolidation": {"delay": delay, "frequency": frequency, **extra}}]}}


def raise_many(gw: RunningGateway, sources: list[str], pipeline: str = "page") -> list[dict[str, Any]]:
    r = gw.client.post("/api/alarms", json={"alarms": [
        {"source": s, "displayPath": s.replace("plant/", "Plant/"), "pipelines": {"active": pipeline},
         "priority": "High" if s.endswith("7") else "Medium"} for s in sources]})
    assert r.status_code == 201, r.text
    return r.json()["events"]


def settle(gw: RunningGateway, timeout: float = 30.0, rx: WebhookReceiver | None = None) -> None:
    """Wait until nothing is held and every queued notification has been handed over (with
    ``rx``: until it has received nothing new for a second, as the last flush's sends can take
    longer than a moment on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not gw.client.get("/api/held").json()["held"]:
            time.sleep(0.3)  # let the last flush's sends reach the receiver
            if not gw.client.get("/api/held").json()["held"]:
                if rx is None:
                    return
                seen = rx.count
                time.sleep(1.0)
                if rx.count == seen:
                    return
        time.sleep(0.1)
    raise AssertionError(f"still held: {gw.client.get('/api/held').json()}")


def test_flood_of_1000_alarms_reaches_each_person_at_most_twice(gateway_config, pipeline_gateway,
                                                                webhook_receiver):
    gateway_config["rosters"]["operators"] = ["maria", "li", "sam"]
    gw = pipeline_gateway(consolidating("1s", "4s"))
    for start in range(0, 1000, 100):
        raise_many(gw, [f"plant/flood/{i}" for i in range(start, start + 100)])
    settle(gw, rx=webhook_receiver)
    per_person = Counter(r.json["user"]["username"] for r in webhook_receiver.requests)
    assert set(per_person) == {"maria", "li", "sam"}
    assert max(per_person.values()) <= 2, per_person
    # nothing lost: each person's messages carry all 1,000 alarms between them
    for user in per_person:
        mine = [r.json for r in webhook_receiver.requests if r.json["user"]["username"] == user]
        assert sum(len(m["events"]) for m in mine) == 1000
        counts = [len(m["events"]) for m in mine]
        for m, n in zip(mine, counts, strict=True):
            if n > 1:
                assert m["message"].startswith(f"{n} alarms, highest priority High: Plant/flood/")
                assert m["message"].endswith(f" and {n - 3} more")


def test_hold_is_visible_and_throttle_keeps_a_gap(gateway_config, pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway(consolidating("300ms", "2s"))
    first = raise_alarm(gw, "plant/a", "page", displayPath="Plant/A", name="A")
    [held] = gw.client.get("/api/held").json()["held"]
    assert (held["user"], held["alarms"], held["pipeline"], held["block"]) == ("maria", 1, "page",
                                                                              "notification-1")
    assert held["why"].startswith("collecting alarms until ")
    [one] = webhook_receiver.wait_for(1)
    assert one.json["message"] == "A: Plant/A"  # a batch of one uses the block's own message
    sent_at = one.received_at

    raise_alarm(gw, "plant/b", "page", displayPath="Plant/B", name="B")
    raise_alarm(gw, "plant/c", "page", displayPath="Plant/C", name="C")
    [held] = gw.client.get("/api/held").json()["held"]
    assert held["alarms"] == 2 and held["why"].startswith("throttled until ")
    assert "at most one every 2s" in held["why"]
    r = CliRunner().invoke(main, ["status", "--url", gw.url, "--token", TOKEN])
    assert r.exit_code == 0, r.output
    assert "page/notification-1  maria: 2 alarm(s), until" in r.output and "throttled until" in r.output
    pipelines = gw.client.get("/api/pipelines").json()["pipelines"]
    assert pipelines[0]["held"][0]["alarms"] == 2

    [_, two] = webhook_receiver.wait_for(2, timeout=10)
    assert two.received_at - sent_at >= 1.9  # the minimum gap held
    assert two.json["message"] == "2 alarms, highest priority Medium: Plant/B, Plant/C"
    told = story(gw, first["id"])
    assert [a["code"] for a in told["audit"]][:2] == ["NotificationHeld", "NotificationConsolidated"]


def test_acknowledged_alarms_leave_the_batch(gateway_config, pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway(consolidating("1s", "2s"))
    a, b, c = (raise_alarm(gw, f"plant/{x}", "page", displayPath=f"Plant/{x}") for x in "abc")
    assert ack(gw, b["id"]).status_code == 200
    [msg] = webhook_receiver.wait_for(1, timeout=10)
    assert sorted(e["id"] for e in msg.json["events"]) == sorted([a["id"], c["id"]])
    assert msg.json["message"].startswith("2 alarms")

    # a batch whose every alarm is acknowledged is withdrawn, visibly
    d = raise_alarm(gw, "plant/d", "page")
    assert ack(gw, d["id"]).status_code == 200
    settle(gw)
    time.sleep(0.2)
    assert webhook_receiver.count == 1
    [holder] = [n for n in story(gw, d["id"])["notifications"] if n["status"] == "cancelled"]
    assert "acknowledged, cleared or shelved before the message was due" in holder["lastError"]


def test_held_batch_survives_a_restart(gateway_config, start_gateway, webhook_receiver):
    gateway_config["pipelines"] = consolidating("2s", "30s")
    gw = start_gateway(gateway_config)
    raise_alarm(gw, "plant/a", "page")
    raise_alarm(gw, "plant/b", "page")
    gw.stop()  # before the batch is due
    assert webhook_receiver.count == 0
    gw = start_gateway(gateway_config)
    [held] = gw.client.get("/api/held").json()["held"]
    assert held["alarms"] == 2
    [msg] = webhook_receiver.wait_for(1, timeout=10)
    assert len(msg.json["events"]) == 2


def test_consolidation_settings_are_checked(gateway_config, start_gateway):
    import pytest

    from annunciator.core.errors import ConfigError

    gateway_config["pipelines"] = consolidating("soon", "1m", listed=-1)
    with pytest.raises(ConfigError) as err:
        start_gateway(gateway_config)
    text = str(err.value)
    assert 'pipelines.page.blocks[0].consolidation.delay: expected a duration like "30s", got "soon"' in text
    assert "pipelines.page.blocks[0].consolidation.listed" in text


def test_consolidation_with_a_sequential_roster_is_refused(gateway_config, start_gateway):
    import pytest

    from annunciator.core.errors import ConfigError

    gateway_config["rosters"]["operators"] = {"users": ["maria", "li"], "order": "sequential"}
    gateway_config["pipelines"] = consolidating("1s", "1m")
    with pytest.raises(ConfigError) as err:
        start_gateway(gateway_config)
    assert "pipelines.page.blocks[0].consolidation: roster operators is sequential" in str(err.value)


def test_frequency_caps_the_wait_under_a_steady_trickle(gateway_config, pipeline_gateway, webhook_receiver):
    """Each alarm re-arms the delay; the first alarm still goes out after at most `frequency`."""
    gw = pipeline_gateway(consolidating("800ms", "2s"))
    started = time.monotonic()
    for i in range(8):  # one every 0.4 s for 3.2 s: the delay alone would never expire
        raise_alarm(gw, f"plant/t{i}", "page")
        time.sleep(0.4)
    [first, *_] = webhook_receiver.wait_for(1, timeout=5)
    assert first.received_at - started < 2.8
    assert len(first.json["events"]) < 8


def test_acking_one_alarm_does_not_withdraw_the_message_of_the_others(gateway_config, pipeline_gateway,
                                                                       webhook_receiver):
    gateway_config["gateway"]["retry"] = {"attempts": 5, "backoff": "400ms", "max_backoff": "400ms"}
    pipelines = consolidating("300ms", "5s")
    pipelines["page"]["blocks"].append({"type": "delay", "delay": "1h"})  # the instances stay alive
    gw = pipeline_gateway(pipelines)
    webhook_receiver.status = 500
    a = raise_alarm(gw, "plant/a", "page")
    b = raise_alarm(gw, "plant/b", "page")
    webhook_receiver.wait_for(1, timeout=5)  # the a+b message, failing
    assert ack(gw, a["id"]).status_code == 200  # ends a's instance, not b's message
    webhook_receiver.status = 200
    msg = webhook_receiver.wait_for(2, timeout=5)[-1]
    assert {e["id"] for e in msg.json["events"]} == {a["id"], b["id"]}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sends = [n["status"] for n in story(gw, b["id"])["notifications"] if n["status"] != "consolidated"]
        if sends == ["sent"]:
            break
        time.sleep(0.05)
    assert sends == ["sent"]


def test_batch_held_across_a_restart_with_the_consolidation_removed_is_still_sent(
        gateway_config, start_gateway, webhook_receiver):
    gateway_config["pipelines"] = consolidating("2s", "30s")
    gw = start_gateway(gateway_config)
    raise_alarm(gw, "plant/a", "page", displayPath="Plant/A")
    raise_alarm(gw, "plant/b", "page", displayPath="Plant/B")
    gw.stop()
    del gateway_config["pipelines"]["page"]["blocks"][0]["consolidation"]
    gw = start_gateway(gateway_config)
    [msg] = webhook_receiver.wait_for(1, timeout=10)
    assert msg.json["message"].startswith("2 alarms, highest priority Medium: Plant/A, Plant/B")
    time.sleep(0.5)
    assert webhook_receiver.count == 1
    assert gw.client.get("/api/held").json()["held"] == []
    # nothing finished came back to life in the open alarm list
    assert len(gw.client.get("/api/alarms").json()["events"]) == 2
