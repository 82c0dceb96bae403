"""Crash safety: a real `annunciator run` process killed with SIGKILL loses nothing."""

from __future__ import annotations

import time

import httpx
import pytest

from annunciator.testing.gateway import GatewayProcess, api_client, write_config

pytestmark = pytest.mark.slow


def delayed_page(delay: str, message: str) -> dict:
    return {"late": {"blocks": [
        {"type": "delay", "delay": delay},
        {"type": "notification", "profile": "hook", "roster": "operators", "message": message}]}}


def start_process(tmp_path, gateway_config, pipelines) -> GatewayProcess:
    gateway_config["pipelines"] = pipelines
    return GatewayProcess(write_config(tmp_path / "annunciator.yaml", gateway_config)).start()


def test_kill_9_during_delay_resumes_and_sends_once_when_due(tmp_path, gateway_config, webhook_receiver):
    proc = start_process(tmp_path, gateway_config, delayed_page("4s", "due {name}"))
    try:
        with api_client(proc.url) as api:
            r = api.post("/api/alarms", json={"source": "plant/tank", "name": "Tank high",
                                              "pipelines": {"active": "late"}})
            assert r.status_code == 201, r.text
        raised = time.monotonic()
        time.sleep(1.0)
        proc.kill()
        assert webhook_receiver.count == 0
        proc.start()
        [req] = webhook_receiver.wait_for(1, timeout=15)
        assert req.json["message"] == "due Tank high"
        # due 4 s after the raise: not before (the wait survived), not much after
        assert req.received_at - raised >= 3.9
        assert req.received_at - raised < 9
        time.sleep(1.5)
        assert webhook_receiver.count == 1
    finally:
        proc.stop()


def test_pending_notification_sent_after_crash_keeps_its_idempotency_key(tmp_path, gateway_config,
                                                                           webhook_receiver):
    # The receiver is down (503) when the alarm goes out, so the notification stays pending
    # with retries; the gateway is killed; after restart it is delivered with the same key.
    webhook_receiver.status = 503
    gateway_config["gateway"]["retry"] = {"attempts": 50, "backoff": "2s", "max_backoff": "2s"}
    proc = start_process(tmp_path, gateway_config, {"now": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "{name}"}]}})
    try:
        with api_client(proc.url) as api:
            event = api.post("/api/alarms", json={"source": "plant/valve", "name": "Valve stuck",
                                                  "pipelines": {"active": "now"}}).json()["events"][0]
        first = webhook_receiver.wait_for(1)[0]
        time.sleep(0.5)  # let the failed attempt be recorded: the count must survive the crash
        proc.kill()
        webhook_receiver.status = 200
        webhook_receiver.clear()
        proc.start()
        [req] = webhook_receiver.wait_for(1, timeout=15)
        assert req.json["idempotencyKey"] == first.json["idempotencyKey"]
        with api_client(proc.url) as api:
            [n] = api.get(f"/api/alarms/{event['id']}/trace").json()["notifications"]
        assert n["status"] == "sent" and n["attempts"] >= 2
    finally:
        proc.stop()


def test_acknowledged_before_restart_stays_quiet(tmp_path, gateway_config, webhook_receiver):
    proc = start_process(tmp_path, gateway_config, delayed_page("2s", "late"))
    try:
        with api_client(proc.url) as api:
            event = api.post("/api/alarms", json={"source": "plant/a", "pipelines": {"active": "late"}}
                             ).json()["events"][0]
            assert api.post(f"/api/alarms/{event['id']}/acknowledge", json={"user": "maria"}).status_code == 200
        proc.kill()
        proc.start()
        time.sleep(3)
        assert webhook_receiver.count == 0
        status = httpx.get(proc.url + "/api/health").json()["status"]
        assert status == "ok"
    finally:
        proc.stop()


def test_second_gateway_on_the_same_database_refuses_or_stands_by(tmp_path, gateway_config):
    """SQLite: a second gateway refuses and names PostgreSQL. PostgreSQL: it starts as a standby,
    and becomes the active one when the first dies (docs/ha.md)."""
    import subprocess
    import sys

    proc = start_process(tmp_path, gateway_config, delayed_page("1h", "x"))
    try:
        second = tmp_path / "second.yaml"
        gateway_config["gateway"]["http"]["port"] += 1  # a free port is not the point
        write_config(second, gateway_config)
        if gateway_config["gateway"]["database"].startswith("sqlite"):
            r = subprocess.run([sys.executable, "-m", "annunciator", "run", "-c", str(second)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 1
            assert "another gateway" in r.stderr and "is already using" in r.stderr
            assert "PostgreSQL" in r.stderr
            assert httpx.get(proc.url + "/api/health").json()["status"] == "ok"
            proc.kill()  # however the first one dies, the database is free again
            proc2 = GatewayProcess(second).start()
        else:
            proc2 = GatewayProcess(second).start(role="standby")
            assert httpx.get(proc.url + "/api/health").json()["role"] == "active"
            proc.kill()
            health: dict[str, object] = {}
            for _ in range(200):  # the killed one's lease: taken over at once (same machine) or when it runs out
                health = proc2.health()
                if health["role"] == "active":
                    break
                time.sleep(0.1)
            assert health["role"] == "active", health
        proc2.stop()
    finally:
        proc.stop()
