"""Call scripts: an integrator's Python file, per voice profile, that may change what a caller hears.

The script defines ``handle(callAction, params, alarm, response)`` and returns ``None`` (keep the
gateway's TwiML) or a TwiML string. Whatever it returns is parsed with lxml and checked against the
package's schema; a script that raises, times out or returns anything else is logged with its file
and line and the gateway's own TwiML is served, so a broken script never leaves a caller in silence.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any

from annunciator.scripting.runner import Script, record_error

from .twiml import InvalidTwiml, parse_and_validate

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger("annunciator.scripts.voice")
ENTRY = "handle"


class CallScriptError(Exception):
    """Why a script's answer was not used, and where in the script (``file:line``)."""

    def __init__(self, message: str, where: str):
        super().__init__(f"{where}: {message}")
        self.where = where


class CallScript:
    """One script file; reloaded when the file changes, so an integrator can edit it live."""

    def __init__(self, path: Path, timeout: float):
        self.path = path
        self.timeout = timeout
        self._mtime: float | None = None
        self._handle: Any = None

    def load(self) -> Any:
        """The script's ``handle`` function (CallScriptError when it cannot be had)."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise CallScriptError(f"cannot read the call script: {exc.strerror}", str(self.path)) from None
        if self._handle is not None and mtime == self._mtime:
            return self._handle
        try:
            script = Script.load(self.path)
        except SyntaxError as exc:
            raise CallScriptError(f"syntax error: {exc.msg}", f"{self.path}:{exc.lineno}") from None
        scope: dict[str, Any] = {"__name__": "__annunciator_call_script__"}
        try:
            script.run(scope)
        except Exception as exc:
            raise CallScriptError(str(exc), getattr(exc, "where", str(self.path))) from None
        handle = scope.get(ENTRY)
        if not callable(handle):
            raise CallScriptError(f"defines no function {ENTRY}(callAction, params, alarm, response)",
                                  f"{self.path}:1")
        self._handle, self._mtime = handle, mtime
        return handle

    def _run(self, handle: Any, args: tuple[Any, ...], scope: dict[str, Any]) -> tuple[Any, int]:
        """Call ``handle`` on this (worker) thread; the result and the line it returned from."""
        code: CodeType = handle.__code__
        returned = [code.co_firstlineno]

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "return" and frame.f_code is code:
                returned[0] = frame.f_lineno

        handle.__globals__.update(scope)
        sys.setprofile(profile)  # per thread: only this script's call is watched
        try:
            result = handle(*args)
        except Exception as exc:
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(self.path)]
            line = frames[-1].lineno if frames else code.co_firstlineno
            raise CallScriptError(f"{type(exc).__name__}: {exc}", f"{self.path}:{line}") from None
        finally:
            sys.setprofile(None)
        return result, returned[0]

    async def apply(self, services: Services, action: str, params: dict[str, str], alarm: dict[str, Any] | None,
                    response: str, extra: dict[str, Any]) -> tuple[str, str | None]:
        """The TwiML to serve and, when the script's answer was refused, why (already logged)."""
        try:
            handle = self.load()
            result, line = await asyncio.wait_for(
                asyncio.to_thread(self._run, handle, (action, dict(params), alarm, response), extra), self.timeout)
        except TimeoutError:
            why = f"{self.path}: call script took longer than {self.timeout:g}s for {action!r}; using the default"
        except CallScriptError as exc:
            why = f"call script error at {exc}; using the default TwiML for {action!r}"
        else:
            if result is None:
                return response, None
            if not isinstance(result, str | bytes):
                why = (f"call script at {self.path}:{line} returned {type(result).__name__}, not a TwiML string; "
                       f"using the default TwiML for {action!r}")
            else:
                try:
                    parse_and_validate(result)
                except InvalidTwiml as exc:
                    why = (f"call script at {self.path}:{line} returned invalid TwiML for {action!r} ({exc}); "
                           "using the default TwiML")
                else:
                    return result.decode() if isinstance(result, bytes) else result, None
        record_error(services, f"call script {self.path.name}", why, str(self.path))  # why names the line
        return response, why
