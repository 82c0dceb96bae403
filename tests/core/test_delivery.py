"""Channel policy, fallback, retries on the record, and the audit log, through a running gateway
and real HTTP receivers."""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from annunciator.cli import main
from annunciator.testing.gateway import TOKEN
from annunciator.testing.receiver import WebhookReceiver

from conftest import ack, raise_alarm, story, wait_until


@pytest.fixture
def backup_receiver():
    with WebhookReceiver() as rx:
        yield rx


def channels(gateway_config: dict[str, Any], primary: WebhookReceiver, backup: WebhookReceiver) -> None:
    """Two contact-bound profiles: 'pager' sends to a person's sms number, 'mailer' to their email."""
    gateway_config["profiles"] = {
        "pager": {"type": "webhook", "url": primary.url, "contact": "sms", "timeout": "5s"},
        "mailer": {"type": "webhook", "url": backup.url, "contact": "email", "timeout": "5s"},
    }
    gateway_config["users"]["maria"]["contacts"] = {"sms": "+15550100001", "email": "maria@example.com"}


def block(**settings: Any) -> dict[str, Any]:
    return {"type": "notification", "roster": "operators", "profiles": ["pager", "mailer"],
            "message": "{name} at {displayPath}", **settings}


def test_fallback_after_retries_run_out(gateway_config, pipeline_gateway, webhook_receiver, backup_receiver):
    channels(gateway_config, webhook_receiver, backup_receiver)
    webhook_receiver.status = 500
    gw = pipeline_gateway({"page": {"blocks": [block(policy="fallback")]}})
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped", displayPath="Plant/Pump 1")

    [mail] = backup_receiver.wait_for(1)
    assert mail.json["contact"] == "maria@example.com"
    assert mail.json["message"] == "Pump 1 tripped at Plant/Pump 1"
    # three attempts on the pager (retry.attempts = 3), then the next channel, once
    assert [r.json["contact"] for r in webhook_receiver.requests] == ["+15550100001"] * 3

    told = wait_until(lambda: (s := story(gw, event["id"])) and
                      {n["status"] for n in s["notifications"]} == {"failed", "sent"} and s)
    pager, mailer = told["notifications"]
    assert (pager["profile"], pager["status"], pager["attempts"]) == ("pager", "failed", 3)
    assert [a["ok"] for a in pager["attemptLog"]] == [False, False, False]
    assert all("HTTP 500" in a["error"] for a in pager["attemptLog"])
    assert [a["retryIn"] >= 0 for a in pager["attemptLog"][:2]] == [True, True]
    assert pager["fallbacks"] == ["mailer"]
    assert (mailer["profile"], mailer["status"], mailer["chainId"]) == ("mailer", "sent", pager["chainId"])

    actions = [(t["action"], t["why"]) for t in told["trace"]]
    assert any(a == "notify" and "maria via pager (+15550100001) (fallback); if it fails: mailer" in w
               for a, w in actions)
    assert any(a == "fallback" and "maria via pager (+15550100001) failed (HTTP 500" in w
               and "trying mailer (maria@example.com)" in w for a, w in actions)
    codes = [a["code"] for a in told["audit"]]
    assert codes.count("NotificationRetry") == 2
    assert codes.index("NotificationFailed") < codes.index("ChannelFallback") < codes.index("NotificationSent")


def test_every_channel_failing_is_traced(gateway_config, pipeline_gateway, webhook_receiver, backup_receiver):
    channels(gateway_config, webhook_receiver, backup_receiver)
    webhook_receiver.status = backup_receiver.status = 400  # not retryable: fail at once
    gw = pipeline_gateway({"page": {"blocks": [block(policy="fallback")]}})
    event = raise_alarm(gw, "plant/pump1", "page")
    told = wait_until(lambda: (s := story(gw, event["id"])) and
                      any(t["action"] == "notify-failed" for t in s["trace"]) and s)
    [last] = [t["why"] for t in told["trace"] if t["action"] == "notify-failed"]
    assert last.startswith("maria: every channel failed; last: mailer (maria@example.com): HTTP 400")
    assert [n["status"] for n in told["notifications"]] == ["failed", "failed"]


def test_first_available_follows_the_persons_order(gateway_config, pipeline_gateway, webhook_receiver,
                                                   backup_receiver):
    channels(gateway_config, webhook_receiver, backup_receiver)
    gateway_config["users"]["maria"]["channels"] = {"policy": "first-available", "order": ["mailer"]}
    gateway_config["users"]["li"]["contacts"] = {"sms": ["+15550100002", "+15550100003"]}
    gateway_config["rosters"]["operators"] = ["maria", "li"]
    gw = pipeline_gateway({"page": {"blocks": [block()]}})
    raise_alarm(gw, "plant/x", "page")
    [mail] = backup_receiver.wait_for(1)
    assert mail.json["user"]["username"] == "maria"  # her order puts email first
    # li has no policy of his own: the default is every channel he can be reached on, both phones
    pages = webhook_receiver.wait_for(2)
    assert sorted(r.json["contact"] for r in pages) == ["+15550100002", "+15550100003"]
    time.sleep(0.3)
    assert webhook_receiver.count == 2 and backup_receiver.count == 1


def test_block_policy_beats_the_persons(gateway_config, pipeline_gateway, webhook_receiver, backup_receiver):
    channels(gateway_config, webhook_receiver, backup_receiver)
    gateway_config["users"]["maria"]["channels"] = {"policy": "first-available"}
    gw = pipeline_gateway({"page": {"blocks": [block(policy="all")]}})
    raise_alarm(gw, "plant/x", "page")
    webhook_receiver.wait_for(1)
    backup_receiver.wait_for(1)


def test_no_usable_contact_is_journaled(gateway_config, pipeline_gateway, webhook_receiver, backup_receiver):
    channels(gateway_config, webhook_receiver, backup_receiver)
    gateway_config["rosters"]["operators"] = ["li"]  # li has an sms number only
    gw = pipeline_gateway({"page": {"blocks": [block(profiles=["mailer"])]}})
    event = raise_alarm(gw, "plant/x", "page")
    told = story(gw, event["id"])
    why = "li cannot be reached: no email contact for profile mailer"
    assert [t["why"] for t in told["trace"] if t["action"] == "notify-failed"] == [why]
    assert [j["notes"] for j in told["journal"] if j["action"] == "notify-failed"] == [why]
    assert [(a["code"], a["user"]) for a in told["audit"]] == [("NoContactInfo", "li")]
    assert backup_receiver.count == 0


def test_acknowledged_alarm_does_not_fall_back(gateway_config, pipeline_gateway, webhook_receiver,
                                               backup_receiver):
    channels(gateway_config, webhook_receiver, backup_receiver)
    gateway_config["gateway"]["retry"] = {"attempts": 3, "backoff": "1s", "max_backoff": "1s"}
    webhook_receiver.status = 500
    gw = pipeline_gateway({"page": {"blocks": [block(policy="fallback")]}})
    event = raise_alarm(gw, "plant/x", "page")
    webhook_receiver.wait_for(1)
    assert ack(gw, event["id"]).status_code == 200
    told = wait_until(lambda: (s := story(gw, event["id"])) and s["notifications"][0]["status"] == "cancelled"
                      and s, timeout=15)
    assert "not retried: acknowledged by maria" in told["notifications"][0]["lastError"]
    time.sleep(1.5)  # past the retry that would have come
    assert backup_receiver.count == 0
    assert webhook_receiver.count == 1


def test_fallback_goes_on_for_a_pipeline_that_notifies_acknowledged_alarms(
        gateway_config, pipeline_gateway, webhook_receiver, backup_receiver):
    """A pipeline without the acknowledged dropout (e.g. "tell the supervisor it was acknowledged")
    still wants its message delivered: fallback follows the pipeline's dropout."""
    channels(gateway_config, webhook_receiver, backup_receiver)
    webhook_receiver.status = 400
    gw = pipeline_gateway({"told": {"dropout": ["cleared"], "blocks": [block(policy="fallback")]}})
    event = raise_alarm(gw, "plant/x")
    assert ack(gw, event["id"]).status_code == 200
    r = gw.client.post("/api/alarms", json={"source": "plant/y", "pipelines": {"active": "told"}})
    assert r.status_code == 201
    other = r.json()["events"][0]
    assert ack(gw, other["id"]).status_code == 200
    [mail] = backup_receiver.wait_for(1)
    assert mail.json["events"][0]["id"] == other["id"]


def test_audit_api_and_cli(gateway_config, pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"page": {"blocks": [
        {"type": "notification", "roster": "operators", "profile": "hook"}]}})
    event = raise_alarm(gw, "plant/x", "page")
    webhook_receiver.wait_for(1)
    wait_until(lambda: gw.client.get("/api/audit", params={"code": "NotificationSent"}).json()["audit"])
    assert gw.client.get(f"/api/alarms/{event['id']}/acknowledge").status_code == 405
    runner = CliRunner()
    args = ["--url", gw.url, "--token", TOKEN]
    r = runner.invoke(main, ["alarm", "ack", event["id"], "--user", "maria", "--notes", "on my way", *args])
    assert r.exit_code == 0, r.output

    r = runner.invoke(main, ["audit", "--user", "maria", *args])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "NotificationSent" in lines[0] and "maria hook" in lines[0]
    assert "Acknowledged" in lines[1] and "maria cli" in lines[1] and "on my way" in lines[1]

    entries = gw.client.get("/api/audit", params={"eventId": event["id"]}).json()["audit"]
    assert [e["code"] for e in entries] == ["NotificationSent", "Acknowledged"]
    assert gw.client.get("/api/audit", params={"code": "SMSReply"}).json()["audit"] == []
    assert gw.client.get("/api/audit", params={"limit": "0"}).status_code == 422
    r = runner.invoke(main, ["audit", "--code", "NoSuchCode", *args])
    assert r.exit_code == 0 and r.output.strip() == "no audit entries match"


def test_provider_reporting_undelivered_triggers_the_next_channel(gateway_config, pipeline_gateway,
                                                                  webhook_receiver, backup_receiver):
    """A message the provider accepted and later reports undelivered (as a Twilio status callback
    does) moves on to the next channel; a replayed report changes nothing."""
    channels(gateway_config, webhook_receiver, backup_receiver)
    gw = pipeline_gateway({"page": {"blocks": [block(policy="fallback")]}})
    event = raise_alarm(gw, "plant/x", "page")
    [page] = webhook_receiver.wait_for(1)
    wait_until(lambda: story(gw, event["id"])["notifications"][0]["status"] == "sent")

    def report(status: str, error: str | None = None) -> bool:
        return gw.call(lambda: gw.gateway.delivery.delivery_status(page.request_id, status, error))

    assert report("sent") is True
    assert backup_receiver.count == 0
    assert report("undelivered", "30003 Unreachable destination handset") is True
    [mail] = backup_receiver.wait_for(1)
    assert mail.json["contact"] == "maria@example.com"
    assert report("undelivered", "30003 Unreachable destination handset") is True  # replayed
    assert report("sent") is True  # arriving late, out of order: must not undo "undelivered"
    assert gw.call(lambda: gw.gateway.delivery.delivery_status("rx-unknown", "delivered")) is False
    time.sleep(0.3)
    assert backup_receiver.count == 1

    told = story(gw, event["id"])
    first = told["notifications"][0]
    assert (first["providerId"], first["deliveryStatus"]) == (page.request_id, "undelivered")
    assert [a.get("status") for a in first["attemptLog"]] == [None, "sent", "undelivered"]
    assert any(t["action"] == "delivery" and "provider reports undelivered (30003" in t["why"]
               for t in told["trace"])
    codes = [a["code"] for a in told["audit"]]
    assert "NotificationUndelivered" in codes and "ChannelFallback" in codes


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_long_retry_after_falls_back_at_once_instead_of_waiting_it_out(
        gateway_config, pipeline_gateway, webhook_receiver, backup_receiver, form):
    """A pager answering 429 "Retry-After: 3600" (or the same hour as an HTTP date) while the
    person has email: the page goes by email now, not in an hour."""
    channels(gateway_config, webhook_receiver, backup_receiver)
    webhook_receiver.status = 429
    in_an_hour = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=3600), usegmt=True)
    webhook_receiver.headers = {"Retry-After": "3600" if form == "seconds" else in_an_hour}
    gw = pipeline_gateway({"page": {"blocks": [block(policy="fallback")]}})
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 tripped", displayPath="Plant/Pump 1")
    started = time.monotonic()
    [mail] = backup_receiver.wait_for(1, timeout=10)
    assert time.monotonic() - started < 10
    assert mail.json["contact"] == "maria@example.com"
    assert len(webhook_receiver.requests) == 1  # one try on the pager, no waiting out the hour
    told = wait_until(lambda: (s := story(gw, event["id"])) and
                      {n["status"] for n in s["notifications"]} == {"failed", "sent"} and s)
    pager = next(n for n in told["notifications"] if n["profile"] == "pager")
    assert re.search(r"asked to wait 3[56]\d\ds; falling back to mailer", pager["lastError"]), pager["lastError"]
