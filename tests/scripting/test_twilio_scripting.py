"""``system.twilio`` in scripts and the Twilio statistics tags, against the emulator."""

from __future__ import annotations

from typing import Any

import pytest

from annunciator.plugins.twilio.service import TwilioService

from conftest import Subscriber, raise_alarm, wait_until

pytestmark = pytest.mark.twilio

MARIA = "+15550100001"


def run_script(gw: Any, source: str) -> dict[str, Any]:
    """Run a script in the gateway the way the Script block does, and return its globals."""
    from annunciator.scripting.plugin import scripting_system
    from annunciator.scripting.runner import Script

    async def system() -> Any:
        return scripting_system(gw.gateway.services)

    sysobj = gw.call(system)
    import asyncio

    async def run() -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(
            None, Script.compile(source, "<test script>").run, {"system": sysobj})

    return gw.call(run)


def tag(gw: Any, path: str) -> Any:
    return gw.gateway.tags.read(path).value


@pytest.fixture
def twilio_gateway(gateway_config, start_gateway, twilio_emulator):
    tw = twilio_emulator

    def start() -> Any:
        port = gateway_config["gateway"]["http"]["port"]
        gateway_config["gateway"]["external_url"] = f"http://127.0.0.1:{port}"
        tw.sms_url = f"http://127.0.0.1:{port}/twilio/sms"
        gateway_config["twilio"] = {"accounts": {"main": {
            "account_sid": tw.account_sid, "auth_token": tw.auth_token, "api_base": tw.api_base,
            "numbers": tw.numbers, "rate_limit": 0}}}
        gateway_config["profiles"]["sms"] = {"type": "twilio-sms"}
        gateway_config["pipelines"] = {"page": {"blocks": [
            {"type": "notification", "roster": "operators", "profile": "sms", "message": "{name}"}]}}
        return start_gateway(gateway_config)

    return start


def test_send_message_from_a_script_counts_everywhere(twilio_gateway, twilio_emulator, gateway_config, mosquitto):
    host, port = mosquitto
    gateway_config["mqtt"] = {"host": host, "port": port, "prefix": "plant"}
    gw = twilio_gateway()
    topic = "plant/System/Gateway/Twilio/MessagesSent"
    broker = Subscriber(host, port, topic)
    before = tag(gw, "System/Gateway/Twilio/MessagesSent")
    out = run_script(gw, 'ok = system.twilio.sendMessage("+12223334444", "Hello World!")\n'
                         'u = system.twilio.getUser("maria")\nmaria_before = u.getMessagesSent()\n'
                         'ok2 = system.twilio.sendMessage("+1 (555) 010-0001", "Hi Maria")\n'
                         'maria_after = system.twilio.getUser(0).getMessagesSent()\n')
    assert out["ok"] is True and out["ok2"] is True
    twilio_emulator.phone("+12223334444").expect_sms(contains="Hello World!")
    twilio_emulator.phone(MARIA).expect_sms(contains="Hi Maria")
    assert out["maria_after"] == out["maria_before"] + 1  # maria is user 0: the first in the config
    wait_until(lambda: tag(gw, "System/Gateway/Twilio/MessagesSent") == before + 2)
    try:  # the broker holds the new value, retained for whoever subscribes later
        wait_until(lambda: broker.value(topic) == before + 2)
    finally:
        broker.close()
    late = Subscriber(host, port, topic)
    try:
        wait_until(lambda: late.value(topic) == before + 2)
    finally:
        late.close()
    table = tag(gw, "System/Gateway/Twilio/UserStatistics")
    columns = table["columns"] if isinstance(table, dict) else table.columns
    rows = table["rows"] if isinstance(table, dict) else table.rows
    row = dict(zip(columns, next(r for r in rows if r[1] == "maria"), strict=True))
    assert (row["UserId"], row["PhoneNumber"], row["MessagesSent"]) == (0, MARIA, 1)


def test_send_message_bad_input_returns_false_with_a_reason(twilio_gateway):
    gw = twilio_gateway()
    out = run_script(gw, 'a = system.twilio.sendMessage("12345", "x"); ea = system.twilio.lastError()\n'
                         'b = system.twilio.sendMessage("+12223334444", ""); eb = system.twilio.lastError()\n'
                         'c = system.twilio.sendMessage("+12223334444", "x" * 2000); ec = system.twilio.lastError()\n'
                         'try:\n    system.twilio.getUser(999)\nexcept LookupError as exc:\n    missing = str(exc)\n'
                         'accounts = system.twilio.getAccounts(); numbers = system.twilio.getPhoneNumbers("main")\n')
    assert (out["a"], out["b"], out["c"]) == (False, False, False)
    assert "not an E.164 number" in out["ea"]
    assert "empty" in out["eb"]
    assert "at most 1600" in out["ec"]
    assert out["missing"].startswith("no user 999; known: 0 (maria), 1 (li), 2 (sam)")
    assert out["accounts"] == ["main"] and out["numbers"] == [twilio_emulator_number(gw)]


def twilio_emulator_number(gw: Any) -> str:
    return gw.gateway.services.state.get(TwilioService).account("main").numbers[0]


def test_statistics_survive_a_restart(twilio_gateway, twilio_emulator, gateway_config, start_gateway):
    gw = twilio_gateway()
    phone = twilio_emulator.phone(MARIA)
    raise_alarm(gw, "plant/a", "page")
    phone.expect_sms()
    phone.reply("1234")
    phone.expect_sms(contains="Acknowledged")
    # the phone can have the reply before the gateway has Twilio's answer to sending it (slower
    # through the contract proxy): wait for both counts, then check they are exactly these
    wait_until(lambda: tag(gw, "System/Gateway/Twilio/MessagesReceived") == 1
               and tag(gw, "System/Gateway/Twilio/MessagesSent") == 2)
    counts = {n: tag(gw, f"System/Gateway/Twilio/{n}") for n in ("MessagesSent", "MessagesReceived")}
    assert counts == {"MessagesSent": 2, "MessagesReceived": 1}
    gw.stop()
    gw2 = start_gateway(gateway_config, name="again.yaml")
    wait_until(lambda: tag(gw2, "System/Gateway/Twilio/MessagesSent") == 2)
    assert tag(gw2, "System/Gateway/Twilio/MessagesReceived") == 1
    out = run_script(gw2, "print_me = system.twilio.getUser(0).getMessagesSent()\n"
                          "received = system.twilio.getUser(0).messages_received\n")
    assert (out["print_me"], out["received"]) == (2, 1)
