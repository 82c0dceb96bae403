"""More of the Twilio SMS side, with real parts only: the official client -> (Prism ->) the emulator,
and signed webhooks over real HTTP. Faults and retries, hostile inbound text, sender pools and
pacing, opt-out per pool, block keywords, TEST/UNTEST, the UCS-2 check, unknown senders, ack notes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from twilio.request_validator import RequestValidator

from annunciator.plugins.twilio_sms.replies import parse_reply
from annunciator.testing.gateway import RunningGateway, write_config

from conftest import raise_alarm, story, wait_until

pytestmark = pytest.mark.twilio

MARIA, LI, ANA = "+15550100001", "+15550100002", "+15550100003"
EXTRA = ("+15005550010", "+15005550011", "+15005550012")
FOOTER = "Reply HELP for help, STOP to opt out of this number, STOPALL to opt out of all"
_STRICT_XML = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def audit(gw: RunningGateway, **params: Any) -> list[dict[str, Any]]:
    return gw.client.get("/api/audit", params={"limit": 1000, **params}).json()["audit"]


def alarm(gw: RunningGateway, event_id: str) -> dict[str, Any]:
    return gw.client.get(f"/api/alarms/{event_id}").json()


def twiml(text: str | bytes) -> etree._Element:
    """The <Response> of a TwiML answer, parsed strictly; fails the test when it is not well formed."""
    root = etree.fromstring(text.encode() if isinstance(text, str) else text, _STRICT_XML)
    assert root.tag == "Response", text
    return root


def at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["at"])


# --- 1. faults ---------------------------------------------------------------------------


def test_thirty_percent_faults_every_notification_sent_exactly_once(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw({"page": {"blocks": [{"type": "notification", "roster": "team", "profile": "sms",
                                       "message": "{name}"}]}},
                account={"timeout": "0.8s"}, users={"ana": {"pin": "4321", "contacts": {"sms": ANA}}},
                rosters={"team": ["maria", "li", "ana"]},
                retry={"attempts": 15, "backoff": "20ms", "max_backoff": "100ms"})
    tw.faults.ratio(0.3, seed=20261123, retry_after=0.4, hold=1.0, on="Messages")
    events = [raise_alarm(gw, f"plant/tank{i}", "page", name=f"Tank {i} high") for i in range(20)]

    def settled() -> list[dict[str, Any]] | None:
        ns = [n for e in events for n in story(gw, e["id"])["notifications"]]
        return ns if len(ns) == 60 and all(n["status"] in ("sent", "failed") for n in ns) else None

    notifications = wait_until(settled, timeout=40, what="every notification sent or failed")
    tw.faults.clear()
    assert Counter(n["status"] for n in notifications) == {"sent": 60}

    faulted = [r for r in tw.requests if r.fault]
    assert {r.fault for r in faulted} == {"429", "500", "timeout"}, Counter(r.fault for r in faulted)
    created = [r for r in tw.requests if r.method == "POST" and r.status == 201]
    assert len(created) == 60  # a faulted request creates nothing, a success is never repeated

    sent_per_user = Counter(n["user"] for n in notifications)
    for user, number in (("maria", MARIA), ("li", LI), ("ana", ANA)):
        got = [m for m in tw.phone(number).messages if m.direction == "outbound-api"]
        assert len(got) == sent_per_user[user] == 20
        # none twice, none lost: each alarm's text arrived exactly once
        names = Counter(m.body.split(" [#")[0].split("\n")[0] for m in got)
        assert names == {f"Tank {i} high": 1 for i in range(20)}
        # and the provider ids the gateway recorded are the messages the phone got
        assert {m.sid for m in got} == {n["providerId"] for n in notifications if n["user"] == user}

    # Retry-After of a 429 is honoured: the next attempt is no sooner than it said
    retried_429 = 0
    for n in notifications:
        log = [a for a in n["attemptLog"] if "ok" in a]  # send attempts, not delivery reports
        assert log[-1]["ok"] is True and all(not a["ok"] for a in log[:-1])
        for before, after in pairwise(log):
            if "429" in (before["error"] or ""):
                retried_429 += 1
                assert before["retryIn"] == pytest.approx(0.4)
                assert (at(after) - at(before)).total_seconds() >= 0.4 - 0.01, log
    assert retried_429 >= 1


# --- 2. hostile inbound text through the real webhook -----------------------------------------

HOSTILE = st.one_of(
    st.text(max_size=60),
    st.text(min_size=1600, max_size=1700, alphabet=st.characters(codec="utf-8")),
    st.sampled_from(["", " ", "<Hangup/>", "]]>", "<![CDATA[x]]>", "'; DROP TABLE messages; --",
                     "\"\\'%_",
                     "\x00\x01\x07\x1b\x7f", "שלום 1234", "مرحبا", "🚨🔥 ack all", "&amp; &lt;Say&gt;",
                     "TEST <Hangup/> 5 1234", "TEST ]]> 5 1234", "TEST a\x01b 5 1234", "ACK #1 1234 <b>note</b>",
                     "x" * 1601, "TEST " + "s" * 600 + " 5 1234", "1234\x00", "TEST a\x00b 5 1234",
                     "ACK ALL 1234 " + "é" * 1700]),
    st.builds(lambda w, s: f"{w} {s}", st.sampled_from(["TEST", "UNTEST", "ACK", "STATUS", "HELP"]),
              st.text(max_size=40)),
)


def test_hostile_inbound_text_never_5xx_and_twiml_is_well_formed(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw(users={"maria": {"permissions": ["shelve"]}})
    url = f"{gw.url}/twilio/sms"
    validator = RequestValidator(tw.auth_token)
    counter = iter(range(10**6))

    def post(sender: str, body: str) -> httpx.Response:
        sid = f"SM{next(counter):032x}"
        params = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": tw.account_sid,
                  "From": sender, "To": tw.numbers[0], "Body": body, "NumMedia": "0", "NumSegments": "1",
                  "SmsStatus": "received", "ApiVersion": "2010-04-01"}
        signature = validator.compute_signature(url, params)
        return httpx.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=20)

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=HOSTILE, stranger=st.integers(1000, 9999))
    def check(body: str, stranger: int) -> None:
        for sender in (MARIA, f"+1555011{stranger}"):
            r = post(sender, body)
            assert r.status_code == 200, (sender, body, r.status_code, r.text)
            assert r.headers["content-type"].startswith(("text/xml", "application/xml"))
            root = twiml(r.content)
            # nothing but <Message>s with plain text: whatever was echoed back was escaped
            for el in root:
                assert el.tag == "Message" and len(el) == 0, r.text
            assert not root.xpath("//Hangup|//Say|//Redirect|//b")

    check()
    # echoed text arrives as text: escaped in the TwiML, never markup
    for hostile in ("<Hangup/>", "]]><Say>hi</Say>", "a\x01b"):
        [message] = twiml(post(MARIA, f"TEST {hostile} 5 1234").content)
        assert message.text.startswith(hostile.replace("\x01", "\ufffd") + " on test until"), message.text
    assert gw.client.get("/api/health").status_code == 200


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parse_reply_never_raises(text):
    reply = parse_reply(text)
    assert reply.kind in {"pin", "ack", "status", "help", "test", "untest", "stop", "stopall", "start", "text"}
    assert parse_reply(text) == reply


_NOTE_WORD = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
                     min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(codes=st.lists(st.integers(1, 10**6), max_size=5), hashed=st.booleans(), every=st.booleans(),
       pin=st.from_regex(r"\A[0-9]{4,12}\Z"), with_pin=st.booleans(),
       note=st.lists(_NOTE_WORD, max_size=6), verb=st.sampled_from(["ACK", "ack", "Ack", "ACKNOWLEDGE", "ok"]),
       spaces=st.sampled_from([" ", "  ", "\t", " \n "]))
def test_ack_and_pin_round_trip(codes, hashed, every, pin, with_pin, note, verb, spaces):
    head = note[0].lstrip("#") if note else ""
    if note and (parse_reply(note[0]).kind != "text" or (head.isascii() and head.isdigit())
                 or note[0].upper() == "ALL"):
        note = ["note", *note]  # a note that starts like a code or a PIN is a code or a PIN
    targets = ["ALL"] if every else [f"#{c}" if hashed else str(c) for c in codes]
    if not every and not hashed and not with_pin and codes and len(str(codes[-1])) >= 4:
        targets[-1] = f"#{codes[-1]}"  # without a PIN, a bare 4+ digit number is read as the PIN
    words = [verb, *targets, *([pin] if with_pin else []), *note]
    reply = parse_reply(spaces.join(words))
    assert reply.kind == "ack"
    assert reply.all is every
    assert reply.codes == (() if every else tuple(codes))
    assert reply.pin == (pin if with_pin else None)
    assert reply.note == " ".join(note)[:1000]

    alone = parse_reply(f"{spaces}{pin}{spaces}")
    assert alone.kind == "pin" and alone.pin == pin


# --- 3. pools and pacing ---------------------------------------------------------------------


def test_pool_senders_are_sticky_and_paced(sms_gw, twilio_emulator):
    tw = twilio_emulator
    n1, n2 = tw.add_number(EXTRA[0]), tw.add_number(EXTRA[1])
    gw = sms_gw({"page": {"blocks": [{"type": "notification", "roster": "team", "profile": "sms",
                                       "message": "{name}"}]}},
                profiles={"sms": {"type": "twilio-sms", "pool": "ops"}},
                account={"numbers": [tw.numbers[0], n1, n2], "pools": {"ops": [n1, n2]}, "rate_limit": 5},
                rosters={"team": ["maria", "li"]})
    for i in range(10):
        raise_alarm(gw, f"plant/p{i}", "page", name=f"P{i}")
    tw.wait_until(lambda: len(tw.find_messages(direction="outbound-api")) == 20, timeout=15,
                  what="20 messages")
    out = tw.find_messages(direction="outbound-api")
    assert {m.from_ for m in out} <= {n1, n2}  # pool numbers only
    senders = {to: {m.from_ for m in out if m.to == to} for to in (MARIA, LI)}
    assert all(len(s) == 1 for s in senders.values()), senders  # sticky: one sender per person
    for to in (MARIA, LI):
        times = sorted(m.date_created for m in out if m.to == to)
        assert len(times) == 10
        # 5 per second per number: 10 messages from one number span at least 9 intervals of 0.2 s
        assert (times[-1] - times[0]).total_seconds() >= 1.7, times
    creates = [r for r in tw.requests if r.method == "POST" and r.path.endswith("/Messages.json")]
    assert all(r.param("From") in (n1, n2) and r.param("MessagingServiceSid") is None for r in creates)


def test_messaging_service_carries_its_sid(sms_gw, twilio_emulator):
    tw = twilio_emulator
    n1, n2 = tw.add_number(EXTRA[0]), tw.add_number(EXTRA[1])
    service = tw.add_messaging_service([n1, n2])
    gw = sms_gw(profiles={"sms": {"type": "twilio-sms", "messaging_service": True}},
                account={"numbers": [tw.numbers[0], n1, n2], "messaging_service_sid": service})
    raise_alarm(gw, "plant/a", "page", name="via the service")
    sms = tw.phone(MARIA).expect_sms(contains="via the service")
    assert sms.from_ in (n1, n2) and sms.messaging_service_sid == service
    # the phone can get the SMS a moment before the emulator records the request that sent it
    [create] = tw.wait_until(lambda: [r for r in tw.requests if r.method == "POST"
                                      and r.path.endswith("/Messages.json")], what="the create request")
    assert create.param("MessagingServiceSid") == service and create.param("From") is None
    # the reply comes back to the number the phone actually heard from, and acknowledges
    tw.phone(MARIA).reply("1234")
    tw.phone(MARIA).expect_sms(contains="Acknowledged")


# --- 4. opt-out per pool ---------------------------------------------------------------------


def test_opt_out_per_pool_stopall_and_start(sms_gw, twilio_emulator):
    tw = twilio_emulator
    n1, n2, n3 = (tw.add_number(n) for n in EXTRA)
    gw = sms_gw({"ops": {"blocks": [{"type": "notification", "roster": "operators", "profile": "sms-ops",
                                      "message": "ops {name}"}]},
                 "maint": {"blocks": [{"type": "notification", "roster": "operators", "profile": "sms-maint",
                                        "message": "maint {name}"}]}},
                profiles={"sms-ops": {"type": "twilio-sms", "pool": "ops"},
                          "sms-maint": {"type": "twilio-sms", "pool": "maint"}},
                account={"numbers": [tw.numbers[0], n1, n2, n3], "pools": {"ops": [n1, n2], "maint": [n3]}})
    phone = tw.phone(MARIA)
    counter = iter(range(100))

    def page(pipeline: str) -> dict[str, Any]:
        return raise_alarm(gw, f"plant/{pipeline}{next(counter)}", pipeline, name=f"a{next(counter)}")

    def outcome(event: dict[str, Any]) -> dict[str, Any]:
        return wait_until(lambda: (ns := story(gw, event["id"])["notifications"])
                          and ns[0]["status"] in ("sent", "failed") and ns[0], what="notification settled")

    first_ops = phone.expect_sms(contains=f"ops {page('ops')['name']}")
    assert FOOTER in first_ops.body and first_ops.from_ in (n1, n2)
    second_ops = phone.expect_sms(contains=f"ops {page('ops')['name']}")
    assert FOOTER not in second_ops.body
    first_maint = phone.expect_sms(contains=f"maint {page('maint')['name']}")
    assert FOOTER in first_maint.body and first_maint.from_ == n3
    assert FOOTER not in phone.expect_sms(contains=f"maint {page('maint')['name']}").body

    # STOP to a number of pool ops blocks that pool (both its numbers), not maint
    phone.send("STOP", to=first_ops.from_)
    phone.expect_sms(contains="unsubscribed")
    blocked = outcome(page("ops"))
    assert blocked["status"] == "failed" and "opted out" in blocked["lastError"]
    assert outcome(page("maint"))["status"] == "sent"
    phone.expect_sms(contains="maint")
    phone.expect_no_sms(within=0.3)

    phone.send("START", to=first_ops.from_)
    phone.expect_sms(contains="re-subscribed")
    back = page("ops")
    assert FOOTER not in phone.expect_sms(contains=f"ops {back['name']}").body

    # STOPALL blocks every pool; START resumes all
    phone.send("STOPALL", to=n3)
    phone.expect_sms(contains="unsubscribed")
    assert outcome(page("ops"))["status"] == "failed"
    assert outcome(page("maint"))["status"] == "failed"
    phone.expect_no_sms(within=0.3)
    phone.send("START", to=n3)
    phone.expect_sms(contains="re-subscribed")
    phone.expect_sms(contains=f"ops {page('ops')['name']}")
    phone.expect_sms(contains=f"maint {page('maint')['name']}")
    scopes = [a["details"]["scope"] for a in audit(gw, code="OptOut")]
    assert sorted(scopes) == ["*", "main/ops"]


# --- 5. keywords on the Notification block -----------------------------------------------------


def test_block_keywords_reply_and_audit_their_code(sms_gw, twilio_emulator):
    gw = sms_gw({"page": {"blocks": [{
        "type": "notification", "roster": "operators", "profile": "sms", "message": "{name}",
        "keywords": {"ONSITE": {"code": "OnSite", "action": "none", "reply": "Noted"},
                     "GOT": {"code": "GotIt", "action": "ack", "reply": "Thanks, it is yours"}}}]}})
    phone = twilio_emulator.phone(MARIA)
    event = raise_alarm(gw, "plant/a", "page", name="Tank 3 high")
    phone.expect_sms(contains="Tank 3 high")

    phone.reply("onsite")
    phone.expect_sms(contains="Noted")
    [onsite] = audit(gw, code="OnSite")
    assert onsite["user"] == "maria" and event["id"] in onsite["eventIds"]
    assert alarm(gw, event["id"])["acknowledged"] is False

    phone.reply("GOT")  # an ack keyword needs a PIN session
    phone.expect_sms(contains="Send your PIN first")
    assert alarm(gw, event["id"])["acknowledged"] is False
    phone.reply("STATUS 1234")
    phone.expect_sms(contains="1 unacknowledged")
    phone.reply("  got ")
    phone.expect_sms(contains="Thanks, it is yours")
    now = alarm(gw, event["id"])
    assert now["acknowledged"] is True and now["ackUser"] == "maria"
    assert len(audit(gw, code="GotIt")) == 2
    [ack] = audit(gw, code="Acknowledged")
    assert ack["channel"] == "sms"


# --- 6. TEST / UNTEST ------------------------------------------------------------------------


def test_test_and_untest_need_the_shelve_permission(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw(users={"maria": {"permissions": ["shelve"]}, "li": {"pin": "5678"}})
    maria, li = tw.phone(MARIA), tw.phone(LI)

    maria.send("help")
    assert "TEST source minutes" in maria.expect_sms(contains="Reply with your PIN").body
    maria.expect_sms(contains="Msg&Data Rates")  # Twilio's own answer to HELP
    li.send("help")
    assert "TEST" not in li.expect_sms(contains="Reply with your PIN").body

    li.send("TEST plant/pump2 30 5678")
    li.expect_sms(contains="TEST needs the shelve permission")
    assert gw.client.get("/api/shelved").json()["shelved"] == []

    maria.send("test  plant/pump1   30 1234")
    maria.expect_sms(contains="plant/pump1 on test until")
    [shelf] = gw.client.get("/api/shelved").json()["shelved"]
    assert shelf["source"] == "plant/pump1" and shelf["user"] == "maria"
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped")
    maria.expect_no_sms(within=0.5)
    assert story(gw, event["id"])["notifications"] == []

    li.send("UNTEST plant/pump1 5678")
    li.expect_sms(contains="UNTEST needs the shelve permission")
    assert gw.client.get("/api/shelved").json()["shelved"] != []

    maria.send("UNTEST plant/pump1")  # within the PIN session
    maria.expect_sms(contains="plant/pump1 is back in service")
    maria.expect_sms(contains="Pump 1 tripped")  # still active: now it reaches people
    assert gw.client.get("/api/shelved").json()["shelved"] == []


# --- 7. the UCS-2 check ------------------------------------------------------------------------


def _check(tmp_path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp_path / "check.yaml", config)
    return subprocess.run([sys.executable, "-m", "annunciator", "check", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})


def test_check_warns_about_ucs2_and_smart_encoding_keeps_gsm7(sms_gw, twilio_emulator, gateway_config, tmp_path):
    config = {**gateway_config, "profiles": {**gateway_config["profiles"], "sms": {"type": "twilio-sms"}},
              "pipelines": {"page": {"blocks": [{"type": "notification", "roster": "operators", "profile": "sms",
                                                 "message": "🚨 {name}"}]}}}
    r = _check(tmp_path, config)
    assert r.returncode == 0, r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if "UCS-2" in ln]
    assert "pipelines.page.blocks[0].message" in line and "warning" in line

    config["pipelines"]["page"]["blocks"][0]["message"] = "Pump\u2019s {name} \u2013 \u201chigh\u201d"
    r = _check(tmp_path, config)
    assert r.returncode == 0 and "UCS-2" not in r.stderr, r.stderr
    config["profiles"]["sms"]["smart_encoding"] = False
    r = _check(tmp_path, config)
    assert r.returncode == 0 and "pipelines.page.blocks[0].message" in r.stderr and "UCS-2" in r.stderr

    gw = sms_gw({"page": {"blocks": [{"type": "notification", "roster": "operators", "profile": "sms",
                                       "message": "Pump\u2019s {name} \u2013 \u201chigh\u201d"}]}})
    raise_alarm(gw, "plant/a", "page", name="tank")
    sms = twilio_emulator.phone(MARIA).expect_sms(contains="Pump's tank - \"high\"")
    assert sms.encoding == "GSM-7" and sms.num_segments == 1


# --- 8. unknown senders ignored ---------------------------------------------------------------


def test_unknown_senders_ignored_get_no_reply(sms_gw, twilio_emulator):
    gw = sms_gw(profiles={"sms": {"type": "twilio-sms", "unknown_senders": "ignore"}})
    stranger = twilio_emulator.phone("+15550109999")
    for text in ("hello?", "1234", "ACK ALL 1234"):
        answer = stranger.send(text)
        assert answer.webhook.status == 200 and answer.replies == []
        assert len(twiml(answer.webhook.body)) == 0
    stranger.expect_no_sms(within=0.5)
    assert len(audit(gw, code="SMSUnknownSender")) == 3
    assert len(audit(gw, code="SMSReply")) == 3


# --- 9. ack notes required -----------------------------------------------------------------


def test_ack_notes_required_by_sms(sms_gw, twilio_emulator):
    gw = sms_gw()
    phone = twilio_emulator.phone(MARIA)
    event = raise_alarm(gw, "plant/a", "page", name="Boiler", ackNotesRequired=True)
    phone.expect_sms(contains="Boiler")
    phone.reply("1234")
    assert "needs a note" in phone.expect_sms(contains=f"#{event['ackCode']}").body
    assert alarm(gw, event["id"])["acknowledged"] is False
    assert audit(gw, code="Acknowledged") == []

    phone.reply(f"ACK {event['ackCode']} 1234 valve 3 closed, on site")
    phone.expect_sms(contains=f"Acknowledged #{event['ackCode']}")
    now = alarm(gw, event["id"])
    assert now["acknowledged"] is True and now["ackNotes"] == "valve 3 closed, on site"


@settings(max_examples=200, deadline=None)
@given(pin=st.from_regex(r"\A[0-9]{4,12}\Z"), note=st.lists(_NOTE_WORD, min_size=1, max_size=6),
       spaces=st.sampled_from([" ", "  ", "\t", " \n "]))
def test_a_pin_with_words_is_a_pin_reply_whose_words_are_the_note(pin, note, spaces):
    reply = parse_reply(spaces.join([pin, *note]))
    assert reply.kind == "pin" and reply.pin == pin
    assert reply.note == " ".join(note)[:1000]
