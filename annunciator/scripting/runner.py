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
    from annunciator.core.gateway import Gateway

log = logging.getLogger("annunciator.scripts")
T = TypeVar("T")


class ScriptError(Exception):
    """A script failed; ``where`` is "file:line" of the innermost frame in the script."""

    def __init__(self, message: str, where: str):
        super().__init__(f"{where}: {message}")
        self.where = where


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
        return cls.compile(path.read_text(encoding="utf-8"), str(path))

    def run(self, scope: dict[str, Any]) -> dict[str, Any]:
        """Run with ``scope`` as globals; raise ScriptError naming the script's file and line."""
        scope.setdefault("__name__", "__annunciator_script__")
        try:
            exec(self.code, scope)
        except Exception as exc:
            tb = traceback.extract_tb(sys.exc_info()[2])
            frames = [f for f in tb if f.filename == self.filename] or list(tb)
            last = frames[-1]
            raise ScriptError(f"{type(exc).__name__}: {exc}", f"{last.filename}:{last.lineno}") from exc
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


def build_system(gateway: Gateway) -> SimpleNamespace:
    """The ``system`` object: one attribute per namespace registered through the hook."""
    system = SimpleNamespace()
    for mapping in gateway.hook.annunciator_scripting_namespaces(gateway=gateway):
        for name, namespace in (mapping or {}).items():
            setattr(system, name, namespace)
    return system
