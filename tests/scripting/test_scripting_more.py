"""Gateway scripts: start-up and timer scripts, failures (file:line, counted, gateway unharmed),
``system.alarm``/``system.tag``/``system.util`` as the issue names them, ``/api/scripts/run`` and
``annunciator script run``."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from annunciator.cli import main

from conftest import raise_alarm, wait_until

ERRORS = "System/Gateway/Scripts/Errors"


def _tag(gw: Any, path: str) -> Any:
    return gw.client.get(f"/api/tags/{path}").json()["value"]


def _scripts(gateway_config: dict[str, Any], files: dict[str, str]) -> Path:
    folder = Path(gateway_config["gateway"]["scripts_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (folder / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return folder


def _run(gw: Any, source: str, filename: str = "console.py") -> dict[str, Any]:
    r = gw.client.post("/api/scripts/run", json={"source": textwrap.dedent(source), "filename": filename})
    assert r.status_code == 200, r.text
    return r.json()


def test_startup_and_timer_scripts_run_and_a_failing_one_is_logged_counted_and_harmless(
        gateway_config, start_gateway, caplog):
    caplog.set_level(logging.INFO, logger="annunciator.scripts")
    _scripts(gateway_config, {
        "startup.py": """
            system.tag.writeBlocking(["Site/Started"], [True])
            print("started at", system.util.now().year)
        """,
        "tick.py": """
            value = system.tag.readBlocking(["Site/Ticks"])[0].value
            system.tag.writeBlocking(["Site/Ticks"], [value + 1])
        """,
        "fail.py": """
            x = 1
            y = x / 0
        """,
    })
    gateway_config["tags"] = {"Site/Started": {"type": "Boolean", "value": False},
                              "Site/Ticks": {"type": "Int4", "value": 0}}
    gateway_config["scripts"] = {
        "startup": ["startup.py"],
        "timers": [{"name": "tick", "script": "tick.py", "interval": "200ms"},
                   {"name": "fail", "script": "fail.py", "interval": "300ms"},
                   {"name": "nightly", "code": "pass", "cron": "0 3 * * *", "timezone": "Europe/Berlin"}]}
    gw = start_gateway(gateway_config)

    wait_until(lambda: _tag(gw, "Site/Started") is True, what="start-up script wrote its tag")
    wait_until(lambda: _tag(gw, "Site/Ticks") >= 3, what="timer script ran three times")
    wait_until(lambda: _tag(gw, ERRORS) >= 2, what="failing timer script counted twice")
    last_error = _tag(gw, "System/Gateway/Scripts/LastError")
    assert last_error.endswith("fail.py:3: ZeroDivisionError: division by zero"), last_error
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "fail.py:3" in r.getMessage()]
    assert failures and "script fail failed at" in failures[0].getMessage()
    assert any(r.getMessage().startswith("started at 20")
               for r in caplog.records if r.name == "annunciator.scripts.startup.py")

    # the gateway is unharmed: it answers, and the good timer keeps going
    assert gw.client.get("/api/health").json()["status"] == "ok"
    ticks = _tag(gw, "Site/Ticks")
    wait_until(lambda: _tag(gw, "Site/Ticks") > ticks, what="timer still running after failures")
    jobs = {j.id for j in gw.gateway.timers.scheduler.get_jobs()}
    assert any(j.endswith(":nightly") for j in jobs)


def test_script_block_failure_is_counted(pipeline_gateway, webhook_receiver):
    gw = pipeline_gateway({"p": {"blocks": [
        {"type": "script", "name": "broken", "code": "import sys\nsys.exit(3)\n", "error": "told"},
        {"type": "notification", "name": "told", "profile": "hook", "roster": "operators",
         "message": "script failed"}]}})
    raise_alarm(gw, "plant/x", "p")
    assert webhook_receiver.wait_for(1)[0].json["message"] == "script failed"
    # sys.exit in a script ends the script, not the gateway
    assert _tag(gw, ERRORS) == 1
    assert _tag(gw, "System/Gateway/Scripts/LastError") == "<p.broken>:2: SystemExit: 3"
    assert gw.client.get("/api/health").json()["status"] == "ok"


def test_system_alarm_functions_as_ignition_names_them(pipeline_gateway):
    gw = pipeline_gateway({"hold": {"blocks": [{"type": "delay", "delay": "1h"}]}}, scripts={"api_run": True})
    high = raise_alarm(gw, "plant/boiler", "hold", priority="High", displayPath="Boiler 1")
    raise_alarm(gw, "plant/pump", "hold", priority="Low")
    out = _run(gw, f"""
        high = system.alarm.queryStatus(priority="High")
        result = {{
            "high": [e["source"] for e in high],
            "any": [e["source"] for e in system.alarm.queryStatus(priority=["Low", "High"], state="ActiveUnacked")],
            "byPath": [e["source"] for e in system.alarm.queryStatus(displayPath="Boiler*")],
            "bySource": [e["source"] for e in system.alarm.queryStatus(source=["plant/p*"])],
            "pipelines": system.alarm.listPipelines(),
        }}
        result["cancelled"] = system.alarm.cancel(["{high['id']}"])
        result["acked"] = system.alarm.acknowledge(["{high['id']}"], "checked", "maria")
        system.alarm.shelve(["plant/pump"], 5)
        result["shelved"] = system.alarm.getShelvedPaths()
        system.alarm.unshelve("plant/pump")
        result["after"] = system.alarm.getShelvedPaths()
        journal = system.alarm.queryJournal(system.util.now().replace(year=2000), system.util.now())
        result["journal"] = sorted({{line["action"] for line in journal}})
        print(len(journal) > 0)
    """)
    assert out["ok"], out
    r = out["result"]
    assert r["high"] == ["plant/boiler"] and r["byPath"] == ["plant/boiler"] and r["bySource"] == ["plant/pump"]
    assert r["any"] == ["plant/boiler", "plant/pump"]
    assert r["pipelines"] == ["hold"] and r["cancelled"] == 1 and r["acked"] == [high["id"]]
    assert r["shelved"] == ["plant/pump"] and r["after"] == []
    assert {"active", "acknowledged", "shelved", "unshelved"} <= {a.lower() for a in r["journal"]}
    assert out["stdout"] == "True\n"
    event = gw.client.get(f"/api/alarms/{high['id']}").json()
    assert event["ackUser"] == "maria" and event["ackNotes"] == "checked"


def test_system_tag_functions(gateway_config, start_gateway):
    gateway_config["tags"] = {"Site/Level": {"type": "Float8", "value": 1.5},
                              "Site/Fixed": {"type": "Int4", "value": 7, "writable": False}}
    gateway_config["scripts"] = {"api_run": True}
    gw = start_gateway(gateway_config)
    out = _run(gw, """
        codes = system.tag.writeBlocking(["Site/Level", "Site/Level", "Site/Nope", "Site/Fixed"],
                                         [2.5, "high", 1, 8])
        qv = system.tag.readBlocking(["Site/Level", "Site/Nope"])
        result = {"codes": list(codes), "good": codes[0].isGood(), "why": codes[1].message,
                  "read": [qv[0].value, qv[0].quality, qv[1].quality],
                  "top": [(b["name"], b["tagType"]) for b in system.tag.browse("")],
                  "site": [(b["fullPath"], b["dataType"]) for b in system.tag.browse("Site")],
                  "deep": len(system.tag.browse("System", {"recursive": True})) > 5}
    """)
    assert out["ok"], out
    r = out["result"]
    assert r["codes"] == ["Good", "Bad_TypeConversion", "Bad_NotFound", "Bad_ReadOnly"] and r["good"] is True
    assert "Float8 expects a number" in r["why"]
    assert r["read"] == [2.5, "Good", "Bad"]
    assert ["Site", "Folder"] in r["top"] and ["System", "Folder"] in r["top"]
    assert r["site"] == [["Site/Fixed", "Int4"], ["Site/Level", "Float8"]] and r["deep"] is True
    assert _tag(gw, "Site/Fixed") == 7


def test_api_run_reports_errors_with_file_and_line(pipeline_gateway):
    gw = pipeline_gateway({}, scripts={"api_run": True})
    out = _run(gw, "a = 1\n\nb = a.nope\n", "check.py")
    assert out["ok"] is False and out["where"] == "check.py:3"
    assert out["error"] == "AttributeError: 'int' object has no attribute 'nope'"
    assert 'File "check.py", line 3' in out["traceback"]
    out = _run(gw, "def f(:\n  pass\n", "syntax.py")
    assert out["ok"] is False and out["where"] == "syntax.py:1" and out["error"].startswith("SyntaxError")
    assert _tag(gw, ERRORS) == 2
    r = gw.client.post("/api/scripts/run", json={"filename": "x.py"})
    assert r.status_code == 422


def test_api_run_is_off_unless_turned_on(pipeline_gateway):
    gw = pipeline_gateway({})  # any API token could otherwise run code in the gateway
    r = gw.client.post("/api/scripts/run", json={"source": "print(1)"})
    assert r.status_code == 403 and "api_run" in r.json()["error"]


def test_cli_script_run_against_a_running_gateway(pipeline_gateway, tmp_path):
    gw = pipeline_gateway({"hold": {"blocks": [{"type": "delay", "delay": "1h"}]}}, scripts={"api_run": True})
    raise_alarm(gw, "plant/a", "hold", priority="Critical")
    good = tmp_path / "report.py"
    good.write_text('for e in system.alarm.queryStatus(state="ActiveUnacked"):\n'
                    '    print(e["source"], e["priority"])\nresult = {"n": 1}\n')
    bad = tmp_path / "bad.py"
    bad.write_text("import json\n\njson.loads('{')\n")
    args = ["--url", gw.url, "--token", "test-token"]

    r = CliRunner().invoke(main, ["script", "run", str(good), *args])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "plant/a Critical"
    assert '"n": 1' in r.output

    r = CliRunner().invoke(main, ["script", "run", str(bad), *args])
    assert r.exit_code == 1
    assert "error at bad.py:3: JSONDecodeError" in r.output

    r = CliRunner().invoke(main, ["script", "run", str(good), "--url", gw.url, "--token", "wrong"])
    assert r.exit_code == 1 and "401" in r.output


def test_config_check_finds_missing_and_broken_scripts(tmp_path):
    import pytest

    from annunciator.core.errors import ConfigError
    from annunciator.core.loader import load_config
    from annunciator.core.plugins import default_manager

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "broken.py").write_text("if True print(1)\n")
    pm = default_manager()
    cfg = {"gateway": {"scripts_dir": str(tmp_path / "scripts")},
           "scripts": {"startup": ["missing.py", "broken.py"],
                       "timers": [{"code": "pass", "cron": "61 * * * *"}, {"code": "pass"}]}}
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, pm.block_types(), pm.profile_types(), env={}, plugins=pm)
    text = str(exc.value)
    assert "scripts.timers[0]" in text and "cron '61 * * * *'" in text
    assert "scripts.timers[1]" in text and "give either interval" in text
    cfg["scripts"]["timers"] = []
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, pm.block_types(), pm.profile_types(), env={}, plugins=pm)
    text = str(exc.value)
    assert "scripts.startup[0].script" in text and "no such script file" in text
    assert "scripts.startup[1].script" in text and "syntax error at line 1" in text
