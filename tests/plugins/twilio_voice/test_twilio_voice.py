"""The Twilio voice profile end to end: the official client -> (Prism ->) the emulator, which answers
the call as Maria's phone and walks the gateway's TwiML flow with lxml, pressing keys like a person."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from twilio.request_validator import RequestValidator

from annunciator.core.alarms import AlarmEvent, Priority
from annunciator.core.services import PluginState
from annunciator.plugins.twilio_voice.flow import Speaker, VoiceFlow
from annunciator.plugins.twilio_voice.profile import VoiceSettings
from annunciator.plugins.twilio_voice.state import CallSession
from annunciator.plugins.twilio_voice.twiml import InvalidTwiml, parse_and_validate, to_xml
from annunciator.testing.gateway import RunningGateway

from conftest import raise_alarm, story, wait_until

pytestmark = pytest.mark.twilio

MARIA, LI = "+15550100001", "+15550100002"


@pytest.fixture
def voice_gateway(gateway_config, start_gateway, twilio_emulator, tmp_path):
    """Start a gateway whose 'voice' (and 'sms') profiles use the emulator; Maria has a phone."""
    tw = twilio_emulator

    def start(*, voice: dict[str, Any] | None = None, profiles: list[str] | None = None,
              policy: str | None = None, script: str | None = None, message: str = "{name}",
              **block_extra: Any) -> RunningGateway:
        port = gateway_config["gateway"]["http"]["port"]
        base = f"http://127.0.0.1:{port}"
        gateway_config["gateway"]["external_url"] = base
        tw.sms_url = f"{base}/twilio/sms"
        gateway_config["twilio"] = {"accounts": {"main": {
            "account_sid": tw.account_sid, "auth_token": tw.auth_token, "api_base": tw.api_base,
            "numbers": tw.numbers, "rate_limit": 0}}}
        gateway_config["users"]["maria"]["contacts"] = {"phone": MARIA, "sms": MARIA}
        if script is not None:
            scripts = tmp_path / "scripts"
            scripts.mkdir(exist_ok=True)
            (scripts / "call.py").write_text(script)
            voice = {**(voice or {}), "script": "call.py"}
        gateway_config["profiles"]["voice"] = {"type": "twilio-voice", **(voice or {})}
        gateway_config["profiles"]["sms"] = {"type": "twilio-sms"}
        block: dict[str, Any] = {"type": "notification", "roster": "operators", "profiles": profiles or ["voice"],
                                 "message": message}
        if policy:
            block["policy"] = policy
        block.update(block_extra)
        gateway_config["pipelines"] = {"page": {"blocks": [block]}}
        return start_gateway(gateway_config)

    return start


def alarm(gw: RunningGateway, event_id: str) -> dict[str, Any]:
    return gw.client.get(f"/api/alarms/{event_id}").json()


def audit(gw: RunningGateway, code: str) -> list[dict[str, Any]]:
    return gw.client.get("/api/audit", params={"code": code}).json()["audit"]


def served_twiml(tw: Any) -> list[etree._Element]:
    """Every TwiML document the gateway served to the emulator, parsed with lxml and checked against
    the schema (this fails the test on any answer that is not valid TwiML)."""
    docs = []
    for cb in tw.callbacks:
        if cb.kind in ("voice", "voice-fallback") and cb.status == 200:
            docs.append(parse_and_validate(cb.body))
        elif cb.kind in ("voice", "voice-fallback"):
            raise AssertionError(f"{cb.url} answered {cb.status}: {cb.body!r}")
    assert docs, "no TwiML was served"
    return docs


def test_call_pin_alarm_press_1_acknowledges_and_counts_minutes(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway(message="Pump 1 tripped")
    event = raise_alarm(gw, "plant/pump1", "page", displayPath="Plant/Pump 1", name="Pump 1 tripped",
                        priority="High")
    call = tw.phone(MARIA).expect_call(contains="enter your PIN")
    call.expect_say("This is annunciator with 1 alarm for Maria Lopez.")
    call.press("1234#")
    heard = call.expect_say("Alarm 1 of 1.")
    assert "High priority. Plant, Pump 1. Pump 1 tripped. At " in heard
    call.expect_say("Press 1 to acknowledge")
    assert alarm(gw, event["id"])["acknowledged"] is False
    call.elapse(61)
    call.press("1")
    call.expect_say("Alarm acknowledged.")
    call.expect_say("There are no more unacknowledged alarms.")
    call.wait_ended()
    assert call.events[-1][0] == "Hangup"

    now = alarm(gw, event["id"])
    assert now["acknowledged"] is True and now["ackUser"] == "maria"
    [ack] = audit(gw, "Acknowledged")
    assert ack["channel"] == "voice" and ack["user"] == "maria"
    assert story(gw, event["id"])["instances"][0]["status"] in ("done", "dropped")
    # the completed callback carried the duration: 61 s and a bit -> 2 minutes, as Twilio bills
    stats = wait_until(lambda: (s := gw.client.get("/api/voice/stats").json())["total"]["minutesSent"] and s)
    assert stats["total"] == {"callsSent": 1, "callsReceived": 0, "minutesSent": 2, "minutesReceived": 0}
    assert stats["users"]["maria"]["callsSent"] == 1
    wait_until(lambda: story(gw, event["id"])["notifications"][0]["deliveryStatus"] == "completed")

    [placed] = [r for r in tw.requests if r.path.endswith("/Calls.json")]
    assert placed.status == 201
    [created] = tw.find_calls(to=MARIA)
    assert created.machine_detection == "DetectMessageEnd" and created.fallback_url.endswith(
        f"/twilio/voice/fallback/{created.url.rsplit('/', 1)[1]}")
    assert set(created.status_callback_events) == {"initiated", "ringing", "answered", "completed"}
    assert len(served_twiml(tw)) >= 3


def test_wrong_pin_three_times_locks_out(voice_gateway, twilio_emulator, gateway_config):
    gateway_config["gateway"]["pins"] = {"failures": 3}  # one policy for every channel
    gw = voice_gateway()
    event = raise_alarm(gw, "plant/pump1", "page")
    call = twilio_emulator.phone(MARIA).expect_call()
    for _ in range(2):
        call.press("9999#")
        assert call.says[-2] == "That PIN is not correct."
    call.press("9999#")
    call.expect_say("Too many wrong PINs. You are locked out until")
    call.wait_ended()
    assert "Alarm 1 of 1" not in " ".join(call.says)
    assert alarm(gw, event["id"])["acknowledged"] is False
    assert len(audit(gw, "PinRejected")) == 2 and len(audit(gw, "PinLockout")) == 1
    users = gw.client.get("/api/users").json()
    maria = next(u for u in (users["users"] if isinstance(users, dict) else users) if u["username"] == "maria")
    assert maria["lockedUntil"] is not None
    served_twiml(twilio_emulator)


def test_no_input_twice_hangs_up_and_falls_back_to_sms(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway(profiles=["voice", "sms"], policy="fallback")
    event = raise_alarm(gw, "plant/pump1", "page", name="Tank 3 high")
    call = tw.phone(MARIA).expect_call()
    call.no_input()
    call.expect_say("Sorry, I did not hear anything.")
    call.no_input()
    call.wait_ended()
    assert call.says[-1] == "Goodbye." and call.events[-1][0] == "Hangup"
    sms = tw.phone(MARIA).expect_sms(contains="Tank 3 high", timeout=10)
    assert f"#{event['ackCode']}" in sms.body
    assert [a["channel"] for a in audit(gw, "ChannelFallback")] == ["sms"]
    served_twiml(tw)


@pytest.mark.parametrize("behavior", ["busy", "no-answer"])
def test_busy_or_no_answer_falls_back_to_sms(voice_gateway, twilio_emulator, behavior):
    tw = twilio_emulator
    phone = tw.phone(MARIA)
    if behavior == "busy":
        phone.reject_calls()
    else:
        phone.call_behavior = behavior
    gw = voice_gateway(profiles=["voice", "sms"], policy="fallback")
    event = raise_alarm(gw, "plant/pump1", "page", name="Tank 3 high")
    phone.expect_sms(contains="Tank 3 high", timeout=10)
    [call] = tw.find_calls(to=MARIA)
    assert call.status == behavior
    told = story(gw, event["id"])
    voice = next(n for n in told["notifications"] if n["profile"] == "voice")
    assert voice["deliveryStatus"] == behavior


def test_forged_signature_is_refused_and_changes_nothing(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway()
    event = raise_alarm(gw, "plant/pump1", "page")
    call = tw.phone(MARIA).expect_call()
    start = next(cb for cb in tw.callbacks if cb.kind == "voice")
    pin_url = start.url.replace("/start/", "/pin/") + "?s=1"
    form = {**start.params, "Digits": "1234"}
    assert httpx.post(pin_url, data=form, headers={"X-Twilio-Signature": "forged"}).status_code == 403
    assert httpx.post(pin_url, data=form).status_code == 403
    ack_url = start.url.replace("/start/", "/ack/") + "?s=2"
    forged = RequestValidator("not-the-token").compute_signature(ack_url, {**form, "Digits": "1"})
    assert httpx.post(ack_url, data={**form, "Digits": "1"},
                      headers={"X-Twilio-Signature": forged}).status_code == 403
    assert alarm(gw, event["id"])["acknowledged"] is False
    assert audit(gw, "ReplyWithPIN") == []
    # a correctly signed request for a call that does not exist: a polite goodbye, not a 500
    unknown = start.url.rsplit("/", 2)[0] + "/start/nosuchcall"
    sig = RequestValidator(tw.auth_token).compute_signature(unknown, start.params)
    r = httpx.post(unknown, data=start.params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    assert parse_and_validate(r.content)[-1].tag == "Hangup"
    call.hang_up()


def test_replayed_request_is_answered_again_and_acts_once(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway()
    raise_alarm(gw, "plant/pump1", "page")
    call = tw.phone(MARIA).expect_call()
    call.press("9999#")
    wrong = [cb for cb in tw.callbacks if cb.kind == "voice" and cb.params.get("Digits") == "9999"][-1]
    again = httpx.post(wrong.posted_to, data=wrong.params, headers={"X-Twilio-Signature": wrong.signature})
    assert again.status_code == 200 and again.text == wrong.body
    assert len(audit(gw, "PinRejected")) == 1  # counted once, not twice
    call.press("1234#")
    call.expect_say("Alarm 1 of 1.")
    call.hang_up()


def test_alarm_text_that_looks_like_twiml_is_read_not_obeyed(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway(voice={"pin_required": False})
    raise_alarm(gw, "plant/<Hangup/>", "page", name="<Hangup/> & <Redirect>http://evil</Redirect>",
                displayPath="Area\x01<Say>")
    call = tw.phone(MARIA).expect_call()
    heard = call.expect_say("Alarm 1 of 1.")
    assert "<Hangup/> & <Redirect>http://evil</Redirect>" in heard and "Area <Say>" in heard
    assert call.gathering and not call.ended  # the "verb" in the text did not end the call
    for doc in served_twiml(tw):
        assert [el.tag for el in doc.iter()].count("Hangup") == 0
    call.hang_up()


def test_speech_acknowledge_and_acknowledge_all(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway(voice={"speech": True, "language": "en-GB", "voice": "Polly.Amy"})
    first = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    call = tw.phone(MARIA).expect_call()
    call.press("1234#")
    call.expect_say("Or say acknowledge.")
    assert all(attrs.get("language") == "en-GB" and attrs.get("voice") == "Polly.Amy"
               for verb, attrs in call.events if verb == "Say")
    call.speak("Acknowledge.")
    call.expect_say("Alarm acknowledged.")
    call.wait_ended()
    assert alarm(gw, first["id"])["ackUser"] == "maria"


def test_menu_invalid_next_repeat_and_ack_all(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    # two alarms collected into one notification: one call reads "alarm 1 of 2", "alarm 2 of 2"
    gw = voice_gateway(voice={"repeat": 2}, consolidation={"delay": "300ms", "frequency": "2s"})
    r = gw.client.post("/api/alarms", json=[
        {"source": "plant/a", "name": "A high", "priority": "High", "pipelines": {"active": "page"}},
        {"source": "plant/b", "name": "B high", "priority": "Low", "pipelines": {"active": "page"}}])
    assert r.status_code in (200, 201), r.text
    events = r.json()["events"]
    call = tw.phone(MARIA).expect_call(timeout=10)
    call.expect_say("with 2 alarms for Maria Lopez")
    call.press("1234#")
    assert len([s for s in call.says if s.startswith("Alarm 1 of 2.")]) == 2  # repeat: 2
    call.press("7")
    assert call.says[-4] == "That is not a valid choice." and call.says[-3].startswith("Alarm 1 of 2.")
    call.press("2")
    assert call.says[-2].startswith("Alarm 2 of 2.")
    call.press("3")
    assert call.says[-2].startswith("Alarm 2 of 2.")
    call.press("1")
    call.expect_say("Alarm acknowledged.")
    assert call.says[-2].startswith("Alarm 1 of 2.")  # wraps round to the one still open
    assert [alarm(gw, e["id"])["acknowledged"] for e in events] == [False, True]
    call.press("9")
    call.expect_say("All alarms acknowledged.")
    call.wait_ended()
    assert all(alarm(gw, e["id"])["acknowledged"] for e in events)
    assert len(tw.find_calls(to=MARIA)) == 1


def test_answering_machine_leaves_a_short_message(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    tw.phone(MARIA).call_behavior = "machine"
    gw = voice_gateway()
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped", displayPath="Plant/Pump 1")
    call = tw.phone(MARIA).expect_call()
    call.wait_ended()
    assert call.says == ["This is annunciator with 1 alarm for Maria Lopez. Plant, Pump 1, Pump 1 tripped. "
                         "Please call back to acknowledge."]
    assert alarm(gw, event["id"])["acknowledged"] is False
    wait_until(lambda: audit(gw, "VoiceMachine"))


def test_answering_machine_hang_up_falls_back_to_sms(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    tw.phone(MARIA).call_behavior = "machine"
    gw = voice_gateway(voice={"answering_machine": "hang-up"}, profiles=["voice", "sms"], policy="fallback")
    raise_alarm(gw, "plant/pump1", "page", name="Tank 3 high")
    call = tw.phone(MARIA).expect_call()
    call.wait_ended()
    assert call.says == [] and call.machine_detection == "Enable"
    tw.phone(MARIA).expect_sms(contains="Tank 3 high", timeout=10)


def test_slow_store_says_one_moment_and_redirects(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway(voice={"answer_within": "200ms"})
    event = raise_alarm(gw, "plant/pump1", "page")
    call = tw.phone(MARIA).expect_call()
    call.press("1234#")
    store = gw.gateway.store
    original = store.commit

    async def slow_commit() -> None:
        await asyncio.sleep(0.5)
        await original()

    store.commit = slow_commit
    try:
        call.press("1")
        call.expect_say("One moment please.")
        call.expect_say("Alarm acknowledged.", timeout=10)
    finally:
        store.commit = original
    call.wait_ended(timeout=10)
    assert alarm(gw, event["id"])["acknowledged"] is True
    assert any("/twilio/voice/wait/" in cb.url for cb in tw.callbacks)  # the caller was redirected to wait
    served_twiml(tw)


GREETING_SCRIPT = '''
from twilio.twiml.voice_response import VoiceResponse

def handle(callAction, params, alarm, response):
    if callAction != "start":
        return None
    assert params["CallSid"].startswith("CA") and alarm["count"] == 1
    # keep the gateway's PIN prompt, put our own greeting first
    return response.replace("<Response>", "<Response><Say>Good morning from the plant, {}.</Say>".format(
        alarm["user"]), 1)
'''


def test_call_script_rewrites_the_greeting(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway(script=GREETING_SCRIPT)
    raise_alarm(gw, "plant/pump1", "page")
    call = tw.phone(MARIA).expect_call()
    assert call.says[0] == "Good morning from the plant, maria."
    call.press("1234#")
    call.press("1")
    call.expect_say("Alarm acknowledged.")
    served_twiml(tw)


@pytest.mark.parametrize("returned, line, reason", [
    ('"<Response><Sya>hi</Sya></Response>"', 4, "Sya"),  # a misspelt verb
    ('"<Response><Gather><Gather/></Gather></Response>"', 4, "Gather"),  # bad nesting
    ('"<Response><Say>unclosed</Response>"', 4, "not XML"),
    ('1 / 0', 4, "ZeroDivisionError"),
    ('42', 4, "returned int"),
])
def test_invalid_call_script_falls_back_with_a_logged_error(voice_gateway, twilio_emulator, caplog,
                                                            returned, line, reason):
    script = f"\ndef handle(callAction, params, alarm, response):\n    x = 1\n    return {returned}\n"
    tw = twilio_emulator
    gw = voice_gateway(script=script)
    caplog.set_level(logging.ERROR, logger="annunciator.scripts")
    raise_alarm(gw, "plant/pump1", "page")
    call = tw.phone(MARIA).expect_call()
    call.expect_say("Please enter your PIN")  # the gateway's own TwiML: never silence
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("annunciator.scripts")]
    assert errors, "the script's failure was not logged"
    assert f"call.py:{line}" in errors[0] and reason in errors[0]
    assert gw.client.get("/api/voice/stats").json()["scriptErrors"] >= 1
    call.hang_up()
    served_twiml(tw)


# --- the TwiML builder, without a gateway: any alarm text, any language ------------------------------

def _flow_for(event: AlarmEvent) -> tuple[VoiceFlow, Any]:
    gateway = SimpleNamespace(
        events={event.id: event}, state=PluginState(), profiles={}, users={},
        config=SimpleNamespace(gateway=SimpleNamespace(external_url="https://alarms.example.com", name="annunciator"),
                               sections={}))
    return VoiceFlow(gateway), gateway  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(max_size=300), path=st.text(max_size=80), message=st.text(max_size=300),
       language=st.sampled_from(["en-US", "de-DE", "fr-FR", "es-MX", "ja-JP"]),
       voice=st.sampled_from([None, "Polly.Joanna", "Polly.Marlene"]),
       speech=st.booleans())
def test_any_alarm_text_gives_twiml_that_parses_and_validates(name, path, message, language, voice, speech):
    event = AlarmEvent(source="s", name=name, display_path=path, priority=Priority.HIGH)
    flow, _ = _flow_for(event)
    s = VoiceSettings(language=language, voice=voice, speech=speech)
    session = CallSession(id="c1", profile="voice", username="maria", event_ids=[event.id], their_number=MARIA,
                          message=message)
    profile = SimpleNamespace(voice=s)
    from twilio.twiml.voice_response import VoiceResponse

    r = VoiceResponse()
    speaker = Speaker(s, None, "annunciator")
    flow._read_alarm(r, profile, speaker, session)  # type: ignore[arg-type]
    root = parse_and_validate(to_xml(r))
    gather = root.find("Gather")
    assert gather is not None and gather.get("action", "").startswith("https://alarms.example.com/twilio/voice/")
    said = gather.find("Say")
    assert said is not None and said.get("language") == language
    assert [el.tag for el in root.iter()].count("Hangup") == 0


def test_schema_refuses_what_scripts_must_not_serve():
    parse_and_validate("<Response><Say>hi</Say><Gather numDigits='1' action='/x'><Say>a</Say></Gather>"
                       "<Redirect>/y</Redirect><Hangup/></Response>")
    for bad in ("<Response><Say><Hangup/></Say></Response>", "<Response><Dial><Gather/></Dial></Response>",
                "<Reponse/>", "<Response><Pause length='-1'/></Response>", "plain text",
                "<!DOCTYPE x [<!ENTITY a 'b'>]><Response><Say>&a;</Say></Response>"):
        with pytest.raises(InvalidTwiml):
            parse_and_validate(bad)


def test_incoming_call_hears_open_alarms_after_pin_and_is_counted(voice_gateway, twilio_emulator):
    """A person calls the gateway's number (the number's Voice URL and status callback point at the
    gateway): identified by caller ID, they acknowledge after the PIN; the call counts as received."""
    tw = twilio_emulator
    gw = voice_gateway(profiles=["sms"])
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    tw.phone(MARIA).expect_sms(contains="Pump 1 tripped")
    tw.phone(MARIA).reply("STATUS 1234")  # opens a PIN session for SMS...
    tw.phone(MARIA).expect_sms(contains="1 unacknowledged")
    validator = RequestValidator(tw.auth_token)
    base = {"CallSid": "CA" + "1" * 32, "AccountSid": tw.account_sid, "From": MARIA, "To": tw.numbers[0],
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}

    def post(url: str, **extra: str) -> httpx.Response:
        form = {**base, **extra}
        return httpx.post(url, data=form, headers={"X-Twilio-Signature": validator.compute_signature(url, form)})

    first = post(f"{gw.url}/twilio/voice/incoming")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/xml")
    doc = parse_and_validate(first.content)
    assert "Hello Maria Lopez" in "".join(doc.itertext())
    # ...which a call from her number does not get: caller ID can be forged, so the PIN is asked
    assert "PIN" in "".join(doc.itertext())
    pin_url = doc.find("Gather").get("action")
    doc = parse_and_validate(post(pin_url, Digits="1234", CallStatus="in-progress").content)
    assert "Alarm 1 of 1" in "".join(doc.itertext())
    doc = parse_and_validate(post(doc.find("Gather").get("action"), Digits="1", CallStatus="in-progress").content)
    assert "Alarm acknowledged." in "".join(doc.itertext())
    assert alarm(gw, event["id"])["ackUser"] == "maria"
    assert post(f"{gw.url}/twilio/voice/status", CallStatus="completed", CallDuration="75").status_code == 204
    stats = gw.client.get("/api/voice/stats").json()["users"]["maria"]
    assert stats == {"callsSent": 0, "callsReceived": 1, "minutesSent": 0, "minutesReceived": 2}
    stranger = post(f"{gw.url}/twilio/voice/incoming", From="+15550109999", CallSid="CA" + "2" * 32)
    assert "not registered" in "".join(parse_and_validate(stranger.content).itertext())


# --- one PIN policy: every call asks, one lockout for SMS and voice ---------------------------------

@pytest.mark.parametrize("reuse", [False, True])
def test_a_call_asks_for_the_pin_even_within_an_sms_pin_session_unless_reuse_is_set(
        voice_gateway, twilio_emulator, reuse):
    tw = twilio_emulator
    gw = voice_gateway(voice={"reuse_pin_session": True} if reuse else None)
    phone = tw.phone(MARIA)
    phone.send("STATUS 1234")  # a correct PIN by SMS opens a PIN session
    phone.expect_sms(contains="No unacknowledged alarms")
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    call = phone.expect_call()
    if reuse:
        call.expect_say("Alarm 1 of 1")
        assert not any("PIN" in s for s in call.says)
    else:
        call.expect_say("PIN")  # whoever answered must say who they are
        assert not any("Alarm 1 of 1" in s for s in call.says)
        call.press("1234#")
        call.expect_say("Alarm 1 of 1")
    call.press("1")
    call.expect_say("Alarm acknowledged.")
    assert alarm(gw, event["id"])["ackUser"] == "maria"


def test_wrong_pins_by_sms_and_by_voice_count_toward_one_lockout(voice_gateway, twilio_emulator, gateway_config):
    gateway_config["gateway"]["pins"] = {"failures": 4, "lockout": "10m"}
    tw = twilio_emulator
    gw = voice_gateway()
    phone = tw.phone(MARIA)
    for _ in range(2):
        [answer] = phone.send("STATUS 9999").replies
        assert answer.body == "Wrong PIN."
    raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    call = phone.expect_call()
    call.press("9999#")
    assert "That PIN is not correct." in call.says
    call.press("9999#")  # the fourth wrong PIN, the second by voice: locked, on every channel
    call.expect_say("Too many wrong PINs. You are locked out until")
    call.wait_ended()
    [answer] = phone.send("STATUS 1234").replies
    assert answer.body.startswith("Too many wrong PINs: locked until")
    assert len(audit(gw, "PinRejected")) == 3 and len(audit(gw, "PinLockout")) == 2


def test_an_expired_pin_is_refused_on_a_call(voice_gateway, twilio_emulator, gateway_config):
    gateway_config["gateway"]["pins"] = {"expire_after": "1s"}
    tw = twilio_emulator
    gw = voice_gateway()
    time.sleep(1.2)
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    call = tw.phone(MARIA).expect_call()
    call.press("1234#")
    call.expect_say("Your PIN has expired. Please ask your administrator for a new one.")
    call.wait_ended()
    assert alarm(gw, event["id"])["acknowledged"] is False
    assert len(audit(gw, "PinExpired")) == 1
    served_twiml(tw)


KYMERA_SCRIPT = '''\
# written for the Kymera Twilio module: no function, variables in scope, assign `response`
if callAction == "start":
    response = response.replace("<Response>", "<Response><Say>Plant 3 calling " + To + ".</Say>", 1)
elif callAction == "ack" and Digits == "1":
    response = "<Response><Say>Thank you " + alarm["user"] + ", alarm " + str(alarm["index"]) + \\
        " of " + str(alarm["count"]) + " is yours.</Say><Hangup/></Response>"
'''


def test_a_kymera_style_call_script_runs_unchanged(voice_gateway, twilio_emulator):
    tw = twilio_emulator
    gw = voice_gateway(script=KYMERA_SCRIPT)
    event = raise_alarm(gw, "plant/pump1", "page")
    call = tw.phone(MARIA).expect_call()
    assert call.says[0] == f"Plant 3 calling {MARIA}."
    call.press("1234#")
    call.expect_say("Alarm 1 of 1")
    call.press("1")
    call.expect_say("Thank you maria, alarm 1 of 1 is yours.")
    call.wait_ended()
    assert alarm(gw, event["id"])["ackUser"] == "maria"  # the gateway acted before the script spoke
    served = [cb.body for cb in tw.callbacks if cb.kind == "voice" and cb.status == 200]
    assert served and all(body.startswith("<?xml") for body in served)  # the header was added
    served_twiml(tw)
