"""The web console over real HTTP: sign-in, sessions, CSRF, roles, alarms, traces, sandbox phones."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from annunciator.testing.gateway import RunningGateway

from conftest import raise_alarm

# cheap hashes: the stored parameters decide how long verifying takes, and tests sign in often
_fast = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
PASSWORD = "correct horse"
MARIA = "+15550100001"


def console_section(**extra: Any) -> dict[str, Any]:
    h = _fast.hash(PASSWORD)
    return {"users": {"vera": {"password_hash": h, "role": "viewer", "name": "Vera Viewer"},
                      "otto": {"password_hash": h, "role": "operator", "name": "Otto Operator"},
                      "ada": {"password_hash": h, "role": "admin", "name": "Ada Admin"}}, **extra}


@pytest.fixture
def console_gateway(gateway_config, start_gateway):
    def start(pipelines: dict[str, Any] | None = None, **console: Any) -> RunningGateway:
        gateway_config["console"] = console_section(**console)
        gateway_config["pipelines"] = pipelines or {"wait": {"blocks": [{"type": "delay", "delay": "1h"}]}}
        return start_gateway(gateway_config)

    return start


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def browser(gw: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, timeout=30, follow_redirects=False)


def sign_in(gw: RunningGateway, user: str, password: str = PASSWORD) -> tuple[httpx.Client, str]:
    """A client with a session cookie, and the session's CSRF token."""
    c = browser(gw)
    token = csrf_of(c.get("/console/login").text)
    r = c.post("/console/login", data={"username": user, "password": password, "csrf": token})
    assert r.status_code == 303, r.text
    page = c.get("/console/alarms")
    assert page.status_code == 200
    return c, csrf_of(page.text)


def test_every_page_needs_a_session_and_the_api_keeps_its_tokens(console_gateway):
    gw = console_gateway()
    c = browser(gw)
    for path in ("/console/alarms", "/console/pipelines", "/console/stats", "/console/admin", "/console/x/trace"):
        r = c.get(path)
        assert r.status_code in (303, 404), path
    r = c.get("/console/alarms?priority=High")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=")
    assert c.get("/console/alarms/rows", headers={"X-Console-Fragment": "1"}).status_code == 401
    assert c.post("/console/alarms/x/ack", data={"notes": "n"}).status_code == 403
    assert httpx.get(f"{gw.url}/api/alarms").status_code == 401  # no cookie opens the JSON API
    otto, _ = sign_in(gw, "otto")
    assert otto.get("/api/alarms").status_code == 401  # nor does a console session


def test_sign_in_cookie_flags_and_sign_out(console_gateway):
    gw = console_gateway()
    c = browser(gw)
    token = csrf_of(c.get("/console/login").text)
    r = c.post("/console/login", data={"username": "otto", "password": PASSWORD, "csrf": token,
                                       "next": "/console/pipelines"})
    assert r.status_code == 303 and r.headers["location"] == "/console/pipelines"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    page = c.get("/console/pipelines")
    assert page.status_code == 200 and "Otto Operator" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    session = c.cookies.get("annunciator_console")
    out = c.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    # the old cookie, replayed after signing out, is refused
    again = browser(gw)
    again.cookies.set("annunciator_console", session, path="/console")
    assert again.get("/console/alarms").status_code == 303
    # an open redirect through ?next= is refused
    token = csrf_of(c.get("/console/login").text)
    r = c.post("/console/login", data={"username": "otto", "password": PASSWORD, "csrf": token,
                                       "next": "https://evil.example/"})
    assert r.headers["location"] == "/console/alarms"


def test_wrong_passwords_are_rate_limited_without_user_enumeration(console_gateway):
    gw = console_gateway(login_limit={"attempts": 3, "window": "1m"})
    c = browser(gw)
    token = csrf_of(c.get("/console/login").text)

    def attempt(user: str, password: str) -> httpx.Response:
        return c.post("/console/login", data={"username": user, "password": password, "csrf": token})

    unknown, wrong = attempt("nobody", "x"), attempt("otto", "wrong")
    assert unknown.status_code == wrong.status_code == 401
    message = "Wrong user name or password."
    assert message in unknown.text and message in wrong.text
    assert unknown.text.replace("nobody", "otto") == wrong.text  # the same page but for the echoed name
    attempt("otto", "wrong")
    attempt("otto", "wrong")
    limited = attempt("otto", PASSWORD)  # even the right password, once limited
    assert limited.status_code == 429 and "Too many sign-in attempts" in limited.text
    # the address is limited too: a sprayed name gets the same answer as a real one
    assert attempt("nobody-else", "x").status_code == 429
    audit = gw.client.get("/api/audit", params={"code": "ConsoleSignInFailed"}).json()["audit"]
    assert len(audit) == 3 and all(a["details"]["name"] in ("nobody", "otto") for a in audit)


def test_csrf_token_is_required_on_every_form(console_gateway):
    gw = console_gateway()
    c = browser(gw)
    c.get("/console/login")
    assert c.post("/console/login", data={"username": "otto", "password": PASSWORD}).status_code == 403
    assert c.post("/console/login", data={"username": "otto", "password": PASSWORD,
                                          "csrf": "forged"}).status_code == 403
    otto, token = sign_in(gw, "otto")
    event = raise_alarm(gw, "plant/pump1", "wait")
    r = otto.post(f"/console/alarms/{event['id']}/ack", data={"notes": "no token"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = otto.post(f"/console/alarms/{event['id']}/ack", data={"notes": "x", "csrf": token + "x"})
    assert r.status_code == 403
    assert gw.client.get(f"/api/alarms/{event['id']}").json()["acknowledged"] is False
    # a token of another session does not do either
    _ada, ada_token = sign_in(gw, "ada")
    assert otto.post(f"/console/alarms/{event['id']}/ack", data={"csrf": ada_token}).status_code == 403


def test_roles_viewer_cannot_ack_operator_cannot_use_admin_routes(console_gateway):
    gw = console_gateway()
    event = raise_alarm(gw, "plant/pump1", "wait")
    vera, token = sign_in(gw, "vera")
    page = vera.get(f"/console/alarms/{event['id']}")
    assert page.status_code == 200 and "Acknowledge</button>" not in page.text
    r = vera.post(f"/console/alarms/{event['id']}/ack", data={"notes": "n", "csrf": token})
    assert r.status_code == 403 and "operator role" in r.text
    assert vera.post(f"/console/alarms/{event['id']}/shelve", data={"minutes": "5", "csrf": token}).status_code == 403
    otto, token = sign_in(gw, "otto")
    assert otto.get("/console/admin").status_code == 403
    [inst] = gw.client.get("/api/instances").json()["instances"]
    assert otto.post(f"/console/instances/{inst['id']}/cancel", data={"csrf": token}).status_code == 403
    assert gw.client.get("/api/instances").json()["instances"]
    ada, token = sign_in(gw, "ada")
    assert "Otto Operator" in ada.get("/console/admin").text
    assert ada.post(f"/console/instances/{inst['id']}/cancel", data={"csrf": token}).status_code == 303
    assert gw.client.get("/api/instances").json()["instances"] == []


def test_acknowledge_with_notes_shelve_and_trace(console_gateway):
    gw = console_gateway()
    event = raise_alarm(gw, "plant/pump1", "wait", name="Pump 1 tripped", priority="High", displayPath="Plant/Pump 1")
    strict = raise_alarm(gw, "plant/boiler", "wait", name="Boiler", ackNotesRequired=True)
    otto, token = sign_in(gw, "otto")
    table = otto.get("/console/alarms").text
    assert "Pump 1 tripped" in table and "p-high" in table and "2 open alarms" in table

    r = otto.post(f"/console/alarms/{strict['id']}/ack", data={"notes": "  ", "csrf": token})
    assert r.status_code == 422 and "requires acknowledgement notes" in r.text
    r = otto.post(f"/console/alarms/{event['id']}/ack", data={"notes": "on my way", "csrf": token})
    assert r.status_code == 303
    now = gw.client.get(f"/api/alarms/{event['id']}").json()
    assert now["acknowledged"] and now["ackUser"] == "otto" and now["ackNotes"] == "on my way"
    [entry] = gw.client.get("/api/audit", params={"code": "Acknowledged"}).json()["audit"]
    assert entry["channel"] == "console"
    assert otto.post(f"/console/alarms/{event['id']}/ack", data={"csrf": token}).status_code == 409

    r = otto.post(f"/console/alarms/{strict['id']}/shelve", data={"minutes": "30", "notes": "maintenance",
                                                                  "csrf": token})
    assert r.status_code == 303
    assert gw.client.get("/api/shelved").json()["shelved"][0]["source"] == "plant/boiler"
    assert otto.post(f"/console/alarms/{strict['id']}/shelve", data={"minutes": "-1", "csrf": token}).status_code == 422
    status = otto.get("/console/pipelines").text
    assert "plant/boiler" in status and "maintenance" in status and "Time in block" in status

    trace = otto.get(f"/console/alarms/{event['id']}/trace")
    assert trace.status_code == 200
    for what in ("acknowledged", "on my way", "wait", "Acknowledged"):
        assert what in trace.text
    assert otto.get("/console/alarms/nope/trace").status_code == 404


def test_filters_and_live_rows(console_gateway):
    gw = console_gateway()
    raise_alarm(gw, "plant/pump1", "wait", name="Pump", priority="Low", displayPath="Plant/Pump")
    raise_alarm(gw, "yard/gate", "wait", name="Gate", priority="Critical", displayPath="Yard/Gate")
    otto, _ = sign_in(gw, "otto")
    high = otto.get("/console/alarms", params={"priority": "High"}).text
    assert "Gate" in high and ">Pump<" not in high
    plant = otto.get("/console/alarms/rows", params={"path": "plant/*"}, headers={"X-Console-Fragment": "1"})
    assert plant.status_code == 200 and ">Pump<" in plant.text and "Gate" not in plant.text
    assert "<html" not in plant.text  # a fragment, not a page
    assert "1 open alarm" in otto.get("/console/alarms", params={"path": "yard"}).text


def test_html_in_alarm_names_is_shown_as_text(console_gateway):
    gw = console_gateway()
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    event = raise_alarm(gw, "plant/<b>x</b>", "wait", name=evil, displayPath="<i>Plant</i>")
    otto, _ = sign_in(gw, "otto")
    for path in ("/console/alarms", f"/console/alarms/{event['id']}", f"/console/alarms/{event['id']}/trace",
                 "/console/pipelines"):
        html = otto.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html and "<i>Plant" not in html, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in otto.get("/console/alarms").text


@pytest.mark.timeout(120)
def test_ten_thousand_alarms_paginate_and_stay_fast(console_gateway):
    gw = console_gateway(page_size=50)
    alarms = [{"source": f"plant/tank{i}", "name": f"Tank {i} level", "priority": i % 5,
               "pipelines": {"active": "wait"}} for i in range(10000)]
    assert gw.client.post("/api/alarms", json={"alarms": alarms}).status_code == 201
    otto, _ = sign_in(gw, "otto")
    otto.get("/console/alarms")  # warm the templates
    started = time.perf_counter()
    page = otto.get("/console/alarms")
    first = time.perf_counter() - started
    assert "10000 open alarms" in page.text and "page 1 of 200" in page.text
    assert page.text.count("<tr class=\"p-") == 50
    started = time.perf_counter()
    last = otto.get("/console/alarms", params={"page": 200, "path": "plant/*"})
    assert last.status_code == 200 and "page 200 of 200" in last.text
    status = otto.get("/console/pipelines")
    elapsed = time.perf_counter() - started
    assert "10000 running instances" in status.text
    assert first < 1.0 and elapsed < 2.0, (first, elapsed)


def test_sandbox_phone_reply_with_pin_acknowledges(console_gateway, gateway_config):
    gateway_config["twilio"] = {"accounts": {"main": {"numbers": ["+15005550006"], "rate_limit": 0}}}
    gateway_config["profiles"]["sms"] = {"type": "twilio-sms"}
    gw = console_gateway({"page": {"blocks": [{"type": "notification", "roster": "operators", "profile": "sms",
                                               "message": "{priority} {displayPath}: {name}"}]}})
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump <1> tripped", priority="High")
    otto, token = sign_in(gw, "otto")
    deadline = time.monotonic() + 10
    while "Pump &lt;1&gt; tripped" not in (page := otto.get("/console/sandbox").text):
        assert time.monotonic() < deadline, page
        time.sleep(0.1)
    assert "Maria Lopez" in page and MARIA in page
    r = otto.post("/console/sandbox/sms", data={"number": MARIA, "text": "1234", "csrf": token})
    assert r.status_code == 303
    now = gw.client.get(f"/api/alarms/{event['id']}").json()
    assert now["acknowledged"] and now["ackUser"] == "maria"
    assert "Acknowledged" in otto.get("/console/sandbox/phones", headers={"X-Console-Fragment": "1"}).text
    history = otto.get(f"/console/alarms/{event['id']}").text.split("<h2>History", 1)[1]
    assert "acknowledged</td><td>maria</td>" in history and "1234" not in history
    vera, vtoken = sign_in(gw, "vera")
    assert vera.post("/console/sandbox/sms", data={"number": MARIA, "text": "1234", "csrf": vtoken}).status_code == 403
    stats = otto.get("/console/stats").text
    assert "System/Gateway/Twilio/MessagesSent" in stats and "<svg" in stats and "UserStatistics" in stats


def test_sandbox_is_absent_without_the_emulator(console_gateway):
    gw = console_gateway()
    otto, _ = sign_in(gw, "otto")
    assert otto.get("/console/sandbox").status_code == 404
    assert "Sandbox phones" not in otto.get("/console/alarms").text


def test_config_refuses_plain_passwords(tmp_path):
    from annunciator.core.config import ConfigError
    from annunciator.core.loader import load_config
    from annunciator.core.plugins import default_manager
    from annunciator.testing.gateway import write_config

    pm = default_manager()
    path = write_config(tmp_path / "a.yaml", {"console": {"users": {"x": {"password_hash": "hunter2"}}}})
    with pytest.raises(ConfigError) as err:
        load_config(path, pm.block_types(), pm.profile_types(), plugins=pm)
    assert "console.users.x.password_hash" in str(err.value) and "argon2" in str(err.value)


def test_console_user_cli_prints_a_hash_that_verifies():
    from click.testing import CliRunner

    from annunciator.cli import main

    out = CliRunner().invoke(main, ["console-user", "add", "otto", "--role", "operator"],
                             input="long enough\nlong enough\n")
    assert out.exit_code == 0, out.output
    h = re.search(r"password_hash: (\S+)", out.output).group(1)
    assert PasswordHasher().verify(h, "long enough") and "role: operator" in out.output
    short = CliRunner().invoke(main, ["console-user", "add", "x"], input="short\nshort\n")
    assert short.exit_code != 0 and "at least 8" in short.output


def test_demo_config_lets_the_newcomer_in_as_demo(tmp_path):
    """`annunciator demo` ends in a browser: its config has a console user demo / demo."""
    from importlib import resources

    import yaml

    from annunciator.console.auth import verify_password

    demo = yaml.safe_load((resources.files("annunciator") / "examples" / "demo.yaml").read_text())
    user = demo["console"]["users"]["demo"]
    assert verify_password(user["password_hash"], "demo") and not verify_password(user["password_hash"], "x")
