"""The Twilio SMS profile end to end: the official client -> (Prism ->) the emulator -> a phone,
and the phone's replies back through signed webhooks."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from lxml import etree
from twilio.request_validator import RequestValidator

from annunciator.plugins.twilio.service import TwilioService
from annunciator.testing.gateway import RunningGateway

from conftest import raise_alarm, story, wait_until

pytestmark = pytest.mark.twilio

MARIA, LI = "+15550100001", "+15550100002"


@pytest.fixture
def sms_gateway(gateway_config, start_gateway, twilio_emulator):
    """Start a gateway whose 'sms' profile sends through the emulator; returns (gateway, emulator)."""
    tw = twilio_emulator

    def start(pipelines: dict[str, Any] | None = None, *, sms: dict[str, Any] | None = None,
              account: dict[str, Any] | None = None) -> RunningGateway:
        port = gateway_config["gateway"]["http"]["port"]
        base = f"http://127.0.0.1:{port}"
        gateway_config["gateway"]["external_url"] = base
        tw.sms_url = f"{base}/twilio/sms"
        gateway_config["twilio"] = {"accounts": {"main": {
            "account_sid": tw.account_sid, "auth_token": tw.auth_token, "api_base": tw.api_base,
            "numbers": tw.numbers, "rate_limit": 0, **(account or {})}}}
        gateway_config["profiles"]["sms"] = {"type": "twilio-sms", **(sms or {})}
        gateway_config["pipelines"] = pipelines or {"page": {"blocks": [
            {"type": "notification", "roster": "operators", "profile": "sms",
             "message": "{priority} {displayPath}: {name}"}]}}
        return start_gateway(gateway_config)

    return start


def alarm(gw: RunningGateway, event_id: str) -> dict[str, Any]:
    return gw.client.get(f"/api/alarms/{event_id}").json()


def test_alarm_by_sms_acknowledged_by_replying_the_pin(sms_gateway, twilio_emulator):
    gw = sms_gateway()
    phone = twilio_emulator.phone(MARIA)
    event = raise_alarm(gw, "plant/pump1", "page", displayPath="Plant/Pump 1", name="Pump 1 tripped",
                        priority="High")
    sms = phone.expect_sms(contains="High Plant/Pump 1: Pump 1 tripped")
    assert f"[#{event['ackCode']}]" in sms.body
    assert "Reply HELP for help, STOP to opt out" in sms.body  # the first message from this sender

    answer = phone.reply("1234")
    confirmation = phone.expect_sms(contains="Acknowledged")
    assert f"#{event['ackCode']} Plant/Pump 1" in confirmation.body
    assert answer.replies == [confirmation.body] or confirmation.body in str(answer)
    now = alarm(gw, event["id"])
    assert now["acknowledged"] is True and now["ackUser"] == "maria"

    told = story(gw, event["id"])
    assert told["instances"][0]["status"] in ("done", "dropped")
    codes = [a["code"] for a in gw.client.get("/api/audit").json()["audit"]]
    assert {"NotificationSent", "SMSReply", "ReplyWithPIN", "Acknowledged"} <= set(codes)
    [ack_entry] = [a for a in gw.client.get("/api/audit", params={"code": "Acknowledged"}).json()["audit"]]
    assert ack_entry["channel"] == "sms"
    # the delivery report came back signed and is on the record
    wait_until(lambda: story(gw, event["id"])["notifications"][0]["deliveryStatus"] == "delivered")


def test_forged_and_replayed_webhooks_change_nothing(sms_gateway, twilio_emulator):
    gw = sms_gateway()
    phone = twilio_emulator.phone(MARIA)
    event = raise_alarm(gw, "plant/pump1", "page")
    phone.expect_sms()
    form = {"MessageSid": "SM" + "0" * 32, "AccountSid": twilio_emulator.account_sid, "From": MARIA,
            "To": twilio_emulator.numbers[0], "Body": "1234"}
    forged = httpx.post(f"{gw.url}/twilio/sms", data=form, headers={"X-Twilio-Signature": "forged"})
    assert forged.status_code == 403
    unsigned = httpx.post(f"{gw.url}/twilio/sms", data=form)
    assert unsigned.status_code == 403
    as_json = httpx.post(f"{gw.url}/twilio/sms", json=form, headers={"X-Twilio-Signature": "x"})
    assert as_json.status_code == 415
    assert alarm(gw, event["id"])["acknowledged"] is False

    first = phone.reply("1234")
    assert alarm(gw, event["id"])["acknowledged"] is True
    phone.expect_sms(contains="Acknowledged")
    # Twilio retries a webhook it thinks failed: the very same signed form, same MessageSid, must
    # be answered but act only once
    params = first.webhook.params
    signature = RequestValidator(twilio_emulator.auth_token).compute_signature(first.webhook.url, params)
    assert signature == first.webhook.signature
    for _ in range(2):
        again = httpx.post(f"{gw.url}/twilio/sms", data=params, headers={"X-Twilio-Signature": signature})
        assert again.status_code == 200 and again.headers["content-type"].startswith("text/xml")
        root = etree.fromstring(again.content)
        assert root.tag == "Response" and len(root) == 0  # answered, nothing said twice
    inbound = [a for a in gw.client.get("/api/audit", params={"code": "SMSReply"}).json()["audit"]]
    assert len(inbound) == 1
    acks = gw.client.get("/api/audit", params={"code": "Acknowledged"}).json()["audit"]
    assert len(acks) == 1
    assert len(gw.client.get("/api/audit", params={"code": "ReplyWithPIN"}).json()["audit"]) == 1
    phone.expect_no_sms(within=0.3)


def test_wrong_pins_lock_out_and_are_audited(sms_gateway, twilio_emulator, gateway_config):
    gateway_config["gateway"]["pins"] = {"failures": 3, "lockout": "15m"}
    gw = sms_gateway()
    phone = twilio_emulator.phone(MARIA)
    event = raise_alarm(gw, "plant/pump1", "page")
    phone.expect_sms()
    for _ in range(2):
        phone.reply("9999")
        assert phone.expect_sms(contains="Wrong PIN")
    phone.reply("9999")
    assert "locked until" in phone.expect_sms(contains="Too many wrong PINs").body
    phone.reply("1234")  # the right PIN, but locked
    phone.expect_sms(contains="Too many wrong PINs")
    assert alarm(gw, event["id"])["acknowledged"] is False
    codes = [a["code"] for a in gw.client.get("/api/audit", params={"user": "maria"}).json()["audit"]]
    assert codes.count("PinRejected") == 2 and "PinLockout" in codes
    assert gw.client.get("/api/users").json()["users"][0]["lockedUntil"]


def test_ack_by_code_within_a_pin_session_and_status(sms_gateway, twilio_emulator):
    gw = sms_gateway()
    phone = twilio_emulator.phone(MARIA)
    a = raise_alarm(gw, "plant/a", "page", displayPath="Plant/A")
    b = raise_alarm(gw, "plant/b", "page", displayPath="Plant/B")
    phone.expect_sms(contains="Plant/A")
    phone.expect_sms(contains="Plant/B")
    phone.reply("status 1234")
    status = phone.expect_sms(contains="2 unacknowledged")
    assert f"#{a['ackCode']} Plant/A" in status.body
    phone.reply(f"ack #{a['ackCode']} on my way")  # no PIN: the session from STATUS covers it
    phone.expect_sms(contains=f"Acknowledged #{a['ackCode']} Plant/A")
    assert alarm(gw, a["id"])["ackNotes"] == "on my way"
    assert alarm(gw, b["id"])["acknowledged"] is False
    phone.reply(f"ACK {a['ackCode']}")
    phone.expect_sms(contains="already acknowledged by maria")
    phone.reply("ACK 999")
    phone.expect_sms(contains="No open alarm #999")


def test_session_expiry_asks_for_the_pin_again(sms_gateway, twilio_emulator):
    gw = sms_gateway(sms={"pin_session": "1s"})
    phone = twilio_emulator.phone(MARIA)
    raise_alarm(gw, "plant/a", "page")
    phone.expect_sms()
    phone.reply("STATUS 1234")
    phone.expect_sms(contains="1 unacknowledged")
    time.sleep(1.2)
    phone.reply("STATUS")
    phone.expect_sms(contains="Send your PIN")


def test_stop_blocks_alarms_and_triggers_fallback_start_resumes(sms_gateway, twilio_emulator, gateway_config,
                                                                webhook_receiver):
    gw = sms_gateway({"page": {"blocks": [
        {"type": "notification", "roster": "operators", "profiles": ["sms", "hook"], "policy": "fallback",
         "message": "{name}"}]}})
    phone = twilio_emulator.phone(MARIA)
    raise_alarm(gw, "plant/a", "page", name="first")
    phone.expect_sms(contains="first")
    phone.reply("STOP")
    phone.expect_sms(contains="unsubscribed")  # Twilio's own confirmation, and nothing more
    second = raise_alarm(gw, "plant/b", "page", name="second")
    [hook] = webhook_receiver.wait_for(1)  # SMS refused: the next channel got it
    assert hook.json["message"] == "second"
    phone.expect_no_sms(within=0.3)
    failed = [n for n in story(gw, second["id"])["notifications"] if n["profile"] == "sms"]
    assert failed[0]["status"] == "failed" and "opted out" in failed[0]["lastError"]

    phone.reply("START")
    phone.expect_sms(contains="re-subscribed")
    raise_alarm(gw, "plant/c", "page", name="third")
    phone.expect_sms(contains="third")
    codes = [a["code"] for a in gw.client.get("/api/audit").json()["audit"]]
    assert "OptOut" in codes and "OptIn" in codes


def test_provider_opt_out_21610_marks_the_number(sms_gateway, twilio_emulator):
    gw = sms_gateway()
    twilio_emulator.phone(MARIA).send("STOP")  # Twilio records it; the gateway also hears it
    event = raise_alarm(gw, "plant/a", "page")
    n = wait_until(lambda: (ns := story(gw, event["id"])["notifications"]) and ns[0]["status"] == "failed" and ns[0])
    assert "opted out" in n["lastError"]


def test_unknown_sender_gets_one_polite_reply(sms_gateway, twilio_emulator):
    sms_gateway()
    stranger = twilio_emulator.phone("+15550109999")
    stranger.send("hello?")
    stranger.expect_sms(contains="not registered")
    stranger.send("hello??")
    stranger.send("ACK 1234")
    stranger.expect_no_sms(within=0.5)


def test_error_replies_are_bounded_and_free_text_is_not_answered(sms_gateway, twilio_emulator):
    gw = sms_gateway(sms={"max_error_replies": 2})
    phone = twilio_emulator.phone(MARIA)
    for _ in range(4):
        phone.send("STATUS")  # a command without the PIN: the answer asks for it, twice at most
    phone.expect_sms(contains="Send your PIN")
    phone.expect_sms(contains="Send your PIN")
    phone.expect_no_sms(within=0.3)
    phone.send("running late, there in 10")  # words for people: logged, read in the console
    phone.expect_no_sms(within=0.5)
    logged = gw.client.get("/api/audit", params={"code": "SMSReply"}).json()["audit"]
    assert logged[-1]["text"] == "running late, there in 10"


def test_without_credentials_the_gateway_texts_through_its_builtin_emulator(gateway_config, start_gateway):
    gateway_config["twilio"] = {"accounts": {"main": {}}}
    gateway_config["profiles"]["sms"] = {"type": "twilio-sms"}
    gateway_config["pipelines"] = {"page": {"blocks": [
        {"type": "notification", "roster": "operators", "profile": "sms", "message": "{name}"}]}}
    gw = start_gateway(gateway_config)
    emulator = gw.gateway.services.state.get(TwilioService).accounts["main"].emulator
    assert emulator is not None
    phone = emulator.phone(MARIA)
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    phone.expect_sms(contains="Pump 1 tripped")
    phone.reply("1234")
    phone.expect_sms(contains="Acknowledged")
    assert alarm(gw, event["id"])["acknowledged"] is True


def test_conversation_history_keeps_both_directions(sms_gateway, twilio_emulator):
    gw = sms_gateway()
    phone = twilio_emulator.phone(MARIA)
    raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    phone.expect_sms()
    phone.reply("1234")
    phone.expect_sms(contains="Acknowledged")
    history = gw.client.get("/api/sms/messages", params={"number": MARIA}).json()["messages"]
    assert [(m["direction"], m["user"]) for m in history] == [("out", "maria"), ("in", "maria"), ("out", "maria")]
    assert history[1]["body"] == "****" and history[2]["body"].startswith("Acknowledged")  # no PIN kept
    replies = gw.client.get("/api/audit", params={"code": "SMSReply"}).json()["audit"]
    assert [a["text"] for a in replies] == ["****"]
    assert httpx.get(f"{gw.url}/api/sms/messages").status_code == 401  # the API token is required


def test_a_late_ack_code_does_not_hit_a_newer_alarm(sms_gateway, twilio_emulator):
    """Codes count up before any is reused: #1 of a finished alarm is not given to the next one."""
    gw = sms_gateway()
    phone = twilio_emulator.phone(MARIA)
    first = raise_alarm(gw, "plant/a", "page")
    phone.expect_sms()
    assert gw.client.post(f"/api/alarms/{first['id']}/acknowledge", json={"user": "li"}).status_code == 200
    assert gw.client.post(f"/api/alarms/{first['id']}/clear", json={}).status_code == 200
    second = raise_alarm(gw, "plant/b", "page")
    assert second["ackCode"] != first["ackCode"]
    phone.expect_sms()
    phone.reply(f"ACK {first['ackCode']} 1234")
    phone.expect_sms(contains=f"No open alarm #{first['ackCode']}")
    assert alarm(gw, second["id"])["acknowledged"] is False


@pytest.mark.parametrize("account, message", [
    ({"account_sid": "", "emulator": False}, "account_sid: required (emulator: false)"),
    ({"account_sid": "", "auth_token": "secret"}, "account_sid: empty while auth_token is set"),
])
def test_missing_credentials_are_a_config_error_not_a_silent_emulator(gateway_config, start_gateway, account,
                                                                        message):
    from annunciator.core.errors import ConfigError

    gateway_config["twilio"] = {"accounts": {"main": account}}
    gateway_config["profiles"]["sms"] = {"type": "twilio-sms"}
    with pytest.raises(ConfigError) as err:
        start_gateway(gateway_config)
    assert "twilio.accounts.main" in str(err.value) and message in str(err.value)


def test_a_shared_handset_is_told_apart_by_pin(sms_gateway, twilio_emulator, gateway_config):
    gateway_config["users"]["li"]["contacts"] = {"sms": MARIA}  # the control-room phone
    gateway_config["users"]["li"]["pin"] = "5678"
    gateway_config["rosters"]["operators"] = ["maria", "li"]
    gw = sms_gateway()
    phone = twilio_emulator.phone(MARIA)
    event = raise_alarm(gw, "plant/a", "page")
    phone.expect_sms()
    phone.expect_sms()
    phone.reply("5678")
    phone.expect_sms(contains="Acknowledged")
    assert alarm(gw, event["id"])["ackUser"] == "li"
    users = {u["username"]: u for u in gw.client.get("/api/users").json()["users"]}
    assert not users["maria"]["lockedUntil"]  # li's PIN did not count as maria's wrong one
