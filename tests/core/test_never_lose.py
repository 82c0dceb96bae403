"""No page is lost silently: provider outages, restarts while pages wait, a bad value in a batch.

Everything is driven from outside: the HTTP API, webhook receivers that fail on command, real
databases (SQLite files; PostgreSQL with ANNUNCIATOR_TEST_DATABASE_URL) and real gateway
processes where a restart is part of the story.
"""

from __future__ import annotations

import collections
import json
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from annunciator.testing.gateway import GatewayProcess, api_client
from annunciator.testing.receiver import WebhookReceiver

from conftest import story, wait_until


def page(profile: str = "hook", roster: str = "operators") -> dict[str, Any]:
    return {"blocks": [{"type": "notification", "profile": profile, "roster": roster,
                        "message": "{name}: {eventValue}"}]}


def delivered(rx: WebhookReceiver) -> collections.Counter[str]:
    """Idempotency keys of the requests the receiver answered 2xx, with how often."""
    return collections.Counter(r.headers["idempotency-key"] for r in list(rx.requests) if r.status < 300)


def alarms(gw: Any, source: str) -> list[dict[str, Any]]:
    return gw.client.get("/api/alarms", params={"source": source}).json()["events"]


@pytest.mark.slow
def test_a_minute_long_outage_delivers_every_page_and_pages_the_admins(gateway_config, start_gateway,
                                                                       webhook_receiver):
    """The receiver answers 503 for 60 s while an alarm is raised every second: every one is
    delivered once it recovers, and the gateway's own alarm about the failing profile goes to
    the admins over another channel, then clears."""
    with WebhookReceiver() as ops:
        gateway_config["profiles"]["ops"] = {"type": "webhook", "url": ops.url, "timeout": "5s"}
        gateway_config["rosters"]["admins"] = ["sam"]
        gateway_config["gateway"]["retry"] = {"attempts": 3, "backoff": "200ms", "max_backoff": "2s"}
        gateway_config["gateway"]["profile_alarms"] = {"after": "5s", "pipeline": "ops"}
        gateway_config["pipelines"] = {"page": page(), "ops": page("ops", "admins")}
        gw = start_gateway(gateway_config)
        webhook_receiver.status = 503
        raised = []
        start = time.monotonic()
        for i in range(60):
            r = gw.client.post("/api/alarms", json={"source": f"plant/pump-{i}", "name": f"Pump {i}",
                                                    "pipelines": {"active": "page"}})
            assert r.status_code == 201, r.text
            raised.append(r.json()["events"][0]["id"])
            time.sleep(max(0.0, start + i + 1 - time.monotonic()))
        # the outage is noticed and told to the admins through the working channel
        [told] = ops.wait_for(1, timeout=10)
        assert told.json["message"].startswith("Profile hook failing: failing since")
        assert "notification(s) waiting" in told.json["message"]
        [profile_alarm] = alarms(gw, "annunciator/profiles/hook")
        assert profile_alarm["active"] and profile_alarm["priority"] == "High"
        waiting = gw.client.get("/api/waiting").json()
        assert len(waiting["waiting"]) >= 50  # the rest may be between attempts right now
        [hook] = [p for p in waiting["profiles"] if p["profile"] == "hook"]
        assert hook["failingSince"] and hook["lastError"].startswith("HTTP 503")
        assert all(w["lastError"].startswith("HTTP 503") and w["nextAttemptAt"] for w in waiting["waiting"])

        webhook_receiver.status = 200
        keys = wait_until(lambda: (d := delivered(webhook_receiver)) and len(d) >= 60 and d,
                          timeout=30, what="all 60 pages delivered")
        assert len(keys) == 60 and set(keys.values()) == {1}  # each exactly once
        for event_id in raised:
            [n] = story(gw, event_id)["notifications"]
            assert n["status"] == "sent" and n["attempts"] >= 2
        # the profile sends again: its alarm clears, nothing waits
        wait_until(lambda: not alarms(gw, "annunciator/profiles/hook")[0]["active"], timeout=10,
                   what="the profile alarm cleared")
        assert gw.client.get("/api/waiting").json()["waiting"] == []
        audit = gw.client.get("/api/audit", params={"code": "NotificationFailed"}).json()["audit"]
        assert audit == []


def test_a_page_given_up_is_never_silent(gateway_config, start_gateway, webhook_receiver):
    """A page whose only channel never recovers is given up at max_age, and that is in the
    trace, the audit log, /api/waiting and the gateway's own alarm."""
    gateway_config["gateway"]["retry"] = {"attempts": 2, "backoff": "100ms", "max_backoff": "300ms",
                                          "max_age": "2s"}
    gateway_config["gateway"]["profile_alarms"] = {"after": "1s"}
    gateway_config["pipelines"] = {"page": page()}
    gw = start_gateway(gateway_config)
    webhook_receiver.status = 503
    r = gw.client.post("/api/alarms", json={"source": "plant/boiler", "pipelines": {"active": "page"}})
    event_id = r.json()["events"][0]["id"]
    s = wait_until(lambda: (s := story(gw, event_id)) and s["notifications"][0]["status"] == "failed" and s,
                   timeout=15, what="the page given up")
    [n] = s["notifications"]
    assert n["attempts"] >= 3 and "given up after" in n["lastError"]
    assert any(line["action"] == "notify-failed" for line in s["trace"]), s["trace"]
    audit = gw.client.get("/api/audit", params={"code": "NotificationFailed"}).json()["audit"]
    assert [a["notificationId"] for a in audit] == [n["id"]]
    waiting = gw.client.get("/api/waiting").json()
    assert [g["id"] for g in waiting["givenUp"]] == [n["id"]]
    # its value follows what waits for the profile
    [alarm] = wait_until(lambda: (a := alarms(gw, "annunciator/profiles/hook")) and "1 given up" in
                         a[0]["eventValue"] and a, timeout=10, what="the profile alarm")
    assert alarm["eventValue"].startswith("failing since ") and "0 notification(s) waiting" in alarm["eventValue"]


def _process(tmp_path: Any, config: dict[str, Any]) -> GatewayProcess:
    path = tmp_path / "annunciator.yaml"
    path.write_text(yaml.safe_dump(config))
    return GatewayProcess(path).start()


def test_waiting_retries_survive_a_restart_at_their_stored_time(tmp_path, gateway_config, webhook_receiver):
    """503 with Retry-After: 6 s; the gateway is killed and started again at once: the retry
    comes when it was due, not at once and not never, with the same idempotency key."""
    webhook_receiver.status = 503
    webhook_receiver.headers = {"Retry-After": "6"}
    gateway_config["pipelines"] = {"page": page()}
    proc = _process(tmp_path, gateway_config)
    try:
        with api_client(proc.url) as api:
            ids = [api.post("/api/alarms", json={"source": f"plant/tank-{i}", "pipelines": {"active": "page"}}
                            ).json()["events"][0]["id"] for i in range(3)]
            first = webhook_receiver.wait_for(3)
            refused_at = max(r.received_at for r in first)
            wait_until(lambda: all(api.get(f"/api/alarms/{i}/trace").json()["notifications"][0]["attempts"] == 1
                                   for i in ids), what="the failed attempts stored")
            time.sleep(0.3)
        proc.kill()
        webhook_receiver.status = 200
        webhook_receiver.headers = {}
        proc.start()
        wait_until(lambda: len(delivered(webhook_receiver)) == 3, timeout=20, what="the retries after restart")
        retried = [r for r in webhook_receiver.requests if r.status == 200]
        assert min(r.received_at for r in retried) - refused_at >= 5.5  # the stored wait was kept
        assert {r.headers["idempotency-key"] for r in retried} == {r.headers["idempotency-key"] for r in first}
        with api_client(proc.url) as api:
            for i in ids:
                [n] = api.get(f"/api/alarms/{i}/trace").json()["notifications"]
                assert n["status"] == "sent" and n["attempts"] == 2
    finally:
        proc.stop()


# --- one bad value never takes its neighbours with it ------------------------------------------


def _concurrently(url: str, token: str, bodies: list[bytes]) -> list[httpx.Response]:
    """POST every body at the same moment, so they land in one group commit."""
    barrier = threading.Barrier(len(bodies))
    out: list[Any] = [None] * len(bodies)

    def post(i: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}",
                                                 "Content-Type": "application/json"}, timeout=30) as c:
            barrier.wait()
            out[i] = c.post("/api/alarms", content=bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _token(config: dict[str, Any]) -> str:
    return config["gateway"]["api_tokens"][0]


def test_nan_and_nul_are_stored_normalised_beside_twenty_good_alarms(tmp_path, gateway_config, webhook_receiver):
    gateway_config["pipelines"] = {"page": page()}
    proc = _process(tmp_path, gateway_config)
    try:
        good = [json.dumps({"source": f"plant/line-{i}", "eventValue": i, "pipelines": {"active": "page"}})
                for i in range(20)]
        # what json.dumps(float("nan")) writes for a failed sensor, and a NUL-padded PLC string
        nan = '{"source": "plant/sensor", "eventValue": NaN, "pipelines": {"active": "page"}}'
        nul = json.dumps({"source": "plant/plc", "name": "Pump 7\x00\x00\x00", "pipelines": {"active": "page"}})
        answers = _concurrently(proc.url, _token(gateway_config), [b.encode() for b in [*good, nan, nul]])
        assert [a.status_code for a in answers] == [201] * 22, [a.text for a in answers if a.status_code != 201]
        assert answers[20].json()["warnings"] == ["alarms[0].eventValue: NaN stored as the string 'NaN'"]
        assert answers[21].json()["warnings"] == ["alarms[0].name: NUL characters removed"]
        wait_until(lambda: len(delivered(webhook_receiver)) == 22, what="22 pages")
        messages = {r.json["message"] for r in webhook_receiver.requests}
        assert "sensor: NaN" in messages and "Pump 7: " in messages
        proc.stop()
        proc.start()  # nothing vanishes on restart, and it reads back as it was answered
        with api_client(proc.url) as api:
            events = {e["source"]: e for e in api.get("/api/alarms").json()["events"]}
        assert len(events) == 22
        assert events["plant/sensor"]["eventValue"] == "NaN" and events["plant/plc"]["name"] == "Pump 7"
    finally:
        proc.stop()


def _poison(url: str) -> None:
    """A trigger that refuses one source, as a database constraint would: the only way to make
    the database itself refuse a row that every check before it let through."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("CREATE TRIGGER poison BEFORE INSERT ON alarm_events WHEN NEW.source LIKE 'poison%' "
                       "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        return
    from annunciator.core.store import normalize_url

    engine = sa.create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                             "IF NEW.source LIKE 'poison%%' THEN RAISE EXCEPTION 'poisoned row'; END IF; "
                             "RETURN NEW; END $$ LANGUAGE plpgsql")
        conn.exec_driver_sql("CREATE TRIGGER poison BEFORE INSERT ON alarm_events "
                             "FOR EACH ROW EXECUTE FUNCTION poison()")
    engine.dispose()


def _cure(url: str) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("DROP TRIGGER poison")
        return
    from annunciator.core.store import normalize_url

    engine = sa.create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER poison ON alarm_events")
    engine.dispose()


def _good_and_poisoned(good: int) -> list[bytes]:
    """``good`` alarm bodies raising plant/line-N into "page", then one the trigger refuses."""
    bodies = [json.dumps({"source": f"plant/line-{i}", "name": f"line {i}", "pipelines": {"active": "page"}}
                         ).encode() for i in range(good)]
    return [*bodies, b'{"source": "poison/valve", "name": "valve", "pipelines": {"active": "page"}}']


def test_a_row_the_database_refuses_fails_only_its_own_request(tmp_path, gateway_config, webhook_receiver):
    gateway_config["pipelines"] = {"page": page()}
    url = gateway_config["gateway"]["database"]
    proc = _process(tmp_path, gateway_config)
    try:
        _poison(url)
        bodies = _good_and_poisoned(20)
        answers = _concurrently(proc.url, _token(gateway_config), bodies)
        assert [a.status_code for a in answers[:20]] == [201] * 20
        assert answers[20].status_code == 500 and "refused" in answers[20].json()["error"]
        assert "poisoned row" in answers[20].json()["error"]
        wait_until(lambda: len(delivered(webhook_receiver)) == 20, what="the 20 good pages")
        with api_client(proc.url) as api:
            # never "active" unless stored: the refused alarm is not listed, and a retry raises it
            assert api.get("/api/alarms", params={"source": "poison/*"}).json()["events"] == []
            _cure(url)
            again = api.post("/api/alarms", content=bodies[20], headers={"Content-Type": "application/json"})
            assert again.status_code == 201 and again.json()["created"] == [True]
        wait_until(lambda: len(delivered(webhook_receiver)) == 21, what="the retried page")
        time.sleep(0.5)
        assert len(webhook_receiver.requests) == 21  # the refused one was never sent
        proc.stop()
        proc.start()
        with api_client(proc.url) as api:
            assert len(api.get("/api/alarms").json()["events"]) == 21
    finally:
        proc.stop()


def test_a_refused_alarm_pages_nobody_even_when_its_pipeline_awaits_first(tmp_path, gateway_config,
                                                                         webhook_receiver):
    """A Script block runs before the Notification block, so the page is queued after the alarm's
    row went to the database (in a later group commit): the refused alarm still pages nobody,
    is not listed, and leaves nothing behind that a restart would send."""
    gateway_config["pipelines"] = {"page": {"blocks": [
        {"type": "script", "name": "enrich", "code": 'state["checked"] = True\n'},
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "{name}"}]}}
    url = gateway_config["gateway"]["database"]
    proc = _process(tmp_path, gateway_config)
    try:
        _poison(url)
        bodies = _good_and_poisoned(10)
        answers = _concurrently(proc.url, _token(gateway_config), bodies)
        assert [a.status_code for a in answers] == [201] * 10 + [500], [a.text for a in answers]
        wait_until(lambda: len(delivered(webhook_receiver)) == 10, what="the 10 good pages")
        time.sleep(1.0)
        assert "valve" not in {r.json["message"] for r in webhook_receiver.requests}
        proc.stop()
        proc.start()
        time.sleep(1.0)
        with api_client(proc.url) as api:
            assert api.get("/api/alarms", params={"source": "poison/*"}).json()["events"] == []
        assert len(webhook_receiver.requests) == 10  # nothing of the refused alarm was stored to resend
    finally:
        proc.stop()


def test_a_duplicate_raise_of_a_refused_alarm_is_not_answered_already_active(tmp_path, gateway_config,
                                                                            webhook_receiver):
    """Eight requests raise the same source at once; the database refuses it. None of them may
    answer "already active" for an alarm that was never stored."""
    gateway_config["pipelines"] = {"page": page()}
    url = gateway_config["gateway"]["database"]
    proc = _process(tmp_path, gateway_config)
    try:
        _poison(url)
        body = b'{"source": "poison/valve", "pipelines": {"active": "page"}}'
        answers = _concurrently(proc.url, _token(gateway_config), [body] * 8)
        assert [a.status_code for a in answers] == [500] * 8, [(a.status_code, a.text) for a in answers]
        assert all("refused" in a.json()["error"] for a in answers)
        with api_client(proc.url) as api:
            assert api.get("/api/alarms", params={"source": "poison/*"}).json()["events"] == []
        assert webhook_receiver.requests == []
    finally:
        proc.stop()


def test_a_refused_alarm_is_left_out_of_a_consolidated_message(tmp_path, gateway_config, webhook_receiver):
    gateway_config["pipelines"] = {"page": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "{name}",
         "consolidation": {"delay": "1s", "message": "{count} alarms: {names}"}}]}}
    url = gateway_config["gateway"]["database"]
    proc = _process(tmp_path, gateway_config)
    try:
        _poison(url)
        bodies = _good_and_poisoned(6)
        answers = _concurrently(proc.url, _token(gateway_config), bodies)
        assert [a.status_code for a in answers] == [201] * 6 + [500]
        [message] = webhook_receiver.wait_for(1, timeout=15)
        assert message.json["message"].startswith("6 alarms"), message.json["message"]
        assert "valve" not in message.json["message"]
        time.sleep(1.5)
        assert len(webhook_receiver.requests) == 1
    finally:
        proc.stop()


def test_tag_alarms_beside_a_refused_one_are_stored_and_page(tmp_path, gateway_config, webhook_receiver):
    """Tag alarms are raised by one long-lived task: a refused one must not take the others in the
    same group commit with it, and it is raised again by the next value that trips it."""
    gateway_config["pipelines"] = {"page": page()}
    tanks = ["Plant/Tank1", "Plant/Tank2", "Plant/Tank3", "Plant/poison"]
    gateway_config["tags"] = {p: {"type": "Float8", "value": 0, "alarms": [
        {"name": "High", "mode": "above", "setpoint": 10, "pipelines": {"active": "page"}}]} for p in tanks}
    gateway_config["scripts"] = {"api_run": True}
    url = gateway_config["gateway"]["database"]
    if not url.startswith("sqlite"):
        pytest.skip("the SQLite trigger is enough to show the grouping; PostgreSQL refusals are covered above")
    proc = _process(tmp_path, gateway_config)
    try:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("CREATE TRIGGER poison BEFORE INSERT ON alarm_events WHEN NEW.source LIKE '%poison%' "
                       "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        with api_client(proc.url) as api:
            # one script writes all four at once: they are evaluated together, in one group commit
            r = api.post("/api/scripts/run", json={"source": f"system.tag.writeBlocking({tanks!r}, [20] * 4)"})
            assert r.status_code == 200 and r.json()["ok"], r.text
            wait_until(lambda: len(delivered(webhook_receiver)) == 3, what="the three good tag alarms")
            sources = {e["source"] for e in api.get("/api/alarms").json()["events"]}
            assert len(sources) == 3 and not any("poison" in s for s in sources), sources
            with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
                db.execute("DROP TRIGGER poison")
            for value in (0, 30):
                assert api.post("/api/tags/Plant/poison", json={"value": value}).status_code == 200
            wait_until(lambda: len(delivered(webhook_receiver)) == 4, what="the tag alarm raised again")
    finally:
        proc.stop()


def test_a_profile_alarm_cleared_by_hand_while_the_profile_fails_is_raised_again(gateway_config, start_gateway,
                                                                               webhook_receiver):
    with WebhookReceiver() as ops:
        gateway_config["profiles"]["ops"] = {"type": "webhook", "url": ops.url, "timeout": "5s"}
        gateway_config["rosters"]["admins"] = ["sam"]
        gateway_config["gateway"]["profile_alarms"] = {"after": "1s", "pipeline": "ops"}
        gateway_config["pipelines"] = {"page": page(), "ops": page("ops", "admins")}
        gw = start_gateway(gateway_config)
        webhook_receiver.status = 503
        gw.client.post("/api/alarms", json={"source": "plant/pump", "pipelines": {"active": "page"}})
        first = wait_until(lambda: alarms(gw, "annunciator/profiles/hook"), what="the profile alarm")[0]
        r = gw.client.post(f"/api/alarms/{first['id']}/clear", json={"notes": "looked at it"})
        assert r.status_code == 200, r.text
        again = wait_until(lambda: [e for e in alarms(gw, "annunciator/profiles/hook") if e["id"] != first["id"]],
                           timeout=10, what="the profile alarm raised again")
        assert again[0]["state"].startswith("Active")
        webhook_receiver.status = 200
        wait_until(lambda: not [e for e in alarms(gw, "annunciator/profiles/hook") if e["state"].startswith("Active")],
                   timeout=20, what="the profile alarm cleared once the profile sends")
