"""The whole loop over real HTTP: alarm source -> API -> pipeline -> webhook receiver."""

from __future__ import annotations

import time

from conftest import ack, raise_alarm, story


def test_raised_alarm_reaches_receiver_with_rendered_message(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"page": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators",
         "message": "{priority}: {displayPath} = {eventValue} ({area})"}]}})
    event = raise_alarm(gw, "plant/pump1/fault", "page", priority="High", displayPath="Plant/Pump 1",
                        eventValue=42, properties={"area": "North"})
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "High: Plant/Pump 1 = 42 (North)"
    assert req.json["user"]["username"] == "maria"
    assert req.json["events"][0]["id"] == event["id"]
    assert req.headers["idempotency-key"] == req.json["idempotencyKey"]


def test_ack_during_delay_cancels_the_rest(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"page": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "first"},
        {"type": "delay", "delay": "1.5s"},
        {"type": "notification", "profile": "hook", "roster": "supervisors", "message": "second"}]}})
    event = raise_alarm(gw, "plant/pump2", "page")
    webhook_receiver.wait_for(1)
    r = ack(gw, event["id"], "maria", "on it")
    assert r.status_code == 200, r.text
    # the delay would have ended at 1.5 s; wait well past it
    time.sleep(2.5)
    assert [q.json["message"] for q in webhook_receiver.requests] == ["first"]
    s = story(gw, event["id"])
    [inst] = s["instances"]
    assert inst["status"] == "dropped" and inst["endReason"] == "acknowledged by maria"
    assert [j["action"] for j in s["journal"]] == ["active", "acknowledged"]
    assert s["journal"][1]["user"] == "maria" and s["journal"][1]["notes"] == "on it"


def test_escalate_tiers_until_acknowledged(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"esc": {"blocks": [
        {"type": "escalate", "profile": "hook", "message": "{name}",
         "tiers": [{"roster": "operators", "wait": "0.6s"},
                   {"roster": "supervisors", "wait": "0.6s"},
                   {"roster": "managers", "wait": "0.6s"}]}]}})
    before = time.monotonic()
    event = raise_alarm(gw, "plant/boiler", "esc", name="Boiler trip")
    first = webhook_receiver.wait_for(1)
    assert first[0].json["user"]["username"] == "maria"
    second = webhook_receiver.wait_for(2, timeout=5)
    assert second[1].json["user"]["username"] == "li"
    assert second[1].received_at - before >= 0.6  # tier 2 only after tier 1's full wait
    ack(gw, event["id"], "li")
    time.sleep(1.5)
    assert [q.json["user"]["username"] for q in webhook_receiver.requests] == ["maria", "li"]


def test_unknown_and_double_acknowledgement(pipeline_gateway):
    gw = pipeline_gateway({})
    r = ack(gw, "nope")
    assert r.status_code == 404
    event = raise_alarm(gw, "plant/x")
    assert ack(gw, event["id"]).status_code == 200
    r = ack(gw, event["id"], "li")
    assert r.status_code == 409 and "already acknowledged by maria" in r.json()["error"]
    journal = gw.client.get("/api/journal", params={"eventId": event["id"]}).json()["journal"]
    assert [(j["action"], j["user"]) for j in journal] == [("active", None), ("acknowledged", "maria")]


def test_api_requires_token(pipeline_gateway):
    import httpx

    gw = pipeline_gateway({})
    assert httpx.get(gw.url + "/api/alarms").status_code == 401
    assert httpx.get(gw.url + "/api/alarms", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(gw.url + "/api/alarms", json={"source": "a"}).status_code == 401
    assert httpx.get(gw.url + "/api/health").status_code == 200


def test_malformed_api_json_names_the_field(pipeline_gateway):
    gw = pipeline_gateway({})
    r = gw.client.post("/api/alarms", json={"alarms": [{"source": "a", "priority": "Urgent"}]})
    assert r.status_code == 422
    assert r.json()["fields"][0]["path"] == "alarms[0].priority"
    assert "Urgent" in r.json()["fields"][0]["message"]
    r = gw.client.post("/api/alarms", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
    r = gw.client.post("/api/alarms/acknowledge", json={"eventIds": ["x"]})
    assert r.status_code == 422 and r.json()["fields"][0]["path"] == "user"


def test_batch_with_unknown_pipeline_stores_nothing(pipeline_gateway):
    gw = pipeline_gateway({"p": {"blocks": [{"type": "delay", "delay": "1s"}]}})
    r = gw.client.post("/api/alarms", json={"alarms": [
        {"source": "a", "pipelines": {"active": "p"}},
        {"source": "b", "pipelines": {"active": "nope"}}]})
    assert r.status_code == 422
    assert "alarms[1].pipelines.active: unknown pipeline 'nope'" in r.json()["error"]
    assert gw.client.get("/api/alarms").json()["events"] == []
    assert gw.client.get("/api/journal").json()["journal"] == []


def test_raising_an_active_source_again_returns_the_same_event(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"p": {"blocks": [{"type": "notification", "profile": "hook", "roster": "operators"}]}})
    first = gw.client.post("/api/alarms", json={"source": "plant/a", "pipelines": {"active": "p"}})
    again = gw.client.post("/api/alarms", json={"source": "plant/a", "pipelines": {"active": "p"}})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["events"][0]["id"] == first.json()["events"][0]["id"]
    webhook_receiver.wait_for(1)
    time.sleep(0.3)
    assert webhook_receiver.count == 1
    # once cleared, the same source raises a new event
    gw.client.post("/api/alarms/clear", json={"sources": ["plant/a"]})
    third = gw.client.post("/api/alarms", json={"source": "plant/a", "pipelines": {"active": "p"}})
    assert third.status_code == 201 and third.json()["events"][0]["id"] != first.json()["events"][0]["id"]


def test_pipeline_built_in_python_runs(gateway_config, start_gateway, webhook_receiver):
    import pytest

    from annunciator.core.errors import ConfigError
    from annunciator.core.plugins import build_pipeline

    with pytest.raises(ConfigError) as info:
        build_pipeline("bad", [{"type": "delay", "delay": "soon"}])
    assert 'pipelines.bad.blocks[0].delay: expected a duration like "30s", got "soon"' in str(info.value)

    gw = start_gateway(gateway_config)
    built = build_pipeline("py", [
        {"type": "set-property", "property": "who", "expression": "'python'"},
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "from {who}"}],
        dropout=["acknowledged"])
    gw.gateway.pipelines["py"] = built
    raise_alarm(gw, "plant/py", "py")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "from python"


def test_shelf_expiry_routes_a_still_active_alarm(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"p": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "{name}"}]}})
    r = gw.client.post("/api/shelve", json={"sources": ["plant/noisy"], "minutes": 0.02, "user": "li"})
    assert r.status_code == 200
    assert [s["source"] for s in gw.client.get("/api/shelved").json()["shelved"]] == ["plant/noisy"]
    event = raise_alarm(gw, "plant/noisy", "p", name="Noisy sensor")
    assert event["shelved"] is True
    time.sleep(0.5)
    assert webhook_receiver.count == 0
    [req] = webhook_receiver.wait_for(1, timeout=5)  # the shelf ends 1.2 s after it was made
    assert req.json["message"] == "Noisy sensor"
    journal = gw.client.get("/api/journal", params={"eventId": event["id"]}).json()["journal"]
    assert [(j["action"], j["user"]) for j in journal] == [
        ("active", None), ("shelved", None), ("unshelved", "system")]
    assert journal[2]["notes"] == "shelf expired"
    assert gw.client.get("/api/shelved").json()["shelved"] == []


def test_ack_notes_required_and_auto_ack_definitions(pipeline_gateway):
    gw = pipeline_gateway({}, alarms=[
        {"source": "plant/safety/*", "priority": "Critical", "ack_notes_required": True},
        {"source": "plant/info/*", "priority": "Low", "ack_mode": "unused"}])
    safety = raise_alarm(gw, "plant/safety/gas")
    assert safety["priority"] == "Critical" and safety["ackNotesRequired"] is True
    r = ack(gw, safety["id"], "maria", "   ")
    assert r.status_code == 422 and "requires acknowledgement notes" in r.json()["error"]
    assert [j["action"] for j in gw.client.get("/api/journal", params={"eventId": safety["id"]}
                                                ).json()["journal"]] == ["active"]
    assert ack(gw, safety["id"], "maria", "gas detector tested, false alarm").status_code == 200
    info = raise_alarm(gw, "plant/info/door")
    assert info["state"] == "ActiveAcked" and info["ackUser"] == "system"
    listed = gw.client.get("/api/alarms", params={"priority": "High"}).json()["events"]
    assert [e["source"] for e in listed] == ["plant/safety/gas"]


def test_database_outage_answers_503_and_loses_nothing(pipeline_gateway, webhook_receiver,
                                                       annunciator_database_url):
    import sqlite3

    import pytest

    if not annunciator_database_url.startswith("sqlite"):
        pytest.skip("holds a SQLite write lock to play the outage")
    gw = pipeline_gateway({"p": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "{name}"}]}})
    gw.gateway.config.gateway.commit_timeout = 0.5
    blocker = sqlite3.connect(annunciator_database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        r = gw.client.post("/api/alarms", json={"source": "plant/x", "name": "X", "pipelines": {"active": "p"}})
        assert r.status_code == 503 and "repeating this request is safe" in r.json()["error"]
        time.sleep(0.3)
        assert webhook_receiver.count == 0  # never notify what is not stored
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    [req] = webhook_receiver.wait_for(1, timeout=15)
    assert req.json["message"] == "X"
    again = gw.client.post("/api/alarms", json={"source": "plant/x", "pipelines": {"active": "p"}})
    assert again.status_code == 200  # the retry finds the same event
    journal = gw.client.get("/api/journal", params={"source": "plant/x"}).json()["journal"]
    assert [j["action"] for j in journal] == ["active"]


def test_ack_while_sending_keeps_the_delivered_record_and_stops_retries(pipeline_gateway, webhook_receiver):
    # the receiver answers slowly: the notification is in flight when the alarm is acknowledged
    webhook_receiver.delay = 0.6
    gw = pipeline_gateway({"p": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "{name}"},
        {"type": "delay", "delay": "1h"}]}})
    event = raise_alarm(gw, "plant/slow", "p", name="Slow")
    webhook_receiver.wait_for(1)
    assert ack(gw, event["id"]).status_code == 200
    time.sleep(1.0)
    [n] = story(gw, event["id"])["notifications"]
    assert n["status"] == "sent"  # it reached the person: the record must say so

    webhook_receiver.status = 500  # now an in-flight attempt that fails is not retried
    webhook_receiver.clear()
    second = raise_alarm(gw, "plant/slow2", "p", name="Slow 2")
    webhook_receiver.wait_for(1)
    assert ack(gw, second["id"]).status_code == 200
    time.sleep(1.5)
    assert webhook_receiver.count == 1
    [n] = story(gw, second["id"])["notifications"]
    assert n["status"] == "cancelled" and "not retried: acknowledged by maria" in n["lastError"]
