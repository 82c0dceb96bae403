from __future__ import annotations

from typing import Any

import pytest

from annunciator.testing.gateway import RunningGateway


def raise_alarm(gw: RunningGateway, source: str, pipeline: str | None = None, **fields: Any) -> dict[str, Any]:
    """Raise one alarm over the HTTP API and return its event."""
    body: dict[str, Any] = {"source": source, **fields}
    if pipeline:
        body["pipelines"] = {"active": pipeline}
    r = gw.client.post("/api/alarms", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()["events"][0]


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
