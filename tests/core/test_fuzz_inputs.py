"""Outside input never gets a traceback: any JSON to the API, any shape of config."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annunciator.core.config import Config
from annunciator.core.errors import ConfigError
from annunciator.core.loader import load_config
from annunciator.core.plugins import default_manager

scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = ["source", "name", "displayPath", "priority", "eventValue", "notes", "ackMode",
          "ackNotesRequired", "properties", "pipelines", "label", "bogus"]
alarm_like = st.dictionaries(st.sampled_from(FIELDS), json_values | st.sampled_from(
    ["High", "critical", "3", "p", "plant/a", {"active": "p"}, {"cleared": "nope"}]), max_size=6)
bodies = alarm_like | st.lists(alarm_like, max_size=3) | st.fixed_dictionaries({"alarms": st.lists(alarm_like)}) \
    | json_values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_any_json_to_raise_is_stored_or_refused_with_fields(pipeline_gateway_once, body):
    gw = pipeline_gateway_once
    r = gw.client.post("/api/alarms", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 201, 422), (r.status_code, r.text)
    data = r.json()
    if r.status_code == 422:
        assert data["error"]
    else:
        assert len(data["events"]) == len(data["created"]) >= 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, path=st.sampled_from(["/api/alarms/acknowledge", "/api/alarms/clear", "/api/shelve",
                                                "/api/unshelve", "/api/alarms/x/acknowledge"]))
def test_any_json_to_other_endpoints_is_answered_not_crashed(pipeline_gateway_once, body, path):
    r = pipeline_gateway_once.client.post(path, content=json.dumps(body),
                                          headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 404, 409, 422), (r.status_code, r.text)


PM = default_manager()
SECTIONS = ["gateway", "profiles", "users", "rosters", "alarms", "pipelines", "other"]
block_like = st.dictionaries(st.sampled_from(["type", "name", "next", "delay", "profile", "roster", "expression",
                                              "cases", "outputs", "pipeline", "tiers", "property", "code"]),
                             json_values | st.sampled_from(["delay", "notification", "switch", "jump", "escalate",
                                                            "30s", "soon", "p", "end", "priority >", "hook"]),
                             max_size=5)
configs = st.dictionaries(st.sampled_from(SECTIONS), json_values, max_size=4) | st.fixed_dictionaries({
    "pipelines": st.dictionaries(st.sampled_from(["p", "q"]), st.fixed_dictionaries(
        {"blocks": st.lists(block_like, max_size=4)}), max_size=2),
    "profiles": st.just({"hook": {"type": "webhook", "url": "http://127.0.0.1:9/x"}}),
    "users": st.just({"maria": {}}), "rosters": st.just({"ops": ["maria"]})})


@settings(max_examples=300, deadline=None)
@given(raw=configs)
def test_any_config_shape_is_loaded_or_refused_with_a_path(raw):
    try:
        config = load_config(raw, PM.block_types(), PM.profile_types(), env={})
    except ConfigError as exc:
        assert exc.problems and all(isinstance(m, str) and m for _, m in exc.problems)
    else:
        assert isinstance(config, Config)
