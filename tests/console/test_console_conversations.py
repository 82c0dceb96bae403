"""Two-way SMS conversations and dispatch SMS in the console, over real HTTP, against a gateway on
the Twilio emulator (through Prism in the contract pass)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_console import _fast, sign_in

from annunciator.testing.gateway import RunningGateway

from conftest import raise_alarm, wait_until

pytestmark = pytest.mark.twilio

PASSWORD = "correct horse"
MARIA, LI, STRANGER = "+15550100001", "+15550100002", "+15550109999"
OPS_NUMBER, SALES_NUMBER = "+15005550006", "+15005550007"
FRAGMENT = {"X-Console-Fragment": "1"}


def users() -> dict[str, Any]:
    h = _fast.hash(PASSWORD)
    return {"ada": {"password_hash": h, "role": "admin", "name": "Ada Admin"},
            "otto": {"password_hash": h, "role": "operator", "name": "Otto Operator", "pools": {"ops": "user"}},
            "pam": {"password_hash": h, "role": "operator", "name": "Pam Pooladmin", "pools": {"ops": "admin"}},
            "vera": {"password_hash": h, "role": "viewer", "name": "Vera Viewer", "pools": {"ops": "user"}},
            "sid": {"password_hash": h, "role": "operator", "name": "Sid Sales", "pools": {"sales": "user"}}}


@pytest.fixture
def gw(gateway_config, start_gateway, twilio_emulator) -> RunningGateway:
    return start_with_pools(gateway_config, start_gateway, twilio_emulator)


def start_with_pools(gateway_config: dict[str, Any], start_gateway: Any, tw: Any, **console: Any) -> RunningGateway:
    """Two sender pools on the emulator: ops (the alarm profile's) and sales; console users with grants."""
    tw.add_number(SALES_NUMBER)
    base = f"http://127.0.0.1:{gateway_config['gateway']['http']['port']}"
    gateway_config["gateway"]["external_url"] = base
    tw.sms_url = f"{base}/twilio/sms"
    gateway_config["twilio"] = {"accounts": {"main": {
        "account_sid": tw.account_sid, "auth_token": tw.auth_token, "api_base": tw.api_base,
        "numbers": [OPS_NUMBER, SALES_NUMBER], "rate_limit": 0,
        "pools": {"ops": [OPS_NUMBER], "sales": [SALES_NUMBER]}}}}
    gateway_config["profiles"]["sms"] = {"type": "twilio-sms", "pool": "ops"}
    gateway_config["console"] = {"users": users(), **console}
    gateway_config["pipelines"] = {"wait": {"blocks": [{"type": "delay", "delay": "1h"}]}}
    return start_gateway(gateway_config)


def audit(gw: RunningGateway, code: str) -> list[dict[str, Any]]:
    return gw.client.get("/api/audit", params={"code": code}).json()["audit"]


def test_inbound_is_unread_until_opened_and_a_reply_reaches_the_phone(gw, twilio_emulator):
    phone = twilio_emulator.phone(MARIA)
    phone.send("Pump <b>3</b> is leaking", to=OPS_NUMBER)
    otto, token = sign_in(gw, "otto")
    page = otto.get("/console/conversations").text
    row = page.split(f'data-number="{MARIA}"', 1)[1].split("</tr>", 1)[0]
    assert 'class="unread' in page.split(f'data-number="{MARIA}"', 1)[0].rsplit("<tr", 1)[1]
    assert "Maria Lopez" in row and "<b>3" not in page
    assert "1 new" in page  # the nav indicator
    assert "1 new" in otto.get("/console/conversations/unread", headers=FRAGMENT).text

    thread = otto.get(f"/console/conversations/ops/{MARIA}")
    assert thread.status_code == 200 and "Pump &lt;b&gt;3&lt;/b&gt; is leaking" in thread.text
    assert "<b>3" not in thread.text
    assert "1 new" not in otto.get("/console/conversations/unread", headers=FRAGMENT).text
    again = otto.get("/console/conversations").text
    assert 'class="unread' not in again.split(f'data-number="{MARIA}"', 1)[0].rsplit("<tr", 1)[1]

    r = otto.post(f"/console/conversations/ops/{MARIA}/send", data={"text": "On my way <now>", "csrf": token})
    assert r.status_code == 303, r.text
    sms = phone.expect_sms(contains="On my way <now>", from_=OPS_NUMBER)
    # the pool's first message to this number, so it says how to opt out, like any other sender
    assert sms.body.endswith("STOP to opt out of this number, STOPALL to opt out of all")
    thread = otto.get(f"/console/conversations/ops/{MARIA}/messages", headers=FRAGMENT).text
    assert "On my way &lt;now&gt;" in thread and "<html" not in thread
    [sent] = audit(gw, "ConsoleSMSSent")
    assert sent["user"] == "otto" and sent["contact"] == MARIA
    # no CSRF token: refused, nothing sent
    assert otto.post(f"/console/conversations/ops/{MARIA}/send", data={"text": "x"}).status_code == 403


def test_new_conversation_by_contact_search_or_number(gw, twilio_emulator):
    otto, token = sign_in(gw, "otto")
    found = otto.get("/console/conversations", params={"q": "LOPEZ"}).text
    assert "Maria Lopez" in found and f"/console/conversations/ops/{MARIA}" in found
    assert "Li Wei" not in found
    assert "Maria Lopez" in otto.get("/console/conversations", params={"q": "mar"}).text
    assert "Li Wei" in otto.get("/console/conversations", params={"q": "wEi"}).text
    assert "No contact" in otto.get("/console/conversations", params={"q": "zzz"}).text

    r = otto.get("/console/conversations/new", params={"pool": "ops", "number": "+1 (555) 010-9999"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/conversations/ops/{STRANGER}"
    bad = otto.get("/console/conversations/new", params={"pool": "ops", "number": "12ab"})
    assert bad.status_code == 422 and "international form" in bad.text
    assert otto.get("/console/conversations/new", params={"pool": "sales", "number": STRANGER}).status_code == 403

    page = otto.get(f"/console/conversations/ops/{STRANGER}")
    assert page.status_code == 200 and "No messages yet" in page.text
    r = otto.post(f"/console/conversations/ops/{STRANGER}/send", data={"text": "Hello there", "csrf": token})
    assert r.status_code == 303
    twilio_emulator.phone(STRANGER).expect_sms(contains="Hello there", from_=OPS_NUMBER)
    assert STRANGER in otto.get("/console/conversations").text

    # an admin with several pools picks the sender pool
    ada, atoken = sign_in(gw, "ada")
    form = ada.get("/console/conversations").text
    assert 'option value="sales"' in form and 'option value="ops"' in form
    r = ada.post(f"/console/conversations/sales/{STRANGER}/send", data={"text": "From sales", "csrf": atoken})
    assert r.status_code == 303
    twilio_emulator.phone(STRANGER).expect_sms(contains="From sales", from_=SALES_NUMBER)


def test_opted_out_number_is_blocked_and_a_pool_admin_override_is_audited(gw, twilio_emulator):
    phone = twilio_emulator.phone(MARIA)
    phone.send("STOP", to=OPS_NUMBER)
    otto, token = sign_in(gw, "otto")
    page = otto.get(f"/console/conversations/ops/{MARIA}").text
    assert "Opted out" in page and "Clear the opt-out record" not in page  # a pool user: no override
    r = otto.post(f"/console/conversations/ops/{MARIA}/send", data={"text": "Are you there?", "csrf": token})
    assert r.status_code == 409 and "has opted out" in r.text and "nothing was sent" in r.text
    time.sleep(0.3)
    assert not [m for m in phone.messages if "Are you there?" in m.body]
    assert not [m for m in twilio_emulator.messages if "Are you there?" in (m.body or "")]
    assert otto.post(f"/console/conversations/ops/{MARIA}/opt-out/clear",
                     data={"reason": "x", "csrf": token}).status_code == 403
    assert otto.get(f"/console/conversations/ops/{MARIA}/export.csv").status_code == 403

    pam, ptoken = sign_in(gw, "pam")
    page = pam.get(f"/console/conversations/ops/{MARIA}").text
    assert "Clear the opt-out record" in page and "Twilio itself refuses" in page
    r = pam.post(f"/console/conversations/ops/{MARIA}/opt-out/clear", data={"reason": "asked by phone",
                                                                           "csrf": ptoken})
    assert r.status_code == 303
    [entry] = audit(gw, "OptOutOverride")
    assert entry["user"] == "pam" and entry["text"] == "asked by phone" and "Twilio" in entry["details"]["note"]
    assert "Opted out" not in pam.get(f"/console/conversations/ops/{MARIA}").text
    csv = pam.get(f"/console/conversations/ops/{MARIA}/export.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "created,direction" in csv.text and "STOP" in csv.text
    assert audit(gw, "ConversationExported")[0]["user"] == "pam"


def test_pool_grants_hide_other_pools_and_viewers_read_only(gw, twilio_emulator):
    twilio_emulator.phone(MARIA).send("ops only secret", to=OPS_NUMBER)
    sid, stoken = sign_in(gw, "sid")
    page = sid.get("/console/conversations").text
    assert "ops only secret" not in page and MARIA not in page and "+15005550006" not in page
    assert "1 new" not in page
    for path in (f"/console/conversations/ops/{MARIA}", f"/console/conversations/ops/{MARIA}/messages",
                 f"/console/conversations/ops/{MARIA}/export.csv", f"/console/conversations/@main/{MARIA}"):
        assert sid.get(path).status_code == 403, path
    assert "ops only secret" not in sid.get("/console/conversations/rows", params={"pool": "ops"},
                                            headers=FRAGMENT).text
    for action in ("send", "delete"):
        r = sid.post(f"/console/conversations/ops/{MARIA}/{action}", data={"text": "x", "csrf": stoken})
        assert r.status_code == 403, action
    assert sid.get(f"/console/conversations/nope/{MARIA}").status_code == 404

    vera, vtoken = sign_in(gw, "vera")
    page = vera.get(f"/console/conversations/ops/{MARIA}").text
    assert "ops only secret" in page and "Send</button>" not in page and "replying needs the operator role" in page
    r = vera.post(f"/console/conversations/ops/{MARIA}/send", data={"text": "x", "csrf": vtoken})
    assert r.status_code == 403 and "operator role" in r.text
    assert len([m for m in twilio_emulator.messages if m.body == "x"]) == 0


def test_soft_delete_is_audited_hidden_and_pool_admins_still_see_it(gw, twilio_emulator):
    twilio_emulator.phone(LI).send("please delete me", to=OPS_NUMBER)
    listed = f'data-number="{LI}"'
    otto, token = sign_in(gw, "otto")
    assert listed in otto.get("/console/conversations").text
    r = otto.post(f"/console/conversations/ops/{LI}/delete", data={"csrf": token})
    assert r.status_code == 303
    assert listed not in otto.get("/console/conversations").text
    assert "please delete me" not in otto.get(f"/console/conversations/ops/{LI}").text
    assert gw.client.get("/api/sms/messages", params={"number": LI}).json()["messages"] == []
    [entry] = audit(gw, "ConversationDeleted")
    assert entry["user"] == "otto" and entry["contact"] == LI and entry["details"]["messages"] >= 1
    pam, _ = sign_in(gw, "pam")
    assert listed not in pam.get("/console/conversations").text
    assert listed in pam.get("/console/conversations", params={"deleted": "1", "pool": "ops"}).text
    assert "please delete me" in pam.get(f"/console/conversations/ops/{LI}").text
    # a new message starts the conversation afresh
    twilio_emulator.phone(LI).send("hello again", to=OPS_NUMBER)
    assert listed in otto.get("/console/conversations").text
    thread = otto.get(f"/console/conversations/ops/{LI}").text
    assert "hello again" in thread and "please delete me" not in thread


def test_dispatch_sms_from_an_alarm_and_the_reply_is_logged_against_it(gw, twilio_emulator):
    event = raise_alarm(gw, "plant/pump7", "wait", name="Pump 7 <fault>", priority="High",
                        displayPath="Plant/Pump 7", eventValue=42)
    phone = twilio_emulator.phone(MARIA)
    otto, token = sign_in(gw, "otto")
    page = otto.get(f"/console/alarms/{event['id']}").text
    assert "Dispatch SMS" in page and 'value="user:maria"' in page and 'value="roster:operators"' in page
    assert "High alarm Plant/Pump 7: Pump 7 &lt;fault&gt; (value 42)" in page  # prefilled from the alarm
    vera, vtoken = sign_in(gw, "vera")
    assert "Dispatch SMS" not in vera.get(f"/console/alarms/{event['id']}").text
    assert vera.post(f"/console/alarms/{event['id']}/dispatch",
                     data={"to": "user:maria", "pool": "ops", "text": "x", "csrf": vtoken}).status_code == 403

    r = otto.post(f"/console/alarms/{event['id']}/dispatch",
                  data={"to": "roster:operators", "pool": "ops", "text": "Pump 7 needs a look, can you go?",
                        "csrf": token})
    assert r.status_code == 303 and r.headers["location"].endswith("?dispatched=1")
    sms = phone.expect_sms(contains="Pump 7 needs a look", from_=OPS_NUMBER)
    [stored] = [m for m in gw.client.get("/api/sms/messages", params={"number": MARIA}).json()["messages"]
                if m["body"] == sms.body]
    assert stored["eventIds"] == [event["id"]]

    phone.reply("On site in 10 <min>")
    replies = wait_until(lambda: [a for a in audit(gw, "SMSReply") if a["text"] == "On site in 10 <min>"])
    assert replies[0]["eventIds"] == [event["id"]] and replies[0]["user"] == "maria"
    history = otto.get(f"/console/alarms/{event['id']}").text.split("<h2>History", 1)[1]
    assert "SMSReply" in history and "On site in 10 &lt;min&gt;" in history
    trace = otto.get(f"/console/alarms/{event['id']}/trace").text
    assert "SMSReply" in trace and "On site in 10 &lt;min&gt;" in trace and "SMSDispatched" in trace
    # the dispatch is part of the pool's conversation with her, linked to the alarm
    thread = otto.get(f"/console/conversations/ops/{MARIA}").text
    assert "Pump 7 needs a look" in thread and f"/console/alarms/{event['id']}" in thread

    # an opted-out recipient is skipped, with the reason
    phone.send("STOP", to=OPS_NUMBER)
    r = otto.post(f"/console/alarms/{event['id']}/dispatch",
                  data={"to": "user:maria", "pool": "ops", "text": "second try", "csrf": token})
    assert r.status_code == 409 and "opted out" in r.text
    assert not [m for m in phone.messages if m.body == "second try"]
