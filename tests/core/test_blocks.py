"""Every pipeline block, through a running gateway: what reaches the webhook receiver, what the
HTTP API answers, and what the trace and journal record."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from annunciator import hookimpl
from annunciator.core.config import StrictModel
from annunciator.core.profiles import DeliveryResult, NotificationProfile

from conftest import ack, raise_alarm, story


def until(check: Callable[[], Any], timeout: float = 5.0, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(every)


def instances(gw, event_id: str) -> list[dict[str, Any]]:
    r = gw.client.get("/api/instances", params={"eventId": event_id})
    assert r.status_code == 200, r.text
    return r.json()["instances"]


def statuses(gw, event_id: str) -> dict[str, str]:
    return {i["pipeline"]: i["status"] for i in instances(gw, event_id)}


def messages(receiver) -> list[str]:
    return [q.json["message"] for q in receiver.requests]


def traced(gw, event_id: str, action: str) -> list[dict[str, Any]]:
    return [t for t in story(gw, event_id)["trace"] if t["action"] == action]


def notify(message: str, roster: str = "operators", **extra: Any) -> dict[str, Any]:
    return {"type": "notification", "profile": "hook", "roster": roster, "message": message, **extra}


# --- notification ------------------------------------------------------------------------------

def test_notification_renders_event_values_and_properties(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"page": {"blocks": [
        notify("{displayPath} is {eventValue} in {area} ({priority}, {state}); {unknown} {{x}}")]}})
    event = raise_alarm(gw, "plant/tank3/level", "page", displayPath="Plant/Tank 3", eventValue=97.5,
                        priority="Critical", properties={"area": "North yard"})
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "Plant/Tank 3 is 97.5 in North yard (Critical, ActiveUnacked); {unknown} {x}"
    assert req.json["user"]["username"] == "maria"
    assert req.json["events"][0]["id"] == event["id"]
    assert req.json["pipeline"] == "page"
    [n] = until(lambda: [n for n in story(gw, event["id"])["notifications"] if n["status"] == "sent"])
    assert n["message"] == req.json["message"] and n["profile"] == "hook" and n["block"] == "notification-1"


def test_notification_through_two_profiles_sends_twice(gateway_config, pipeline_gateway, webhook_receiver):
    gateway_config["profiles"]["second"] = {"type": "webhook", "url": webhook_receiver.base_url + "/second"}
    gw = pipeline_gateway({"page": {"blocks": [
        {"type": "notification", "profiles": ["hook", "second"], "roster": "supervisors",
         "message": "pump {name}"}]}})
    event = raise_alarm(gw, "plant/pump7", "page", name="P7")
    reqs = webhook_receiver.wait_for(2)
    time.sleep(0.3)
    assert webhook_receiver.count == 2
    assert sorted(q.path for q in reqs) == ["/hook", "/second"]
    assert {q.json["message"] for q in reqs} == {"pump P7"}
    assert {q.json["user"]["username"] for q in reqs} == {"li"}
    # two notifications, two different idempotency keys
    assert len({q.headers["idempotency-key"] for q in reqs}) == 2
    notes = traced(gw, event["id"], "notify")
    assert sorted(t["why"].split(" (")[0] for t in notes) == ["li via hook", "li via second"]


def test_empty_roster_is_a_visible_failure(gateway_config, pipeline_gateway, webhook_receiver):
    gateway_config["rosters"]["nobody"] = []
    gw = pipeline_gateway({"page": {"blocks": [
        notify("to nobody", roster="nobody"), notify("fallback")]}})
    event = raise_alarm(gw, "plant/x", "page")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "fallback"
    [failed] = traced(gw, event["id"], "notify-failed")
    assert failed["why"] == "nobody on call in roster nobody and no fallback roster"
    assert failed["block"] == "notification-1"
    # journaled and audited, not only traced
    told = story(gw, event["id"])
    assert [j["notes"] for j in told["journal"] if j["action"] == "notify-failed"] == [
        "nobody on call in roster nobody"]
    assert [a["code"] for a in told["audit"]].count("NobodyOnCall") == 1


class _RelaySettings(StrictModel):
    url: str


class _SmsRelay(NotificationProfile):
    """A profile that needs an ``sms`` contact; it relays to the test receiver."""

    type_name = "sms-relay"
    Settings = _RelaySettings
    contact_types = ("sms",)

    async def send(self, notification):
        async with httpx.AsyncClient() as client:
            r = await client.post(self.settings.url, json={
                "message": notification.message, "to": notification.contact,
                "user": notification.user.to_dict()})
        return DeliveryResult.sent() if r.is_success else DeliveryResult.failed(f"HTTP {r.status_code}")


class _RelayPlugin:
    @hookimpl
    def annunciator_profile_types(self):
        return [_SmsRelay]


def test_user_without_usable_contact_is_a_visible_failure(gateway_config, start_gateway, webhook_receiver):
    gateway_config["profiles"]["sms"] = {"type": "sms-relay", "url": webhook_receiver.base_url + "/sms"}
    gateway_config["rosters"]["mixed"] = ["maria", "sam"]  # sam has only an email address
    gateway_config["pipelines"] = {"page": {"blocks": [
        {"type": "notification", "profile": "sms", "roster": "mixed", "message": "{name}"}]}}
    gw = start_gateway(gateway_config, plugins=[_RelayPlugin()])
    event = raise_alarm(gw, "plant/y", "page", name="Y tripped")
    [req] = webhook_receiver.wait_for(1)
    time.sleep(0.3)
    assert webhook_receiver.count == 1
    assert req.path == "/sms" and req.json == {"message": "Y tripped", "to": "+15550100001",
                                                "user": req.json["user"]}
    assert req.json["user"]["username"] == "maria"
    [failed] = traced(gw, event["id"], "notify-failed")
    assert failed["why"] == "sam cannot be reached: no sms contact for profile sms"
    [ok] = traced(gw, event["id"], "notify")
    assert ok["why"].startswith("maria via sms (+15550100001)")


# --- delay -------------------------------------------------------------------------------------

def test_delay_holds_the_next_block(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"page": {"blocks": [
        notify("first"), {"type": "delay", "name": "hold", "delay": "0.5s"}, notify("second")]}})
    before = time.monotonic()
    event = raise_alarm(gw, "plant/delay", "page")
    webhook_receiver.wait_for(1)
    time.sleep(0.2)
    assert messages(webhook_receiver) == ["first"]
    second = webhook_receiver.wait_for(2)[1]
    assert second.json["message"] == "second"
    assert second.received_at - before >= 0.5  # the hold starts after the raise: never early
    [wait] = traced(gw, event["id"], "wait")
    assert wait["block"] == "hold" and wait["why"] == "delay 0.5s"
    assert until(lambda: statuses(gw, event["id"]) == {"page": "done"})


# --- splitter ----------------------------------------------------------------------------------

def test_splitter_fans_out_and_instance_ends_when_every_branch_ends(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"fan": {"blocks": [
        {"type": "splitter", "outputs": ["ops", "later"]},
        notify("ops {name}", name="ops", next="end"),
        {"type": "delay", "name": "later", "delay": "0.5s"},
        notify("sup {name}", roster="supervisors")]}})
    event = raise_alarm(gw, "plant/fan", "fan", name="Fan")
    [first] = webhook_receiver.wait_for(1)
    assert first.json["message"] == "ops Fan" and first.json["user"]["username"] == "maria"
    # one branch has ended, the other still waits: the instance runs on
    [inst] = instances(gw, event["id"])
    assert inst["status"] == "running"
    assert [b["block"] for b in inst["branches"]] == ["later"]
    second = webhook_receiver.wait_for(2)[1]
    assert second.json["message"] == "sup Fan" and second.json["user"]["username"] == "li"
    assert until(lambda: statuses(gw, event["id"]) == {"fan": "done"})
    leave = [t for t in traced(gw, event["id"], "leave") if t["block"] == "splitter-1"]
    assert leave[0]["why"] == "split to ops, later"
    assert {t["branch"] for t in traced(gw, event["id"], "enter")} == {0, 1}


# --- switch ------------------------------------------------------------------------------------

def test_switch_routes_on_priority(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"route": {"blocks": [
        {"type": "switch", "expression": "priority", "cases": {"Critical": "urgent", "High": "urgent"},
         "default": "routine"},
        notify("urgent {priority}", name="urgent", roster="supervisors", next="end"),
        notify("routine {priority}", name="routine")]}})
    crit = raise_alarm(gw, "plant/a", "route", priority="Critical")
    webhook_receiver.wait_for(1)
    raise_alarm(gw, "plant/b", "route", priority="high")
    webhook_receiver.wait_for(2)
    low = raise_alarm(gw, "plant/c", "route", priority="Low")
    reqs = webhook_receiver.wait_for(3)
    assert [(q.json["message"], q.json["user"]["username"]) for q in reqs] == [
        ("urgent Critical", "li"), ("urgent High", "li"), ("routine Low", "maria")]
    [why] = [t["why"] for t in traced(gw, crit["id"], "leave") if t["block"] == "switch-1"]
    assert why == "priority = Critical: case 'Critical'"
    [why] = [t["why"] for t in traced(gw, low["id"], "leave") if t["block"] == "switch-1"]
    assert why == "priority = Low: no case matched; default"


# --- expression --------------------------------------------------------------------------------

def test_expression_routes_true_and_false(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"check": {"blocks": [
        {"type": "expression", "expression": 'eventValue > 10 and priority >= "High"',
         "true": "big", "false": "small"},
        notify("big {eventValue}", name="big", next="end"),
        notify("small {eventValue}", name="small")]}})
    raise_alarm(gw, "plant/a", "check", eventValue=42, priority="High")
    webhook_receiver.wait_for(1)
    raise_alarm(gw, "plant/b", "check", eventValue=42, priority="Medium")
    webhook_receiver.wait_for(2)
    low = raise_alarm(gw, "plant/c", "check", eventValue=3, priority="Critical")
    webhook_receiver.wait_for(3)
    assert messages(webhook_receiver) == ["big 42", "small 42", "small 3"]
    [why] = [t["why"] for t in traced(gw, low["id"], "leave") if t["block"] == "expression-1"]
    assert why == "eventValue > 10 and priority >= \"High\" is False"


def test_expression_error_is_taken_as_false_and_traced(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"check": {"blocks": [
        {"type": "expression", "expression": "flowRate > 10", "false": "fallback"},
        notify("true path", next="end"),
        notify("false path", name="fallback")]}})
    event = raise_alarm(gw, "plant/a", "check")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "false path"
    [why] = [t["why"] for t in traced(gw, event["id"], "leave") if t["block"] == "expression-1"]
    assert why.startswith("expression failed (") and why.endswith("); taken as false")
    assert "flowRate" in why and "undefined" in why


# --- set-property --------------------------------------------------------------------------------

def test_set_property_counter_drives_a_loop(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"callout": {"blocks": [
        {"type": "set-property", "name": "count", "property": "numCalls",
         "expression": "numCalls|default(0) + 1"},
        notify("call {numCalls}"),
        {"type": "expression", "expression": "numCalls < 3"},
        {"type": "delay", "delay": "0.2s", "next": "count"}]}})
    event = raise_alarm(gw, "plant/loop", "callout")
    webhook_receiver.wait_for(3)
    time.sleep(0.6)  # a fourth call would have come by now
    assert messages(webhook_receiver) == ["call 1", "call 2", "call 3"]
    [inst] = until(lambda: [i for i in instances(gw, event["id"]) if i["status"] == "done"])
    assert inst["properties"] == {"numCalls": 3}
    sets = [t["why"] for t in traced(gw, event["id"], "leave") if t["block"] == "count"]
    assert sets == ["numCalls = 1", "numCalls = 2", "numCalls = 3"]


# --- jump --------------------------------------------------------------------------------------

def test_jump_moves_the_event_into_another_pipeline(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({
        "first": {"blocks": [
            {"type": "set-property", "property": "origin", "expression": '"first"'},
            {"type": "jump", "pipeline": "second"},
            notify("never sent")]},
        "second": {"blocks": [notify("in second, from {origin}")]},
    })
    event = raise_alarm(gw, "plant/jump", "first")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "in second, from first"
    assert req.json["pipeline"] == "second"
    assert until(lambda: statuses(gw, event["id"]) == {"first": "jumped", "second": "done"})
    first = next(i for i in instances(gw, event["id"]) if i["pipeline"] == "first")
    assert first["endReason"] == "jump to second"
    time.sleep(0.2)
    assert webhook_receiver.count == 1


def test_jump_from_one_branch_of_a_split_leaves_the_other_running(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({
        "p1": {"blocks": [
            {"type": "splitter", "outputs": ["hold", "go"]},
            {"type": "delay", "name": "hold", "delay": "0.3s"},
            notify("after the delay", next="end"),
            {"type": "jump", "name": "go", "pipeline": "p2"}]},
        "p2": {"blocks": [notify("in p2", roster="supervisors")]},
    })
    event = raise_alarm(gw, "plant/split-jump", "p1")
    reqs = webhook_receiver.wait_for(2)
    assert [q.json["message"] for q in reqs] == ["in p2", "after the delay"]
    assert until(lambda: statuses(gw, event["id"]) == {"p1": "done", "p2": "done"})


def test_last_branch_jumping_ends_the_instance_as_jumped(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({
        "p1": {"blocks": [
            {"type": "splitter", "outputs": ["a", "b"]},
            notify("a", name="a", next="end"),
            {"type": "delay", "name": "b", "delay": "0.2s"},
            {"type": "jump", "pipeline": "p2"}]},
        "p2": {"blocks": [notify("in p2")]},
    })
    event = raise_alarm(gw, "plant/split-jump", "p1")
    reqs = webhook_receiver.wait_for(2)
    assert [q.json["message"] for q in reqs] == ["a", "in p2"]
    assert until(lambda: statuses(gw, event["id"]) == {"p1": "jumped", "p2": "done"})


# --- escalate ----------------------------------------------------------------------------------

def test_escalate_repeats_the_ladder_then_goes_on(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"esc": {"blocks": [
        {"type": "escalate", "profile": "hook", "message": "esc {name}", "repeat": 1,
         "tiers": [{"roster": "operators", "wait": "0.2s"}, {"roster": "supervisors", "wait": "0.2s"}]},
        notify("nobody answered {name}", roster="managers")]}})
    event = raise_alarm(gw, "plant/esc", "esc", name="E1")
    reqs = webhook_receiver.wait_for(5)
    time.sleep(0.4)
    assert [(q.json["user"]["username"], q.json["message"]) for q in webhook_receiver.requests] == [
        ("maria", "esc E1"), ("li", "esc E1"), ("maria", "esc E1"), ("li", "esc E1"),
        ("sam", "nobody answered E1")]
    # each tier waited its turn: four waits of 0.2 s lie between the first and the last send.
    # (Single gaps between arrivals jitter with send times under load; their sum cannot shrink
    # by more than the first send's delay.)
    assert reqs[-1].received_at - reqs[0].received_at >= 0.7
    waits = [t["why"] for t in traced(gw, event["id"], "wait")]
    assert waits[0].startswith("tier 1 (operators, round 1): 1 notification(s)")
    assert waits[3].startswith("tier 2 (supervisors, round 2)")
    [done] = [t["why"] for t in traced(gw, event["id"], "leave") if t["block"] == "escalate-1"]
    assert done == "no acknowledgement after 2 round(s) of every tier"


def test_escalate_stops_on_ack_even_without_ack_dropout(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"esc": {"dropout": ["cleared"], "blocks": [
        {"type": "escalate", "profile": "hook", "message": "esc",
         "tiers": [{"roster": "operators", "wait": "5s"}, {"roster": "supervisors", "wait": "5s"}]},
        notify("after escalation", roster="managers")]}})
    event = raise_alarm(gw, "plant/esc", "esc")
    webhook_receiver.wait_for(1)
    assert ack(gw, event["id"], "maria").status_code == 200
    reqs = webhook_receiver.wait_for(2, timeout=3)
    assert [q.json["message"] for q in reqs] == ["esc", "after escalation"]
    [why] = [t["why"] for t in traced(gw, event["id"], "leave") if t["block"] == "escalate-1"]
    assert why == "acknowledged by maria"


# --- script ------------------------------------------------------------------------------------

def test_script_sets_state_used_by_the_next_block(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"s": {"blocks": [
        {"type": "script", "name": "double", "code": 'state["x"] = event["eventValue"] * 2\n'},
        notify("doubled: {x}")]}})
    event = raise_alarm(gw, "plant/s", "s", eventValue=21)
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "doubled: 42"
    [why] = [t["why"] for t in traced(gw, event["id"], "leave") if t["block"] == "double"]
    assert why == "script ran"


def test_failing_script_goes_to_its_error_block_and_names_the_line(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"s": {"blocks": [
        {"type": "script", "name": "broken", "error": "oops",
         "code": 'x = 1\nraise ValueError("boom " + str(x))\n'},
        notify("script ok", next="end"),
        notify("script failed on {displayPath}", name="oops")]}})
    event = raise_alarm(gw, "plant/s", "s")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "script failed on plant/s"
    [why] = [t["why"] for t in traced(gw, event["id"], "leave") if t["block"] == "broken"]
    assert why == "script error: <s.broken>:2: ValueError: boom 1"


# --- dropout -----------------------------------------------------------------------------------

def test_empty_dropout_keeps_running_after_ack(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"stubborn": {"dropout": [], "blocks": [
        notify("one"), {"type": "delay", "delay": "0.3s"}, notify("two")]}})
    event = raise_alarm(gw, "plant/d", "stubborn")
    webhook_receiver.wait_for(1)
    assert ack(gw, event["id"]).status_code == 200
    webhook_receiver.wait_for(2)
    assert messages(webhook_receiver) == ["one", "two"]
    assert until(lambda: statuses(gw, event["id"]) == {"stubborn": "done"})


def test_clear_ends_a_pipeline_with_default_dropout(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"p": {"blocks": [
        notify("one"), {"type": "delay", "delay": "0.4s"}, notify("two")]}})
    event = raise_alarm(gw, "plant/d", "p")
    webhook_receiver.wait_for(1)
    r = gw.client.post(f"/api/alarms/{event['id']}/clear", json={"user": "li"})
    assert r.status_code == 200, r.text
    assert r.json()["events"][0]["state"] == "ClearUnacked"
    time.sleep(0.7)
    assert messages(webhook_receiver) == ["one"]
    [inst] = instances(gw, event["id"])
    assert (inst["status"], inst["endReason"]) == ("dropped", "cleared by li")


def test_shelving_ends_the_pipeline_and_silences_new_raises(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"p": {"blocks": [
        notify("one {source}"), {"type": "delay", "delay": "0.4s"}, notify("two {source}")]}})
    event = raise_alarm(gw, "plant/shelf", "p")
    webhook_receiver.wait_for(1)
    r = gw.client.post("/api/shelve", json={"sources": ["plant/shelf"], "minutes": 1, "user": "li"})
    assert r.status_code == 200, r.text
    [inst] = instances(gw, event["id"])
    assert (inst["status"], inst["endReason"]) == ("dropped", "shelved by li")
    assert gw.client.post(f"/api/alarms/{event['id']}/clear", json={}).status_code == 200
    again = raise_alarm(gw, "plant/shelf", "p")
    assert again["id"] != event["id"] and again["shelved"] is True
    time.sleep(0.7)
    assert messages(webhook_receiver) == ["one plant/shelf"]
    assert instances(gw, again["id"]) == []
    journal = story(gw, again["id"])["journal"]
    assert [j["action"] for j in journal] == ["active", "shelved"]
    assert [s["source"] for s in gw.client.get("/api/shelved").json()["shelved"]] == ["plant/shelf"]


# --- clear pipeline and ack modes -------------------------------------------------------------

def test_cleared_pipeline_runs_on_clear_and_auto_ack_acknowledges(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({
        "on": {"blocks": [notify("active {name}")]},
        "off": {"blocks": [notify("cleared {name} ({state}, acked by {ackUser})", roster="supervisors")]},
    })
    event = raise_alarm(gw, "plant/auto", name="Auto", ackMode="auto",
                        pipelines={"active": "on", "cleared": "off"})
    webhook_receiver.wait_for(1)
    r = gw.client.post(f"/api/alarms/{event['id']}/clear", json={})
    assert r.status_code == 200, r.text
    reqs = webhook_receiver.wait_for(2)
    assert [(q.json["message"], q.json["user"]["username"]) for q in reqs] == [
        ("active Auto", "maria"), ("cleared Auto (ClearAcked, acked by system)", "li")]
    s = story(gw, event["id"])
    assert [(j["action"], j["user"]) for j in s["journal"]] == [
        ("active", None), ("cleared", None), ("acknowledged", "system")]
    assert s["journal"][2]["notes"] == "auto-acknowledged on clear"
    assert s["event"]["state"] == "ClearAcked"
    assert sorted(i["pipeline"] for i in s["instances"]) == ["off", "on"]


def test_manual_ack_mode_stays_unacknowledged_on_clear(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"off": {"blocks": [notify("cleared {name} ({state})")]}})
    event = raise_alarm(gw, "plant/manual", name="M", pipelines={"cleared": "off"})
    time.sleep(0.2)
    assert webhook_receiver.count == 0
    assert gw.client.post(f"/api/alarms/{event['id']}/clear", json={}).status_code == 200
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "cleared M (ClearUnacked)"
    assert [j["action"] for j in story(gw, event["id"])["journal"]] == ["active", "cleared"]


def test_acknowledged_pipeline_runs_on_ack(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"acked": {"blocks": [notify("{name} acknowledged by {ackUser}: {state}",
                                                       roster="supervisors")]}})
    event = raise_alarm(gw, "plant/ack", name="Ack me", pipelines={"acknowledged": "acked"})
    assert ack(gw, event["id"], "maria", "seen").status_code == 200
    [req] = webhook_receiver.wait_for(1)
    assert req.json["message"] == "Ack me acknowledged by maria: ActiveAcked"
    assert req.json["user"]["username"] == "li"


# --- pipeline status API ------------------------------------------------------------------------

def test_instances_api_shows_the_block_and_cancel_stops_it(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"p": {"blocks": [
        notify("one"), {"type": "delay", "name": "hold", "delay": "0.6s"}, notify("two")]}})
    event = raise_alarm(gw, "plant/status", "p")
    webhook_receiver.wait_for(1)
    time.sleep(0.1)
    r = gw.client.get("/api/instances")
    assert r.status_code == 200
    [inst] = r.json()["instances"]
    assert inst["eventId"] == event["id"] and inst["pipeline"] == "p" and inst["status"] == "running"
    [branch] = inst["branches"]
    assert branch["block"] == "hold" and branch["blockType"] == "delay"
    assert 0.05 <= branch["timeInBlock"] < 0.6
    assert branch["wakeAt"] is not None
    running = gw.client.get("/api/pipelines").json()["pipelines"]
    assert [(p["name"], p["running"]) for p in running] == [("p", 1)]

    r = gw.client.post(f"/api/instances/{inst['id']}/cancel", json={"user": "li"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["endReason"]) == ("cancelled", "cancelled by li")
    time.sleep(0.8)
    assert messages(webhook_receiver) == ["one"]
    assert gw.client.get("/api/instances").json()["instances"] == []
    assert gw.client.post(f"/api/instances/{inst['id']}/cancel", json={}).status_code == 404
    [cancel] = traced(gw, event["id"], "cancelled")
    assert cancel["why"] == "cancelled by li"


def test_escalate_with_ack_mode_unused_notifies_first_tier_once(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"esc": {"blocks": [
        {"type": "escalate", "profile": "hook", "message": "{name}",
         "tiers": [{"roster": "operators", "wait": "0.2s"}, {"roster": "supervisors", "wait": "0.2s"}]}]}})
    event = raise_alarm(gw, "plant/info", "esc", name="Door open", ackMode="unused")
    [req] = webhook_receiver.wait_for(1)
    assert req.json["user"]["username"] == "maria"
    time.sleep(0.8)
    assert webhook_receiver.count == 1
    whys = [t["why"] for t in story(gw, event["id"])["trace"] if t["action"] == "leave"]
    assert any("ack mode unused" in w for w in whys)
