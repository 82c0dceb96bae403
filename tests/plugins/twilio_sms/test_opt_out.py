"""Opt-out compliance and PIN replies, driven as a phone and Twilio drive them: signed webhooks
in, REST requests observed at the Twilio-shaped server (the emulator's request log) out.

An opt-out is about the pair (recipient, sending number): a STOP to a pool's number stops every
number of that pool, STOPALL every sender. Whatever sends an SMS (an alarm of any profile,
``system.twilio.sendMessage`` with or without a pool or a sender, the console) must keep it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from annunciator.testing.gateway import TOKEN, RunningGateway

from conftest import raise_alarm, story, wait_until

pytestmark = pytest.mark.twilio

MARIA = "+15550100001"
STRANGER = "+15550109876"
POOL = ("+15005550010", "+15005550011")
FOOTER = "Reply HELP for help, STOP to opt out of this number, STOPALL to opt out of all"


def audit(gw: RunningGateway, **params: Any) -> list[dict[str, Any]]:
    return gw.client.get("/api/audit", params=params).json()["audit"]


def sends_to(tw: Any, number: str) -> list[dict[str, str]]:
    """The Messages requests the gateway made to Twilio for ``number`` (accepted or not)."""
    out = []
    for r in tw.requests:
        if r.method == "POST" and r.path.endswith("/Messages.json") and r.params.get("To", [""])[0] == number:
            out.append({k: v[0] for k, v in r.params.items()})
    return out


def script(gw: RunningGateway, source: str) -> dict[str, Any]:
    r = gw.client.post("/api/scripts/run", json={"source": source, "filename": "t.py"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ok"], out
    return out["result"]


def pooled(sms_gw: Any, tw: Any, **extra: Any) -> RunningGateway:
    """Account numbers: the default one (in no pool) and a pool 'ops' of two; profile 'sms' names no pool."""
    for n in POOL:
        tw.add_number(n)
    return sms_gw(account={"numbers": [tw.numbers[0], *POOL], "pools": {"ops": list(POOL)}},
                  scripts={"api_run": True}, **extra)


def test_a_stop_to_a_pool_number_is_kept_by_every_send_path(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = pooled(sms_gw, tw)
    phone = tw.phone(MARIA)
    # the pool's number texts Maria first, so she can answer it
    assert script(gw, f'result = system.twilio.sendMessage("{MARIA}", "hello from ops", pool="ops")') is True
    first = phone.expect_sms(contains="hello from ops")
    assert first.from_ in POOL
    phone.send("STOP", to=first.from_)
    phone.expect_sms(contains="unsubscribed")  # Twilio's own confirmation
    before = len(sends_to(tw, MARIA))

    # an alarm through a profile that names no pool: never from the pool Maria stopped
    event = raise_alarm(gw, "plant/pump1", "page", name="pump1 tripped")
    alarm_sms = phone.expect_sms(contains="pump1 tripped")
    assert alarm_sms.from_ not in POOL
    # sendMessage on the default route, by pool, and from that very number
    out = script(gw, "\n".join([
        f'a = system.twilio.sendMessage("{MARIA}", "default route")',
        f'b = system.twilio.sendMessage("{MARIA}", "by pool", pool="ops")',
        'eb = system.twilio.lastError()',
        f'c = system.twilio.sendMessage("{MARIA}", "from it", fromNumber="{first.from_}")',
        'ec = system.twilio.lastError()',
        'result = [a, b, eb, c, ec]']))
    a, b, eb, c, ec = out
    assert a is True and phone.expect_sms(contains="default route").from_ not in POOL
    assert b is False and "opted out" in eb
    assert c is False and "opted out" in ec
    after = sends_to(tw, MARIA)[before:]
    assert [s["From"] for s in after if s.get("From") in POOL] == []  # nothing was even tried
    refusals = audit(gw, code="SMSRefused")
    assert len(refusals) == 2 and all(r["contact"] == MARIA and "opted out" in r["text"] for r in refusals)
    assert story(gw, event["id"])["notifications"][0]["status"] == "sent"


def test_stopall_refuses_every_sender_and_the_page_falls_back(sms_gw, twilio_emulator, webhook_receiver):
    tw = twilio_emulator
    gw = pooled(sms_gw, tw, pipelines={"page": {"blocks": [
        {"type": "notification", "roster": "operators", "profiles": ["sms", "hook"], "policy": "fallback",
         "message": "{name}"}]}})
    phone = tw.phone(MARIA)
    phone.send("STOPALL")
    phone.expect_sms(contains="unsubscribed")
    before = len(sends_to(tw, MARIA))
    event = raise_alarm(gw, "plant/boiler", "page", name="boiler low")
    [hook] = webhook_receiver.wait_for(1)  # the next channel got the page
    assert hook.json["message"] == "boiler low"
    [sms] = [n for n in story(gw, event["id"])["notifications"] if n["profile"] == "sms"]
    assert sms["status"] == "failed" and "STOPALL" in sms["lastError"]
    failed = audit(gw, code="NotificationFailed")
    assert any("STOPALL" in (a["text"] or "") for a in failed)
    a, ea = script(gw, f'a = system.twilio.sendMessage("{MARIA}", "x", fromNumber="{POOL[1]}")\n'
                       'result = [a, system.twilio.lastError()]')
    assert a is False and "STOPALL" in ea
    assert sends_to(tw, MARIA)[before:] == []
    phone.expect_no_sms(within=0.3)


def test_nothing_but_help_and_start_is_answered_after_stop(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw()
    phone = tw.phone(MARIA)
    raise_alarm(gw, "plant/a", "page", name="first")
    phone.expect_sms(contains="first")
    phone.reply("STOP")
    phone.expect_sms(contains="unsubscribed")
    status = phone.reply("STATUS 1234")
    assert status.replies == []  # no TwiML answer: Twilio would refuse it (21610)
    helped = phone.reply("HELP")
    assert any("STOP to opt out" in m.body for m in helped.replies)
    phone.reply("START")
    phone.expect_sms(contains="re-subscribed")
    assert phone.reply("STATUS 1234").replies[0].body.startswith("1 unacknowledged")


def test_the_first_message_from_a_pool_carries_the_footer_whoever_sends_it(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = pooled(sms_gw, tw)
    phone = tw.phone(MARIA)
    assert script(gw, f'result = system.twilio.sendMessage("{MARIA}", "one", pool="ops")') is True
    assert phone.expect_sms(contains="one").body == f"one\n{FOOTER}"
    script(gw, f'system.twilio.sendMessage("{MARIA}", "two", pool="ops")')
    assert phone.expect_sms(contains="two").body == "two"
    # an alarm comes from the number Maria already talks to (sticky): that pool has told her
    raise_alarm(gw, "plant/a", "page", name="pump")
    alarm = phone.expect_sms(contains="pump")
    assert alarm.from_ in POOL and FOOTER not in alarm.body


def test_help_from_any_number_gets_the_opt_out_instructions(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw(scripts={"api_run": True})
    stranger = tw.phone(STRANGER)
    script(gw, f'system.twilio.sendMessage("{STRANGER}", "Your delivery of spare parts is due")')
    stranger.expect_sms(contains="spare parts")
    answer = stranger.reply("HELP")
    ours = [m.body for m in answer.replies if "STOPALL" in m.body]
    assert ours and "not registered" not in ours[0] and "STOP to opt out" in ours[0]


def test_reply_limits_never_silence_help_or_a_correct_pin(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw(profiles={"sms": {"type": "twilio-sms", "max_error_replies": 2}})
    phone = tw.phone(MARIA)
    event = raise_alarm(gw, "plant/a", "page", name="tank high")
    phone.expect_sms(contains="tank high")
    answers = [phone.reply(f"ACK {event['ackCode']}").replies for _ in range(4)]  # no PIN: a prompt
    assert [len(a) for a in answers] == [1, 1, 0, 0]  # bounded: two prompts, then silence
    assert any(m.body.startswith("Reply with your PIN") for m in phone.reply("HELP").replies)
    [ok] = phone.reply("1234").replies
    assert ok.body.startswith(f"Acknowledged #{event['ackCode']}")


def test_a_pin_with_words_acknowledges_with_the_words_as_note(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw()
    phone = tw.phone(MARIA)
    event = raise_alarm(gw, "plant/pump", "page", name="pump 3 tripped")
    phone.expect_sms(contains="pump 3 tripped")
    [answer] = phone.reply("1234 on my way").replies
    assert answer.body.startswith(f"Acknowledged #{event['ackCode']}")
    got = gw.client.get(f"/api/alarms/{event['id']}").json()
    assert got["acknowledged"] and got["ackNotes"] == "on my way" and got["ackUser"] == "maria"
    [pin] = audit(gw, code="ReplyWithPIN")
    assert pin["eventIds"] == [event["id"]]
    assert "1234" not in str(audit(gw))  # the PIN is never stored


def test_a_keyword_reply_is_logged_once_under_its_code(sms_gw, twilio_emulator):
    tw = twilio_emulator
    gw = sms_gw({"page": {"blocks": [{"type": "notification", "roster": "operators", "profile": "sms",
                                      "message": "{name}",
                                      "keywords": {"ONSITE": {"code": "OnSite", "reply": "Noted"}}}]}})
    phone = tw.phone(MARIA)
    event = raise_alarm(gw, "plant/a", "page", name="valve stuck")
    phone.expect_sms(contains="valve stuck")
    phone.reply("onsite in 5")
    phone.expect_sms(contains="Noted")
    [kw] = audit(gw, code="OnSite")
    assert kw["eventIds"] == [event["id"]]
    assert [a for a in audit(gw, code="SMSReply") if "onsite" in (a["text"] or "")] == []


def test_opt_outs_are_listed_and_cleared_by_api_and_cli(sms_gw, twilio_emulator, tmp_path):
    tw = twilio_emulator
    gw = pooled(sms_gw, tw)
    phone = tw.phone(MARIA)
    phone.send("STOP", to=POOL[0])
    phone.send("STOPALL", to=tw.numbers[0])
    listed = wait_until(lambda: (o := gw.client.get("/api/sms/opt-outs").json()["optOuts"]) and len(o) == 2 and o)
    scopes = {o["scope"]: o for o in listed}
    assert set(scopes) == {"*", "main/ops"} and scopes["main/ops"]["pool"] == "ops"
    assert all(o["number"] == MARIA and o["source"] == "keyword" for o in listed)

    cli = [sys.executable, "-c", "from annunciator.cli import main; main()"]
    where = ["--url", gw.url, "--token", TOKEN]
    out = subprocess.run([*cli, "sms", "opt-outs", "list", *where],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert MARIA in out.stdout and "all senders (STOPALL)" in out.stdout and "pool ops of main" in out.stdout
    cleared = subprocess.run([*cli, "sms", "opt-outs", "clear", MARIA, "--scope", "*", "--user", "li", "--yes",
                              *where], capture_output=True, text=True, timeout=60)
    assert cleared.returncode == 0, cleared.stderr
    assert f"cleared {MARIA} (*)" in cleared.stdout
    [entry] = audit(gw, code="OptOutCleared")
    assert entry["user"] == "li" and entry["contact"] == MARIA
    assert [o["scope"] for o in gw.client.get("/api/sms/opt-outs").json()["optOuts"]] == ["main/ops"]
    missing = gw.client.delete(f"/api/sms/opt-outs/{MARIA}", params={"scope": "*"})
    assert missing.status_code == 404


def test_a_pin_expires_is_refused_with_whom_to_ask_and_a_fresh_one_works(sms_gw, twilio_emulator, gateway_config):
    gateway_config["gateway"]["pins"] = {"expire_after": "4s", "remind_before": "3s", "contact": "the shift lead"}
    tw = twilio_emulator
    gw = sms_gw()
    phone = tw.phone(MARIA)
    listed = subprocess.run([sys.executable, "-c", "from annunciator.cli import main; main()", "user", "list",
                             "--url", gw.url, "--token", TOKEN], capture_output=True, text=True, timeout=60)
    assert "PIN expires" in listed.stdout, listed.stdout + listed.stderr
    [maria] = [u for u in gw.client.get("/api/users").json()["users"] if u["username"] == "maria"]
    assert maria["pinExpires"] and maria["pinExpired"] is False
    reminder = phone.expect_sms(contains="PIN expires on", timeout=10)
    assert "the shift lead" in reminder.body
    wait_until(lambda: [u for u in gw.client.get("/api/users").json()["users"]
                        if u["username"] == "maria" and u["pinExpired"]], what="the PIN expired")
    event = raise_alarm(gw, "plant/pump", "page", name="pump tripped")
    phone.expect_sms(contains="pump tripped")
    [answer] = phone.reply("1234").replies
    assert answer.body.startswith("Your PIN expired on") and "ask the shift lead for a new one" in answer.body
    assert gw.client.get(f"/api/alarms/{event['id']}").json()["acknowledged"] is False
    [expired] = audit(gw, code="PinExpired")
    assert expired["user"] == "maria"
    assert audit(gw, code="PinRejected") == []  # the right PIN, expired: not counted as wrong

    setpin = subprocess.run([sys.executable, "-c", "from annunciator.cli import main; main()", "user", "pin",
                             "maria", "--pin-stdin", "--url", gw.url, "--token", TOKEN],
                            input="5678\n", capture_output=True, text=True, timeout=60)
    assert setpin.returncode == 0, setpin.stderr
    [ok] = phone.reply("5678").replies
    assert ok.body.startswith(f"Acknowledged #{event['ackCode']}")
    assert [a["user"] for a in audit(gw, code="PinExpiryReminder")][:1] == ["maria"]


def test_a_stop_to_a_number_in_two_pools_stops_both_and_start_resumes_only_its_own(sms_gw, twilio_emulator):
    tw = twilio_emulator
    n1, n2, n3 = (tw.add_number(n) for n in ("+15005550020", "+15005550021", "+15005550022"))
    gw = sms_gw(account={"numbers": [tw.numbers[0], n1, n2, n3], "pools": {"ops": [n1, n2], "maint": [n2, n3]}},
                scripts={"api_run": True})
    phone = tw.phone(MARIA)

    def send(**where: str) -> list[Any]:
        args = "".join(f', {k}="{v}"' for k, v in where.items())
        return script(gw, f'ok = system.twilio.sendMessage("{MARIA}", "hi"{args})\n'
                          'result = [ok, system.twilio.lastError()]')

    phone.send("STOP", to=n2)  # n2 serves both pools
    phone.expect_sms(contains="unsubscribed")
    assert send(pool="ops")[0] is False and send(pool="maint")[0] is False
    assert send(fromNumber=n3)[0] is False  # another number of a pool she stopped
    ok, _ = send()
    assert ok is True and phone.expect_sms(contains="hi").from_ == tw.numbers[0]
    phone.send("START", to=n1)  # back in for ops (n1's pool), not for maint
    phone.expect_sms(contains="re-subscribed")
    assert send(pool="ops")[0] is True
    assert phone.expect_sms(contains="hi").from_ in (n1, n2)
    ok, why = send(pool="maint")
    assert ok is False and "opted out" in why
    assert {o["scope"] for o in gw.client.get("/api/sms/opt-outs").json()["optOuts"]} == {"main/maint"}
