"""Running integrator scripts: plain Python files with a ``system`` object in scope.

Scripts are trusted integrator code (as in Ignition), run on a worker thread so a slow script
never stalls the gateway's loop; a script error is reported with its file and line and never
propagates into the gateway.
"""

from __future__ import annotations

import asyncio
import linecache
import logging
import sys
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger("annunciator.scripts")
T = TypeVar("T")


class ScriptError(Exception):
    """A script failed; ``where`` is "file:line" of the innermost frame in the script and
    ``details`` the traceback of the script's own frames (what an integrator needs to fix it)."""

    def __init__(self, message: str, where: str, details: str = ""):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
        self.details = details


@dataclass
class Script:
    filename: str
    code: CodeType

    @classmethod
    def compile(cls, source: str, filename: str) -> Script:
        # linecache lets tracebacks show the line of an inline script too
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        return cls(filename, compile(source, filename, "exec"))

    @classmethod
    def load(cls, path: Path) -> Script:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # reported like a syntax error: callers name the file and line to fix (check, start-up)
            line = raw.count(b"\n", 0, exc.start) + 1
            raise SyntaxError(f"not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}); save the "
                              "script as UTF-8", (str(path), line, 0, "")) from None
        return cls.compile(text, str(path))

    def run(self, scope: dict[str, Any]) -> dict[str, Any]:
        """Run with ``scope`` as globals; raise ScriptError naming the script's file and line."""
        scope.setdefault("__name__", "__annunciator_script__")
        try:
            exec(self.code, scope)
        except (Exception, SystemExit) as exc:
            # SystemExit too: sys.exit() in a script ends the script, never the gateway
            tb = traceback.extract_tb(sys.exc_info()[2])
            frames = [f for f in tb if f.filename == self.filename] or list(tb)
            last = frames[-1]
            # the script's frames and what it called, without the runner's own frame
            shown = tb[1:] if len(tb) > 1 and tb[0].filename == __file__ else tb
            details = "".join(traceback.format_list(shown)) + f"{type(exc).__name__}: {exc}\n"
            raise ScriptError(f"{type(exc).__name__}: {exc}", f"{last.filename}:{last.lineno}", details) from exc
        return scope


class Bridge:
    """Lets script threads call the gateway's coroutines on its loop and wait for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 30.0):
        self.loop = loop
        self.timeout = timeout

    def call(self, coro: Awaitable[T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("system.* functions are for scripts, which run off the gateway loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)  # type: ignore[arg-type]


class ScriptingSystem:
    """This plugin's per-gateway state: the ``system`` object scripts see, and their errors."""

    def __init__(self, system: SimpleNamespace):
        self.system = system
        self.errors = 0


def scripting_state(services: Services) -> ScriptingSystem:
    return services.state.setdefault(ScriptingSystem, lambda: ScriptingSystem(build_system(services)))


def scripting_system(services: Services) -> SimpleNamespace:
    """The gateway's ``system`` object, built once."""
    return scripting_state(services).system


def build_system(services: Services) -> SimpleNamespace:
    """The ``system`` object: one attribute per namespace registered through the hook."""
    system = SimpleNamespace()
    for mapping in services.plugins.hook.annunciator_scripting_namespaces(services=services):
        for name, namespace in (mapping or {}).items():
            setattr(system, name, namespace)
    return system


ERRORS_TAG = "System/Gateway/Scripts/Errors"
LAST_ERROR_TAG = "System/Gateway/Scripts/LastError"


@dataclass
class RunResult:
    """How one run of a script went: ``where`` is "file:line" of a failure."""

    ok: bool
    error: str | None = None
    where: str | None = None
    details: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "where": self.where, "traceback": self.details or None}


def record_error(services: Services, what: str, message: str, where: str) -> None:
    """Log a script failure with its file and line and count it (``System/Gateway/Scripts/Errors``)."""
    log.error("script %s failed at %s: %s", what, where, message)
    state = scripting_state(services)
    state.errors += 1
    try:
        services.tags.write(ERRORS_TAG, state.errors)
        services.tags.write(LAST_ERROR_TAG, f"{where}: {message}"[:1000])
    except KeyError:
        pass  # tags not defined (the gateway is not started): the log line is enough


async def run_script(services: Services, script: Script, scope: dict[str, Any], timeout: float,
                     what: str) -> RunResult:
    """Run ``script`` on a worker thread; a failure or timeout is logged, counted and returned,
    never raised: no script can take the gateway down."""
    try:
        await asyncio.wait_for(asyncio.to_thread(script.run, scope), timeout)
    except TimeoutError:
        # the thread cannot be killed; it finishes on its own, and its result is ignored
        message = f"timed out after {timeout:g}s"
        record_error(services, what, message, script.filename)
        return RunResult(False, message, script.filename)
    except ScriptError as exc:
        record_error(services, what, exc.message, exc.where)
        return RunResult(False, exc.message, exc.where, exc.details)
    return RunResult(True)


def compile_or_error(source: str, filename: str) -> tuple[Script | None, RunResult | None]:
    """A Script, or the RunResult of its syntax error (with file:line)."""
    try:
        return Script.compile(source, filename), None
    except SyntaxError as exc:
        where = f"{exc.filename or filename}:{exc.lineno}"
        return None, RunResult(False, f"SyntaxError: {exc.msg}", where, f"{where}: {exc.msg}\n{exc.text or ''}")
