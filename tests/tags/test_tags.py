"""Tags: the provider's types and path rules, /api/tags, /metrics, MQTT export and import (real
Mosquitto), and alarms driven by tag values through a pipeline to the webhook receiver."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from annunciator import hookimpl
from annunciator.core.tag_provider import BAD, Dataset, TagError, TagNotFound, TagProvider, TagReadOnly

from conftest import Subscriber, wait_until

# --- the provider ---------------------------------------------------------------------------


def test_data_types_convert_losslessly_and_refuse_the_wrong_type_keeping_the_value():
    tags = TagProvider()
    tags.define("A/Int", "Int4", 1)
    tags.define("A/Big", "Int8", 2**40)
    tags.define("A/Float", "Float8", 1)
    tags.define("A/Bool", "Boolean", False)
    tags.define("A/Text", "String", "x")
    tags.define("A/When", "DateTime", "2026-11-23T08:00:00+01:00")
    tags.define("A/Table", "Dataset", {"columns": ["Id", "Name"], "rows": [[1, "a"]]})
    assert tags.read("A/Float").value == 1.0 and isinstance(tags.read("A/Float").value, float)
    assert tags.read("A/When").value == datetime(2026, 11, 23, 7, tzinfo=UTC)
    assert tags.read("A/Table").value == Dataset(columns=["Id", "Name"], rows=[[1, "a"]])

    for path, bad in [("A/Int", "abc"), ("A/Int", "12"), ("A/Int", 2**31), ("A/Int", True), ("A/Int", 1.5),
                      ("A/Big", 2**63), ("A/Float", "1.0"), ("A/Float", float("nan")), ("A/Bool", 1),
                      ("A/Text", 5), ("A/When", "yesterday"), ("A/Table", [[1, 2]])]:
        before = tags.read(path).value
        with pytest.raises(TagError) as exc:
            tags.write(path, bad)
        assert path in str(exc.value)
        assert tags.read(path).value == before, f"{path} changed after a refused write of {bad!r}"
    with pytest.raises(TagError, match="Int4 expects an integer, got str 'abc'"):
        tags.write("A/Int", "abc")

    assert tags.write("A/Int", 3.0) is True and tags.read("A/Int").value == 3
    assert tags.write("A/Int", 3) is False  # no change, no subscriber call
    with pytest.raises(TagError, match="already defined as Int4"):
        tags.define("A/Int", "String")
    with pytest.raises(TagError, match="unknown data type"):
        tags.define("A/Other", "Int2")
    with pytest.raises(TagError, match="2 values for 3 columns"):
        Dataset(columns=["a", "b", "c"], rows=[[1, 2]])


def test_unknown_and_read_only_tags_and_subscribers_get_snapshots():
    tags = TagProvider()
    tags.define("System/Count", "Int4", 0)
    tags.define("Plant/Level", "Float8", 0, writable=True)
    seen: list[tuple[str, Any, str]] = []
    unsubscribe = tags.subscribe(lambda t: seen.append((t.path, t.value, t.quality)), prefix="Plant")
    tags.write("Plant/Level", 4.5)
    tags.write("Plant/Level", 4.5, "Bad")
    tags.write("System/Count", 1)  # outside the prefix
    assert seen == [("Plant/Level", 4.5, "Good"), ("Plant/Level", 4.5, "Bad")]
    unsubscribe()
    tags.write("Plant/Level", 5)
    assert len(seen) == 2

    with pytest.raises(TagReadOnly):
        tags.write("System/Count", 2, external=True)
    assert tags.read("System/Count").value == 1
    with pytest.raises(TagNotFound):
        tags.write("Plant/Nope", 1)
    assert tags.read("Plant/Nope").quality == BAD
    assert [t.path for t in tags.browse("Plant")] == ["Plant/Level"]


@pytest.mark.parametrize("path", ["", "a//b", "/a", "a/", "a/../b", "..", "a/./b", "a/+/b", "a/#", " a/b",
                                  "a/b\n", "x" * 501])
def test_bad_paths_are_refused(path):
    tags = TagProvider()
    with pytest.raises(TagError):
        tags.define(path, "Int4", 0)
    assert len(tags) == 0


# --- over HTTP --------------------------------------------------------------------------------

USER_COLUMNS = ["UserId", "Username", "PhoneNumber", "MessagesSent", "MessagesReceived"]


class StatsPlugin:
    """Defines tags as the Twilio plugin will: Int4 totals and a per-user Dataset."""

    @hookimpl
    def annunciator_register_tags(self, tags):
        tags.define("Test/Stats/MessagesSent", "Int4", 3)
        tags.define("Test/Stats/UserStatistics", "Dataset", Dataset(
            columns=USER_COLUMNS, rows=[[0, "maria", "+15550100001", 2, 1], [1, "li", "+15550100002", 1, 0]]))
        tags.define("Test/Status", "String", "running")


def _tag_config(gateway_config: dict[str, Any], **mqtt: Any) -> dict[str, Any]:
    gateway_config["pipelines"] = {"page": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "{displayPath} {eventValue}"}]}}
    gateway_config["tags"] = {
        "Plant/Tank1/Level": {"type": "Float8", "value": 10, "alarms": [
            {"name": "High", "mode": "above", "setpoint": 90, "priority": "High", "pipelines": {"active": "page"}}]},
        "Plant/Tank1/Pump": {"type": "Boolean", "value": False},
    }
    if mqtt:
        gateway_config["mqtt"] = mqtt
    return gateway_config


def test_api_tags_json_reads_and_writes(gateway_config, start_gateway):
    gw = start_gateway(_tag_config(gateway_config), plugins=[StatsPlugin()])
    c = gw.client
    all_tags = {t["path"]: t for t in c.get("/api/tags").json()["tags"]}
    assert all_tags["Plant/Tank1/Level"] == {**all_tags["Plant/Tank1/Level"], "dataType": "Float8", "value": 10.0,
                                              "quality": "Good", "writable": True}
    assert "System/Gateway/Alarming/ActiveUnacked/High" in all_tags
    assert all_tags["Test/Stats/UserStatistics"]["value"] == {
        "columns": USER_COLUMNS, "rows": [[0, "maria", "+15550100001", 2, 1], [1, "li", "+15550100002", 1, 0]]}

    one = c.get("/api/tags/Plant/Tank1/Level").json()
    assert one["path"] == "Plant/Tank1/Level" and one["value"] == 10.0
    folder = c.get("/api/tags/Plant/Tank1").json()["tags"]
    assert [t["path"] for t in folder] == ["Plant/Tank1/Level", "Plant/Tank1/Pump"]
    assert c.get("/api/tags/Plant/Nope").status_code == 404
    assert c.get("/api/tags", params={"path": "Plant/../System"}).status_code == 422

    r = c.post("/api/tags/Plant/Tank1/Level", json={"value": 42.5})
    assert r.status_code == 200, r.text
    assert r.json()["value"] == 42.5
    r = c.post("/api/tags/Plant/Tank1/Level", json={"value": "high"})
    assert r.status_code == 422 and "Float8 expects a number" in r.json()["error"]
    assert c.get("/api/tags/Plant/Tank1/Level").json()["value"] == 42.5
    r = c.post("/api/tags/Test/Stats/MessagesSent", json={"value": 0})
    assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert c.post("/api/tags/Plant/Nope", json={"value": 1}).status_code == 404
    assert httpx.get(gw.url + "/api/tags").status_code == 401


def test_metrics_parse_with_prometheus_client(gateway_config, start_gateway):
    from prometheus_client.parser import text_string_to_metric_families

    gw = start_gateway(_tag_config(gateway_config), plugins=[StatsPlugin()])
    assert httpx.get(gw.url + "/metrics").status_code == 401  # the API token guards it by default
    r = gw.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    sample = families["annunciator_test_stats_messages_sent"].samples[0]
    assert sample.value == 3.0 and sample.labels == {}
    assert families["annunciator_plant_tank1_level"].samples[0].value == 10.0
    assert families["annunciator_plant_tank1_pump"].samples[0].value == 0.0
    sent = families["annunciator_test_stats_user_statistics_messages_sent"].samples
    assert {(s.labels["UserId"], s.labels["Username"], s.labels["PhoneNumber"], s.value) for s in sent} == {
        ("0", "maria", "+15550100001", 2.0), ("1", "li", "+15550100002", 1.0)}
    info = families["annunciator_test_status_info"].samples[0]
    assert info.labels == {"value": "running"} and info.value == 1.0
    assert "annunciator_system_gateway_alarming_active_unacked_high" in families

    gw.client.post("/api/tags/Plant/Tank1/Level", json={"value": 55, "quality": "Bad"})
    families = {f.name: f for f in text_string_to_metric_families(gw.client.get("/metrics").text)}
    assert "annunciator_plant_tank1_level" not in families  # a Bad value is not scraped as current
    quality = {s.labels["path"]: s.value for s in families["annunciator_tag_quality_good"].samples}
    assert quality["Plant/Tank1/Level"] == 0.0 and quality["Plant/Tank1/Pump"] == 1.0


def test_public_metrics_needs_no_token(gateway_config, start_gateway):
    gateway_config["gateway"]["public_metrics"] = True
    gw = start_gateway(gateway_config)
    assert httpx.get(gw.url + "/metrics").status_code == 200
    assert httpx.get(gw.url + "/api/tags").status_code == 401


def _alarms(gw: Any, source: str) -> list[dict[str, Any]]:
    return gw.client.get("/api/alarms", params={"source": source}).json()["events"]


LEVEL_HIGH = "prov:default:/tag:Plant/Tank1/Level:/alm:High"


def test_tag_alarm_raises_into_a_pipeline_and_clears(gateway_config, start_gateway, webhook_receiver):
    gw = start_gateway(_tag_config(gateway_config))
    gw.client.post("/api/tags/Plant/Tank1/Level", json={"value": 80})
    gw.client.post("/api/tags/Plant/Tank1/Level", json={"value": 95.5})
    req = webhook_receiver.wait_for(1)[0]
    assert req.json["message"] == "Plant/Tank1/Level/High 95.5"
    assert req.json["user"]["username"] == "maria"
    (event,) = _alarms(gw, LEVEL_HIGH)
    assert event["state"] == "ActiveUnacked" and event["priority"] == "High"
    assert event["properties"]["tagPath"] == "Plant/Tank1/Level"
    wait_until(lambda: gw.client.get("/api/tags/System/Gateway/Alarming/ActiveUnacked/High").json()["value"] == 1,
          what="Alarming/ActiveUnacked/High == 1")

    gw.client.post("/api/tags/Plant/Tank1/Level", json={"value": 97})  # still above: no second event
    gw.client.post("/api/tags/Plant/Tank1/Level", json={"value": 50})
    cleared = wait_until(lambda: [e for e in _alarms(gw, LEVEL_HIGH) if e["state"] == "ClearUnacked"],
                    what="alarm cleared")
    assert cleared[0]["id"] == event["id"]
    time.sleep(0.3)
    assert webhook_receiver.count == 1


# --- MQTT (a real Mosquitto) ----------------------------------------------------------------------

def test_mqtt_publishes_retained_json_on_change_and_takes_writes(gateway_config, start_gateway, mosquitto,
                                                                 webhook_receiver):
    host, port = mosquitto
    gw = start_gateway(_tag_config(gateway_config, host=host, port=port, prefix="site1", write=True),
                       plugins=[StatsPlugin()])
    live = Subscriber(host, port, "site1/#")
    try:
        level = "site1/Plant/Tank1/Level"
        wait_until(lambda: live.value(level) == 10.0, what="initial value published")
        gw.client.post("/api/tags/Plant/Tank1/Level", json={"value": 33.5})
        wait_until(lambda: live.value(level) == 33.5, what="new value published")
        with live.lock:
            msg = live.messages[level]
        assert msg["path"] == "Plant/Tank1/Level" and msg["dataType"] == "Float8" and msg["quality"] == "Good"
        stats = live.messages.get("site1/Test/Stats/UserStatistics") or wait_until(
            lambda: live.messages.get("site1/Test/Stats/UserStatistics"))
        assert stats["value"]["columns"] == USER_COLUMNS

        # a subscriber arriving later gets the current value at once, from the broker
        late = Subscriber(host, port, level)
        try:
            wait_until(lambda: late.value(level) == 33.5, what="retained value for a late subscriber")
            assert late.retained[level] is True
        finally:
            late.close()

        # a value fed over MQTT drives the tag, and so its alarm and the pipeline
        import paho.mqtt.publish as publish

        publish.single(level + "/set", json.dumps(99), hostname=host, port=port, qos=1)
        wait_until(lambda: gw.client.get("/api/tags/Plant/Tank1/Level").json()["value"] == 99.0, what="MQTT write")
        assert webhook_receiver.wait_for(1)[0].json["message"] == "Plant/Tank1/Level/High 99.0"
        wait_until(lambda: live.value(level) == 99.0, what="written value republished")
        # a read-only tag refuses writes from MQTT
        publish.single("site1/Test/Stats/MessagesSent/set", "0", hostname=host, port=port, qos=1)
        publish.single(level + "/set", json.dumps("not a number"), hostname=host, port=port, qos=1)
        time.sleep(0.5)
        assert gw.client.get("/api/tags/Test/Stats/MessagesSent").json()["value"] == 3
        assert gw.client.get("/api/tags/Plant/Tank1/Level").json()["value"] == 99.0
    finally:
        live.close()


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_tags_prints_the_tree_and_writes(gateway_config, start_gateway):
    from click.testing import CliRunner

    from annunciator.cli import main

    gw = start_gateway(_tag_config(gateway_config), plugins=[StatsPlugin()])
    args = ["--url", gw.url, "--token", "test-token"]
    r = CliRunner().invoke(main, ["tags", *args])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "Plant/" in lines and "  Tank1/" in lines
    assert any(line.split() == ["Level", "Float8", "10.0"] for line in lines), r.output
    assert "        UserId | Username | PhoneNumber | MessagesSent | MessagesReceived" in lines
    assert "        0 | maria | +15550100001 | 2 | 1" in lines

    r = CliRunner().invoke(main, ["tags", "Plant/Tank1/Pump", "--set", "true", *args])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "Plant/Tank1/Pump = true  [Good]"
    r = CliRunner().invoke(main, ["tags", "Plant/Tank1/Pump", "--set", "yes", *args])
    assert r.exit_code == 1 and "Boolean expects true or false" in r.output
    r = CliRunner().invoke(main, ["tags", "Plant", "--json", *args])
    assert [t["path"] for t in json.loads(r.output)] == ["Plant/Tank1/Level", "Plant/Tank1/Pump"]


def test_config_refuses_bad_tags(tmp_path):
    from annunciator.core.errors import ConfigError
    from annunciator.core.loader import load_config
    from annunciator.core.plugins import default_manager

    pm = default_manager()
    bad = {"pipelines": {"p": {}}, "tags": {
        "Plant/A": {"type": "Int4", "value": "x"},
        "Plant/B": {"type": "String", "alarms": [{"name": "Hi", "mode": "above", "setpoint": 1}]},
        "Plant/C": {"type": "Int4", "alarms": [{"name": "Hi", "mode": "above", "setpoint": 1,
                                                "pipelines": {"active": "nope"}}]}}}
    with pytest.raises(ConfigError) as exc:
        load_config(bad, pm.block_types(), pm.profile_types(), env={}, plugins=pm)
    text = str(exc.value)
    assert "tags.Plant/A: Int4 expects an integer" in text
    assert "tags.Plant/B: alarm Hi: mode above needs a numeric tag" in text
    bad["tags"] = {"System/Mine": {"type": "Int4"}}
    with pytest.raises(ConfigError, match="System/ is reserved"):
        load_config(bad, pm.block_types(), pm.profile_types(), env={}, plugins=pm)
    bad["tags"] = {"Plant/C": {"type": "Int4", "alarms": [{"name": "Hi", "mode": "above", "setpoint": 1,
                                                           "pipelines": {"active": "nope"}}]}}
    with pytest.raises(ConfigError, match=r"tags\.Plant/C\.alarms\[0\]\.pipelines\.active"):
        load_config(bad, pm.block_types(), pm.profile_types(), env={}, plugins=pm)


def test_metrics_of_a_single_node_say_it_is_the_active_one(gateway_config, start_gateway):
    from prometheus_client.parser import text_string_to_metric_families

    gateway_config["gateway"]["name"] = 'plant "A"'
    gw = start_gateway(gateway_config)
    text = gw.client.get("/metrics").text
    assert "annunciator_cluster_active" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [active] = families["annunciator_cluster_active"].samples
    assert active.labels == {"node": 'plant "A"'} and active.value == 1.0
    assert families["annunciator_cluster_epoch"].samples[0].value == 0.0
    [failovers] = [s for s in families["annunciator_cluster_failovers"].samples if s.name.endswith("_total")]
    assert failovers.value == 0.0 and families["annunciator_cluster_failovers"].type == "counter"


def test_cluster_metrics_of_the_active_node_and_no_tag_shadows_them():
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    from annunciator.core.cluster import Term
    from annunciator.tags import prometheus

    lease = SimpleNamespace(name="node-b", failovers=3, valid=lambda epoch: epoch == 12)
    tags = TagProvider()
    tags.define("Cluster/Active", "Int4", 5)  # would be named annunciator_cluster_active too
    text = prometheus.render(tags, prometheus.cluster_families(Term(lease, 12), "gw")).decode()  # type: ignore[arg-type]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [(s.labels, s.value) for s in families["annunciator_cluster_active"].samples] == [({"node": "node-b"}, 1.0)]
    assert families["annunciator_cluster_epoch"].samples[0].value == 12.0
    assert "annunciator_cluster_failovers_total{node=\"node-b\"} 3.0" in text
    ended = prometheus.render(tags, prometheus.cluster_families(Term(lease, 11), "gw")).decode()  # type: ignore[arg-type]
    assert 'annunciator_cluster_active{node="node-b"} 0.0' in ended
