"""Gateway scripts: start-up scripts, timer scripts (APScheduler interval/cron triggers from the
config's ``scripts:`` section), and ``POST /api/scripts/run`` (what ``annunciator script run``
calls), which runs a script in the gateway as Ignition's script console does.

Every kind runs on a worker thread with ``system`` in scope; a failure is logged with file and
line, counted in ``System/Gateway/Scripts/Errors``, and never stops the gateway or the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from annunciator.core import http_limits, units

from .runner import RunResult, Script, compile_or_error, run_script
from .settings import ScriptsSettings

if TYPE_CHECKING:
    from annunciator.core.config import Config
    from annunciator.core.services import Services

    from .settings import ScriptSettings, TimerScriptSettings

log = logging.getLogger("annunciator.scripts")
MAX_SOURCE = 1_000_000


def scripts_settings(config: Config) -> ScriptsSettings:
    """The config's ``scripts:`` section (its defaults when the file has none)."""
    section = config.sections.get("scripts")
    return section if section is not None else ScriptsSettings()


def load_script(config: Config, s: ScriptSettings, where: str) -> Script:
    """The compiled script of a ``scripts:`` entry; SyntaxError or OSError when it cannot be."""
    if s.code:
        return Script.compile(s.code, f"<{where}>")
    path = config.resolve(config.gateway.scripts_dir) / (s.script or "")
    return Script.load(path)


def _entries(config: Config) -> list[tuple[str, ScriptSettings]]:
    sc = scripts_settings(config)
    return ([(f"scripts.startup[{i}]", s) for i, s in enumerate(sc.startup)]
            + [(f"scripts.timers[{i}]", s) for i, s in enumerate(sc.timers)])


def check_scripts(config: Config) -> list[tuple[str, str]]:
    """Every configured script exists and compiles (so `annunciator check` finds a typo)."""
    problems = []
    for where, s in _entries(config):
        try:
            load_script(config, s, where)
        except SyntaxError as exc:
            problems.append((f"{where}.{'code' if s.code else 'script'}",
                             f"syntax error at line {exc.lineno}: {exc.msg}"))
        except OSError:
            path = config.resolve(config.gateway.scripts_dir) / (s.script or "")
            problems.append((f"{where}.script", f"no such script file: {path}"))
    return problems


def _logging_print(logger: logging.Logger) -> Any:
    """``print`` for unattended scripts: into the gateway log, where an operator will look."""
    def print_(*args: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        logger.info("%s", sep.join(str(a) for a in args))
    return print_


class GatewayScripts:
    """Start-up and timer scripts of one gateway."""

    def __init__(self, services: Services, system: SimpleNamespace):
        self.services = services
        self.system = system
        self.settings = scripts_settings(services.config)
        self.runs: dict[str, int] = {}  # label -> completed runs, for tests and diagnostics
        self._jobs: list[str] = []
        self._startup: asyncio.Task[None] | None = None

    def _scope(self, label: str, filename: str) -> dict[str, Any]:
        logger = logging.getLogger(f"annunciator.scripts.{label}")
        return {"system": self.system, "logger": logger, "print": _logging_print(logger), "__file__": filename}

    @units.entry("script")
    async def run(self, label: str, s: ScriptSettings, where: str) -> RunResult:
        try:
            script = load_script(self.services.config, s, where)
        except (SyntaxError, OSError) as exc:
            # the file changed since `check`: report it like any other script failure
            from .runner import record_error

            record_error(self.services, label, f"{type(exc).__name__}: {exc}", s.script or where)
            return RunResult(False, str(exc), s.script or where)
        result = await run_script(self.services, script, self._scope(label, script.filename), s.timeout, label)
        self.runs[label] = self.runs.get(label, 0) + 1
        return result

    def start(self) -> None:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self.settings.startup:
            # in the background: a slow start-up script must not keep the gateway from serving
            self._startup = asyncio.get_running_loop().create_task(self._run_startup(), name="startup-scripts")
        for i, t in enumerate(self.settings.timers):
            where = f"scripts.timers[{i}]"
            label = t.name or t.script or where
            trigger = (IntervalTrigger(seconds=t.interval, timezone=t.timezone) if t.interval is not None
                       else CronTrigger.from_crontab(t.cron, timezone=t.timezone))
            job_id = f"script:{i}:{label}"

            async def fire(label: str = label, t: TimerScriptSettings = t, where: str = where) -> None:
                await self.run(label, t, where)

            # max_instances=1 (the Timers default): a run still going when the next is due is skipped
            self.services.timers.scheduler.add_job(fire, trigger, id=job_id, replace_existing=True)
            self._jobs.append(job_id)
            log.info("timer script %s: %s", label, f"every {t.interval:g}s" if t.interval else f"cron {t.cron}")

    async def _run_startup(self) -> None:
        for i, s in enumerate(self.settings.startup):
            where = f"scripts.startup[{i}]"
            await self.run(s.name or s.script or where, s, where)

    async def stop(self) -> None:
        for job_id in self._jobs:
            self.services.timers.cancel(job_id)
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()


# --- POST /api/scripts/run ---------------------------------------------------------------------

def script_routes(services: Services) -> list[BaseRoute]:
    async def run(request: Request) -> Response:
        return await run_posted(services, request)
    # its own body limit: a script may be up to MAX_SOURCE characters, more than the API's 64 KiB
    return [http_limits.limit_body(Route("/api/scripts/run", run, methods=["POST"]), MAX_SOURCE * 2)]


async def run_posted(gw: Services, request: Request) -> Response:
    """Run ``{"source": TEXT, "filename": NAME}`` in the gateway; answer with what it printed,
    the value it left in ``result`` (if any) and, on failure, the error with file:line. A script
    failure is a 200 with ``ok: false``: the request itself worked."""
    settings = scripts_settings(gw.config)
    if not settings.api_run:
        return JSONResponse({"error": "running scripts over the API is off (scripts.api_run: false)"}, 403)
    raw = await request.body()
    if len(raw) > MAX_SOURCE * 2:
        return JSONResponse({"error": "script too large"}, 413)
    try:
        body = http_limits.loads(raw)  # bounded nesting: a deep body is a 422, not a RecursionError
        source, filename = body["source"], str(body.get("filename") or "<console>")
        if not isinstance(source, str):
            raise TypeError("source must be text")
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": f'expected {{"source": TEXT, "filename": NAME}}: {exc}'}, 422)
    # NUL cannot be compiled, a lone surrogate not be encoded: the same normalising as the API
    source, filename = http_limits.normalise(source, []), http_limits.normalise(filename, [])
    from .runner import record_error, scripting_system

    filename = Path(filename).name or "<console>"  # a name for tracebacks, never a path to open
    script, failed = compile_or_error(source, filename)
    printed: list[str] = []
    if script is None:
        assert failed is not None
        record_error(gw, f"api:{filename}", failed.error or "", failed.where or filename)
        return _answer(failed, printed, None)

    def print_(*args: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        printed.append(sep.join(str(a) for a in args) + end)

    scope = {"system": scripting_system(gw), "print": print_, "__file__": filename,
             "logger": logging.getLogger(f"annunciator.scripts.api.{filename}")}
    result = await run_script(gw, script, scope, settings.api_timeout, f"api:{filename}")
    return _answer(result, printed, scope.get("result"))


def _answer(result: RunResult, printed: list[str], value: Any) -> Response:
    try:
        shown = json.loads(json.dumps(value, default=str)) if value is not None else None
        if http_limits.depth(shown, http_limits.MAX_DEPTH) > http_limits.MAX_DEPTH:
            raise ValueError("too deep")
    except (ValueError, RecursionError):  # circular or absurdly deep: say what it is instead
        shown = f"<{type(value).__name__} that cannot be shown as JSON>"
    # a script's NaN or lone surrogate is valid Python but not JSON in UTF-8 (JSONResponse
    # refused it with a 500): normalised as the API normalises bodies
    data = http_limits.normalise({**result.to_dict(), "stdout": "".join(printed), "result": shown}, [])
    return JSONResponse(data)
