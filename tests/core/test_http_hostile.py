"""Hostile HTTP: every malformed request is a 4xx with a message, never a 500; the database being
gone is a 503 that comes within the commit timeout, never a hang.

Everything runs against a real ``annunciator run`` process over real HTTP, with every plugin
route mounted (console signed in, Twilio webhooks signed, email ack links, scripts), on SQLite or
on PostgreSQL with ANNUNCIATOR_TEST_DATABASE_URL. The outage tests start a private PostgreSQL
cluster they may stop (never the machine's shared one). ANNUNCIATOR_HOSTILE_EXAMPLES=3000 runs a
longer fuzz (400 by default, a few seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from test_console import console_section, sign_in
from test_fuzz_inputs import alarm_like, json_values
from twilio.request_validator import RequestValidator

from annunciator.core.http_limits import ALARMS_BODY_LIMIT, BODY_LIMIT, MAX_DEPTH
from annunciator.testing.gateway import TOKEN, GatewayProcess, api_client, free_port, write_config
from annunciator.testing.pytest_plugin import database_url

from conftest import wait_until

pytestmark = pytest.mark.slow

TWILIO_SID, TWILIO_TOKEN = "AC" + "0" * 32, "hostile-auth-token"


def module_database(tmp: Path) -> contextlib.AbstractContextManager[str]:
    """The plugin's database for a module's gateway (``annunciator_database_url`` is per test)."""
    return database_url(tmp, "hostile.db")


def hostile_config(tmp: Path, database: str) -> dict[str, Any]:
    """A gateway with every plugin route mounted: console, Twilio SMS and voice, email ack links,
    scripts over the API. Twilio and SMTP point at a closed port: nothing leaves the machine."""
    port = free_port()
    return {
        "gateway": {"http": {"host": "127.0.0.1", "port": port}, "database": database,
                    "external_url": f"http://127.0.0.1:{port}", "api_tokens": [TOKEN],
                    "secret_file": str(tmp / "secret.key"), "scripts_dir": str(tmp / "scripts"),
                    "retry": {"attempts": 1, "backoff": "50ms", "max_backoff": "50ms"}},
        "twilio": {"accounts": {"main": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN,
                                         "api_base": "http://127.0.0.1:9", "numbers": ["+15550109999"],
                                         "rate_limit": 0, "timeout": "1s"}}},
        "profiles": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/unused", "timeout": "1s"},
                     "sms": {"type": "twilio-sms"}, "voice": {"type": "twilio-voice"},
                     "mail": {"type": "email", "host": "127.0.0.1", "port": 9, "security": "none",
                              "sender": "alarms@plant.example", "timeout": "1s"}},
        "users": {"maria": {"pin": "1234", "contacts": {"sms": "+15550100001", "email": "maria@plant.example"}}},
        "rosters": {"operators": ["maria"]},
        "pipelines": {"p": {"blocks": [{"type": "delay", "delay": "1h"}]}},
        "console": console_section(),
        "scripts": {"api_run": True, "api_timeout": "2s"},
    }


def app_routes(config_path: Path) -> list[tuple[str, str]]:
    """(method, path template) of every route the gateway serves, plugin routes included, from
    the app built for the same config (not started: nothing opens the database)."""
    from annunciator.core.gateway import Gateway
    from annunciator.core.loader import load_config
    from annunciator.core.plugins import default_manager
    from annunciator.core.web import build_app

    pm = default_manager()
    config = load_config(config_path, pm.block_types(), pm.profile_types(), plugins=pm)
    app = build_app(Gateway(config, pm), manage_lifecycle=False)
    out = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                out.append((method, route.path))
    return out


class Hostile:
    """The module's gateway process, its routes, and the credentials a fuzzed request carries."""

    def __init__(self, proc: GatewayProcess, config: dict[str, Any], routes: list[tuple[str, str]]):
        self.proc, self.config, self.routes = proc, config, routes
        self.url = proc.url
        self.api = api_client(proc.url)
        console, self.csrf = sign_in(proc, "ada")  # the admin: every console page is open to it
        self.cookie = "; ".join(f"{k}={v}" for k, v in console.cookies.items())
        console.close()
        self.validator = RequestValidator(TWILIO_TOKEN)
        self._log_seen = 0

    def new_log(self) -> str:
        text = self.proc.log.read_text(errors="replace")
        new, self._log_seen = text[self._log_seen:], len(text)
        return new


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    with module_database(tmp) as database:
        config = hostile_config(tmp, database)
        path = write_config(tmp / "annunciator.yaml", config)
        proc = GatewayProcess(path).start()
        try:
            h = Hostile(proc, config, app_routes(path))
            yield h
            h.api.close()
        finally:
            proc.stop()


# --- the property: any request to any route is answered, and never with a 5xx -----------------

QUERY_NAMES = ["state", "priority", "source", "displayPath", "eventId", "since", "until", "limit", "user",
               "code", "pipeline", "path", "at", "tz", "roster", "number", "pool", "page", "done", "next",
               "deleted", "s", "dispatched"]
nasty = st.sampled_from(["\x00", "a\x00b", " ", "  x ", "..", "../..", "a/../b", ".", "%", "%zz", "é", "\u202e",
                         "x" * 1000, "a/" * 300, "1e400", "-1", "0", "99999999999999999999", "NaN", "null",
                         "<script>", "'; drop table journal; --", "\ud800"])
texts = st.text(max_size=30) | nasty | st.text(min_size=1000, max_size=1200)
# a path parameter: (value, raw) where raw values go into the URL unquoted (%00, %20, ..)
params = st.tuples(texts, st.just(False)) | st.tuples(
    st.sampled_from(["%00", "%20", "..", "%2e%2e", "a%00b", "%ff", "%c0%ae", "%25", "a%2Fb"]), st.just(True))
deep = st.integers(MAX_DEPTH - 2, 100_000).map(lambda n: ("[" * n + "]" * n).encode())
# around each limit (a 2 MiB body per example would make the run slow, not more thorough)
huge = st.sampled_from([BODY_LIMIT - 100, BODY_LIMIT + 1, ALARMS_BODY_LIMIT - 100, ALARMS_BODY_LIMIT + 1]).map(
    lambda n: json.dumps({"source": "hostile/huge", "user": "maria", "notes": "n" * n}).encode())
special = st.sampled_from([b'{"source": "hostile/nan", "eventValue": NaN, "name": "N\\u0000"}',
                           b'{"source": "hostile/inf", "eventValue": [Infinity, -Infinity, 1e999]}',
                           b'{"source": "hostile/sur\\ud800", "properties": {"\\udc00": "\\ud800"}}',
                           b'{"user": "maria\\u0000", "notes": "\\u0000", "eventIds": ["\\u0000"]}',
                           b'{"value": NaN}', b'{"source": "' + b"9" * 5000 + b'"}', b'{"a": ' + b"1" * 5000 + b"}",
                           b'{"source": "print(1)"}', b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"{" * 40])
json_bodies = (json_values | alarm_like | st.lists(alarm_like, max_size=3)).map(
    lambda v: json.dumps(v, allow_nan=True).encode())
bodies = st.none() | st.binary(max_size=300) | json_bodies | deep | huge | special
FORM_NAMES = ["MessageSid", "From", "To", "Body", "CallSid", "Digits", "MessageStatus", "CallStatus", "ErrorCode",
              "notes", "minutes", "source", "number", "text", "digits", "action", "username", "password", "next",
              "csrf"]
forms = st.dictionaries(st.sampled_from(FORM_NAMES) | st.text(max_size=8), texts, max_size=6)
content_types = st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain",
                                 "multipart/form-data; boundary=x", "application/json; charset=utf-16", None])


def _url_for(template: str, values: list[tuple[str, bool]]) -> str:
    parts = iter(values)

    def fill(m: re.Match[str]) -> str:
        value, raw = next(parts, ("x", False))
        # a lone surrogate goes out as the invalid UTF-8 it would be (%ED%A0%80)
        return value if raw else quote(value.encode("utf-8", "surrogatepass"),
                                       safe="/" if m.group(0).endswith(":path}") else "")

    return re.sub(r"\{[^}]+\}", fill, template)


@settings(max_examples=int(os.environ.get("ANNUNCIATOR_HOSTILE_EXAMPLES", "400")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_any_request_to_any_route_is_answered_never_with_a_5xx(hostile, data):
    method, template = data.draw(st.sampled_from(hostile.routes), label="route")
    values = data.draw(st.lists(params, min_size=3, max_size=3), label="path params")
    query = data.draw(st.dictionaries(st.sampled_from(QUERY_NAMES) | st.text(max_size=8), texts, max_size=4),
                      label="query")
    path = _url_for(template, values)
    qs = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if template.startswith("/console"):
        headers.update({"Cookie": hostile.cookie, "X-CSRF-Token": hostile.csrf})
        if data.draw(st.booleans(), label="fragment"):
            headers["X-Console-Fragment"] = "1"
    body: bytes | None
    if method in ("POST", "DELETE") and data.draw(st.booleans(), label="form"):
        form = data.draw(forms, label="form fields")
        form = {k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass") for k, v in form.items()}
        body = urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        if template.startswith("/twilio") and data.draw(st.booleans(), label="signed"):
            # signed as Twilio signs: the public URL and the (decoded) parameters
            fields = dict(httpx.QueryParams(body.decode()).multi_items())
            public = hostile.url + httpx.URL(hostile.url + path).path + (f"?{qs}" if qs else "")
            headers["X-Twilio-Signature"] = hostile.validator.compute_signature(public, fields)
    else:
        body = data.draw(bodies, label="body") if method != "GET" or data.draw(st.booleans()) else None
        ctype = data.draw(content_types, label="content type")
        if ctype:
            headers["Content-Type"] = ctype
    target = path + (f"?{qs}" if qs else "")
    try:
        r = hostile.api.request(method, target, content=body, headers=headers)
    except httpx.HTTPError as exc:
        pytest.fail(f"{method} {target[:300]} got no answer: {exc!r}")
    log = hostile.new_log()
    event(f"{method} {template} -> {r.status_code}")  # --hypothesis-show-statistics: what was reached
    assert r.status_code < 500, (method, target[:300], (body or b"")[:300], r.status_code, r.text[:500], log[-3000:])
    assert "Traceback" not in log, (method, target[:300], (body or b"")[:300], log[-3000:])
    if r.status_code >= 400 and method != "HEAD" and r.headers.get("content-type", "").startswith("application/json"):
        assert r.json().get("error"), r.text  # a 4xx says what was wrong


# --- named cases ---------------------------------------------------------------------------------

def _post(h: Hostile, path: str, body: bytes, **headers: str) -> httpx.Response:
    return h.api.post(path, content=body, headers={"Content-Type": "application/json", **headers})


def test_json_nested_100000_deep_is_422_naming_the_limit(hostile):
    body = b"[" * 100_000 + b"]" * 100_000  # 200 KB: under the alarms limit, so the parser sees it
    r = _post(hostile, "/api/alarms", body)
    assert r.status_code == 422, r.text
    assert f"at most {MAX_DEPTH} levels" in r.json()["error"]
    nested = {"source": "hostile/deep", "properties": {"a": json.loads("[" * 40 + "]" * 40)}}
    r = _post(hostile, "/api/alarms", json.dumps(nested).encode())
    assert r.status_code == 422 and f"at most {MAX_DEPTH}" in r.json()["error"], r.text


def test_a_10_mb_note_is_413_and_nothing_is_stored(hostile):
    source = f"hostile/big-note-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"source": source, "notes": "n" * 10_000_000}).encode()
    started = time.monotonic()
    r = _post(hostile, "/api/alarms", body)  # Content-Length says it up front
    assert r.status_code == 413, r.text
    assert r.json()["limit"] == ALARMS_BODY_LIMIT and "2 MiB" in r.json()["error"]
    # no Content-Length (chunked): refused while reading, once past the limit
    r = hostile.api.post("/api/alarms", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert time.monotonic() - started < 10
    assert hostile.api.get("/api/alarms", params={"source": source}).json()["events"] == []
    assert hostile.api.get("/api/journal", params={"source": source}).json()["journal"] == []
    # the connection is still good for the next request
    assert hostile.api.get("/api/health").status_code == 200


def test_alarm_batches_take_2_mib_other_routes_64_kib(hostile):
    def batch(size: int, tag: str) -> bytes:
        one = {"source": f"hostile/batch-{tag}-00000", "notes": "n" * 3000}
        count = size // len(json.dumps(one))
        return json.dumps([{**one, "source": f"hostile/batch-{tag}-{i:05d}"} for i in range(count)]).encode()

    tag = uuid.uuid4().hex[:6]
    over = batch(ALARMS_BODY_LIMIT + 50 * 1024, tag)
    assert len(over) > ALARMS_BODY_LIMIT
    r = _post(hostile, "/api/alarms", over)
    assert r.status_code == 413, r.text
    assert hostile.api.get("/api/alarms", params={"source": f"hostile/batch-{tag}-*"}).json()["events"] == []
    under = batch(300 * 1024, tag)  # a 300 KiB batch: over the other routes' limit, not this one's
    assert BODY_LIMIT < len(under) < ALARMS_BODY_LIMIT
    r = _post(hostile, "/api/alarms", under)
    assert r.status_code == 201, r.text[:300]
    ids = [e["id"] for e in r.json()["events"]]
    # 64 KiB is too much for an acknowledgement
    r = _post(hostile, "/api/alarms/acknowledge",
              json.dumps({"user": "maria", "eventIds": ids, "notes": "n" * (BODY_LIMIT)}).encode())
    assert r.status_code == 413 and "64 KiB" in r.json()["error"], r.text


def test_field_limits_are_422_naming_the_field(hostile):
    for body, where in [({"source": "hostile/f", "notes": "n" * 4001}, "alarms[0].notes"),
                        ({"source": "s" * 501}, "alarms[0].source"),
                        ({"source": "hostile/f", "name": "n" * 501}, "alarms[0].name"),
                        ({"source": "hostile/f", "properties": dict.fromkeys(map(str, range(101)), 1)},
                         "alarms[0].properties"),
                        ({"source": "hostile/f", "properties": {"k": "v" * 5000}}, "alarms[0].properties"),
                        ({"source": "hostile/f", "eventValue": "v" * 5000}, "alarms[0].eventValue")]:
        r = hostile.api.post("/api/alarms", json=body)
        assert r.status_code == 422, (where, r.text[:300])
        assert where in [f["path"] for f in r.json()["fields"]], (where, r.json())
    r = hostile.api.post("/api/alarms/acknowledge", json={"user": "u" * 201, "eventIds": ["x"]})
    assert r.status_code == 422 and r.json()["fields"][0]["path"] == "user"
    r = hostile.api.post("/api/alarms/clear", json={"eventIds": ["x"] * 1001})
    assert r.status_code == 422 and r.json()["fields"][0]["path"] == "eventIds"


def test_tag_paths_no_tag_can_have_are_404(hostile):
    r = hostile.api.get("/api/tags/%20")
    assert r.status_code == 404 and "space" in r.json()["error"], r.text
    r = hostile.api.get("/api/tags/" + "a" * 600)
    assert r.status_code in (404, 422) and "500 characters" in r.json()["error"], r.text
    r = hostile.api.post("/api/tags/" + "a" * 600, json={"value": 1})
    assert r.status_code in (404, 422), r.text


def test_nul_in_a_path_parameter_or_query_is_a_4xx(hostile):
    for path in ["/api/alarms/%00", "/api/alarms/a%00b/trace", "/api/tags/a%00b", "/api/instances/%00",
                 "/api/users/%00/unlock", "/ack/%00"]:
        r = hostile.api.get(path) if "unlock" not in path else hostile.api.post(path)
        assert r.status_code == 422 and "NUL" in r.json()["error"], (path, r.text)
    r = hostile.api.get("/console/alarms/%00", headers={"Cookie": hostile.cookie})
    assert r.status_code == 422, r.text
    r = hostile.api.get("/api/journal", params={"eventId": "a\x00"})
    assert r.status_code == 422 and r.json()["fields"][0]["path"] == "eventId", r.text


def test_nan_and_nul_are_stored_normalised_with_warnings(hostile):
    source = f"hostile/nan-{uuid.uuid4().hex[:6]}"
    # what json.dumps(float("nan")) writes, a NUL-padded PLC string, and a lone surrogate
    body = (f'{{"source": "{source}", "eventValue": NaN, "name": "Pump 7\\u0000\\u0000", '
            '"properties": {"low": -Infinity, "odd\\u0000key": "\\ud800"}}').encode()
    r = _post(hostile, "/api/alarms", body)
    assert r.status_code == 201, r.text
    warnings = r.json()["warnings"]
    assert "alarms[0].eventValue: NaN stored as the string 'NaN'" in warnings
    assert "alarms[0].name: NUL characters removed" in warnings
    assert any(w.startswith("alarms[0].properties.low: -Infinity") for w in warnings)
    assert any("U+FFFD" in w for w in warnings), warnings
    event = r.json()["events"][0]
    stored = hostile.api.get(f"/api/alarms/{event['id']}").json()
    assert stored["eventValue"] == "NaN" and stored["name"] == "Pump 7"
    assert stored["properties"] == {"low": "-Infinity", "oddkey": "\ufffd"}
    # read back from the database, not memory: the journal row of the raise is there
    [row] = hostile.api.get("/api/journal", params={"eventId": event["id"]}).json()["journal"]
    assert row["action"] == "active"
    # nothing to normalise: no warnings key at all (the answer's shape is unchanged)
    r = hostile.api.post("/api/alarms", json={"source": f"{source}-clean", "eventValue": 1.5})
    assert r.status_code == 201 and "warnings" not in r.json()


# --- the database gone: 503 within the commit timeout, and back to normal after ------------------

def _timed(fn: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = fn()
    return r, time.monotonic() - started


def test_database_outage_is_503_within_the_commit_timeout_and_health_says_so(tmp_path, private_postgres):
    commit_timeout = 3.0
    config = {"gateway": {"http": {"host": "127.0.0.1", "port": free_port()}, "database": private_postgres.url,
                          "api_tokens": [TOKEN], "secret_file": str(tmp_path / "secret.key"),
                          "commit_timeout": f"{commit_timeout:g}s"},
              "profiles": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/unused"}},
              "users": {"maria": {}}, "rosters": {"operators": ["maria"]},
              "pipelines": {"p": {"blocks": [{"type": "delay", "delay": "1h"}]}}}
    proc = GatewayProcess(write_config(tmp_path / "annunciator.yaml", config)).start()
    try:
        with api_client(proc.url) as api:
            before = api.post("/api/alarms", json={"source": "plant/before", "pipelines": {"active": "p"}})
            assert before.status_code == 201, before.text
            event_id = before.json()["events"][0]["id"]
            assert api.get("/api/health").json()["status"] == "ok"

            private_postgres.stop()
            r, took = _timed(lambda: api.get("/api/health"))
            assert r.status_code == 503 and r.json()["status"] == "degraded", r.text
            assert r.json()["database"] and took < 5, (took, r.text)
            for path in ("/api/journal", "/api/audit", f"/api/alarms/{event_id}/trace",
                         f"/api/instances?eventId={event_id}"):
                r, took = _timed(lambda path=path: api.get(path))
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.headers["retry-after"] and r.json()["error"], r.text
                assert took < commit_timeout + 2, (path, took)
            # in memory, so still answered: what is active right now
            assert [e["id"] for e in api.get("/api/alarms").json()["events"]] == [event_id]
            r, took = _timed(lambda: api.post("/api/alarms", json={"source": "plant/during"}))
            assert r.status_code == 503 and "queued" in r.json()["error"], r.text
            assert took < commit_timeout + 2, took
            r = api.get("/api/health")
            assert r.status_code == 503 and "unreachable since" in r.json()["database"], r.text

            private_postgres.start()
            wait_until(lambda: api.get("/api/health").status_code == 200, timeout=30, what="health ok again")
            assert api.get("/api/health").json()["status"] == "ok"
            # the alarm answered 503 during the outage was stored once the database returned
            during = [e for e in api.get("/api/alarms").json()["events"] if e["source"] == "plant/during"]
            assert len(during) == 1
            [row] = api.get("/api/journal", params={"source": "plant/during"}).json()["journal"]
            assert row["action"] == "active" and row["eventId"] == during[0]["id"]
            assert api.get("/api/audit").status_code == 200
    finally:
        proc.stop()
    assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-3000:]
    # the gateway process restarted on the same database still has both alarms
    proc.start()
    try:
        with api_client(proc.url) as api:
            sources = sorted(e["source"] for e in api.get("/api/alarms").json()["events"])
        assert sources == ["plant/before", "plant/during"]
    finally:
        proc.stop()



def test_a_database_that_hangs_is_503_within_the_commit_timeout_on_every_read_route(tmp_path, private_postgres):
    """The issue's case: reads hung for the whole outage. Console pages and plugin routes too."""
    commit_timeout = 2.0
    config = {"gateway": {"http": {"host": "127.0.0.1", "port": free_port()}, "database": private_postgres.url,
                          "api_tokens": [TOKEN], "secret_file": str(tmp_path / "secret.key"),
                          "commit_timeout": f"{commit_timeout:g}s"},
              "profiles": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/unused"},
                           "mail": {"type": "email", "host": "127.0.0.1", "port": 9, "security": "none",
                                    "sender": "alarms@plant.example"},
                           "sms": {"type": "twilio-sms"}},
              "twilio": {"accounts": {"main": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN,
                                               "api_base": "http://127.0.0.1:9", "numbers": ["+15550109999"]}}},
              "users": {"maria": {"pin": "1234", "contacts": {"sms": "+15550100001"}}},
              "rosters": {"operators": ["maria"]}, "pipelines": {},
              "console": console_section()}
    proc = GatewayProcess(write_config(tmp_path / "annunciator.yaml", config)).start()
    try:
        with api_client(proc.url) as api:
            event_id = api.post("/api/alarms", json={"source": "plant/hang"}).json()["events"][0]["id"]
            console, _ = sign_in(proc, "ada")
            assert console.get(f"/console/alarms/{event_id}").status_code == 200
            private_postgres.freeze()
            try:
                r, took = _timed(lambda: api.get("/api/health"))
                assert r.status_code == 503 and r.json()["status"] == "degraded" and took < 4, (took, r.text)
                for path in ("/api/journal", "/api/audit", f"/api/alarms/{event_id}/trace", "/api/email/stats"):
                    r, took = _timed(lambda path=path: api.get(path))
                    assert r.status_code == 503 and r.headers["retry-after"], (path, r.status_code, r.text)
                    assert r.json()["error"] and took < commit_timeout + 1.5, (path, took)
                # a signed Twilio webhook that must write: 503 within the timeout, not a hang
                # past Twilio's own 15 s (the reply stays queued and is stored when it returns)
                fields = {"MessageSid": "SM" + "0" * 32, "AccountSid": TWILIO_SID, "From": "+15550100001",
                          "To": "+15550109999", "Body": "STATUS"}
                signature = RequestValidator(TWILIO_TOKEN).compute_signature(proc.url + "/twilio/sms", fields)
                r, took = _timed(lambda: httpx.post(proc.url + "/twilio/sms", data=fields, timeout=30,
                                                    headers={"X-Twilio-Signature": signature}))
                assert r.status_code == 503 and took < commit_timeout + 1.5, (took, r.status_code, r.text[:300])
                r, took = _timed(lambda: console.get(f"/console/alarms/{event_id}"))
                assert r.status_code == 503 and "not answering" in r.text and took < commit_timeout + 1.5, (
                    took, r.text[:300])
                assert r.headers["content-type"].startswith("text/html")  # the console's error page
            finally:
                private_postgres.thaw()
            wait_until(lambda: api.get("/api/health").status_code == 200, timeout=30, what="health ok again")
            assert api.get("/api/journal", params={"eventId": event_id}).status_code == 200
            assert console.get(f"/console/alarms/{event_id}").status_code == 200
            console.close()
    finally:
        proc.stop()
    assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-3000:]
