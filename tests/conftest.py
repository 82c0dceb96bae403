from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from annunciator.testing.gateway import RunningGateway, free_port


def raise_alarm(gw: RunningGateway, source: str, pipeline: str | None = None, **fields: Any) -> dict[str, Any]:
    """Raise one alarm over the HTTP API and return its event."""
    body: dict[str, Any] = {"source": source, **fields}
    if pipeline:
        body["pipelines"] = {"active": pipeline}
    r = gw.client.post("/api/alarms", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()["events"][0]


def wait_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout:g}s")


def ack(gw: RunningGateway, event_id: str, user: str = "maria", notes: str = "") -> Any:
    return gw.client.post(f"/api/alarms/{event_id}/acknowledge", json={"user": user, "notes": notes})


def story(gw: RunningGateway, event_id: str) -> dict[str, Any]:
    r = gw.client.get(f"/api/alarms/{event_id}/trace")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def pipeline_gateway(gateway_config, start_gateway):
    """Start a gateway with the given pipelines added to the base test config."""

    def start(pipelines: dict[str, Any], _plugins: list[Any] | None = None, **extra: Any) -> RunningGateway:
        gateway_config["pipelines"] = pipelines
        gateway_config.update(extra)
        return start_gateway(gateway_config, plugins=_plugins)

    return start


@pytest.fixture
def sms_gw(gateway_config, start_gateway, twilio_emulator):
    """Start a gateway whose Twilio profiles send through the emulator (or Prism in front of it)."""
    tw = twilio_emulator

    def start(pipelines: dict[str, Any] | None = None, *, profiles: dict[str, dict[str, Any]] | None = None,
              account: dict[str, Any] | None = None, users: dict[str, dict[str, Any]] | None = None,
              rosters: dict[str, list[str]] | None = None, retry: dict[str, Any] | None = None,
              **sections: Any) -> RunningGateway:
        base = f"http://127.0.0.1:{gateway_config['gateway']['http']['port']}"
        gateway_config["gateway"]["external_url"] = base
        if retry:
            gateway_config["gateway"]["retry"] = retry
        tw.sms_url = f"{base}/twilio/sms"
        gateway_config["twilio"] = {"accounts": {"main": {
            "account_sid": tw.account_sid, "auth_token": tw.auth_token, "api_base": tw.api_base,
            "numbers": tw.numbers, "rate_limit": 0, **(account or {})}}}
        gateway_config["profiles"].update(profiles or {"sms": {"type": "twilio-sms"}})
        for name, extra in (users or {}).items():
            gateway_config["users"].setdefault(name, {}).update(extra)
        gateway_config["rosters"].update(rosters or {})
        gateway_config["pipelines"] = pipelines or {"page": {"blocks": [
            {"type": "notification", "roster": "operators", "profile": "sms", "message": "{name}"}]}}
        gateway_config.update(sections)  # e.g. scripts={"api_run": True}
        return start_gateway(gateway_config)

    return start


@pytest.fixture(scope="module")
def pipeline_gateway_once(tmp_path_factory):
    """One gateway for a whole module (hypothesis runs many examples against it)."""
    from annunciator.testing.gateway import TOKEN, RunningGateway, free_port, write_config

    tmp = tmp_path_factory.mktemp("gw")
    config = {
        "gateway": {"http": {"port": free_port()}, "database": f"sqlite:///{tmp / 'a.db'}",
                    "api_tokens": [TOKEN], "secret_file": str(tmp / "secret.key")},
        "profiles": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/unused"}},
        "users": {"maria": {}}, "rosters": {"operators": ["maria"]},
        "pipelines": {"p": {"blocks": [{"type": "delay", "delay": "1h"}]}},
    }
    gw = RunningGateway(write_config(tmp / "annunciator.yaml", config)).start()
    yield gw
    gw.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Our own broker on a free port (the machine's may not exist or may hold stale retained values)."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if binary is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install -y mosquitto; .ci/run does this)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with open(tmp_path / "mosquitto.log", "wb") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not start: {(tmp_path / 'mosquitto.log').read_text()}")
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)


class Subscriber:
    """A paho client that records the last message per topic."""

    def __init__(self, host: str, port: int, topic: str):
        import paho.mqtt.client as mqtt

        self.messages: dict[str, dict[str, Any]] = {}
        self.retained: dict[str, bool] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_message = self._message
        self.client.connect(host, port)
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages[msg.topic] = json.loads(msg.payload)
            self.retained[msg.topic] = bool(msg.retain)

    def value(self, topic: str) -> Any:
        with self.lock:
            return self.messages.get(topic, {}).get("value")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def private_postgres() -> Iterator[Any]:
    """A PostgreSQL server of the test's own, to stop, freeze or restart (never the shared one)."""
    from annunciator.testing.postgres import PostgresMissing, PrivateCluster

    try:
        cluster = PrivateCluster()
    except PostgresMissing as exc:
        pytest.skip(str(exc))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
