"""Call scripts: an integrator's Python file, per voice profile, that may change what a caller hears.

Two forms, told apart by whether the file defines a top-level function ``handle``:

* the function form: ``handle(callAction, params, alarm, response)`` returns ``None`` (keep the
  gateway's TwiML) or a TwiML string;
* the script form, as scripts written for Ignition's Kymera Twilio module are: the whole file runs
  for each answer with ``callAction`` (the step, the second-last part of the request URL),
  ``response`` (the TwiML about to be written), ``params`` and each of the call's parameters
  (``CallSid``, ``From``, ``Digits``, ...) as variables; it may assign a new ``response``.

Either way the XML header is added when the script's TwiML lacks it, and the result is parsed with
lxml and checked against the package's schema; a script that raises, times out or gives anything
else is logged with its file and line and the gateway's own TwiML is served, so a broken script
never leaves a caller in silence.
"""

from __future__ import annotations

import ast
import asyncio
import keyword
import logging
import sys
import traceback
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any

from annunciator.scripting.runner import Script, ScriptError, record_error

from .twiml import InvalidTwiml, parse_and_validate

if TYPE_CHECKING:
    from annunciator.core.services import Services

log = logging.getLogger("annunciator.scripts.voice")
ENTRY = "handle"
XML_HEADER = '<?xml version="1.0" encoding="UTF-8"?>'


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
        self._script: Script | None = None  # the script form: the whole file, run per answer
        self._assigned = 1

    def load(self) -> Any:
        """The script's ``handle`` function, or the Script itself in the script form
        (CallScriptError when neither can be had)."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise CallScriptError(f"cannot read the call script: {exc.strerror}", str(self.path)) from None
        if mtime == self._mtime and (self._handle is not None or self._script is not None):
            return self._handle or self._script
        try:
            script = Script.load(self.path)
            tree = ast.parse(self.path.read_text(encoding="utf-8"))
        except SyntaxError as exc:
            raise CallScriptError(f"syntax error: {exc.msg}", f"{self.path}:{exc.lineno}") from None
        if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == ENTRY for n in tree.body):
            # where the script sets ``response``, for the error that names a line
            self._assigned = max((n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name)
                                  and n.id == "response" and isinstance(n.ctx, ast.Store)), default=1)
            self._script, self._handle, self._mtime = script, None, mtime
            return script
        scope: dict[str, Any] = {"__name__": "__annunciator_call_script__"}
        try:
            script.run(scope)
        except Exception as exc:
            raise CallScriptError(str(exc), getattr(exc, "where", str(self.path))) from None
        handle = scope.get(ENTRY)
        if not callable(handle):
            raise CallScriptError(f"defines no function {ENTRY}(callAction, params, alarm, response)",
                                  f"{self.path}:1")
        self._handle, self._script, self._mtime = handle, None, mtime
        return handle

    def _run_script(self, script: Script, action: str, params: dict[str, str], alarm: dict[str, Any] | None,
                    response: str, scope: dict[str, Any]) -> tuple[Any, int]:
        """The script form: run the file with the call's variables; its ``response`` afterwards."""
        variables: dict[str, Any] = {k: v for k, v in params.items()
                                     if k.isidentifier() and not keyword.iskeyword(k)}
        variables.update(scope, callAction=action, params=dict(params), alarm=alarm, response=response,
                         __name__="__annunciator_call_script__")
        try:
            out = script.run(variables)
        except ScriptError as exc:
            raise CallScriptError(exc.message, exc.where) from None
        result = out.get("response")
        return (None if result == response else result), self._assigned

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
            if isinstance(handle, Script):
                result, line = await asyncio.wait_for(asyncio.to_thread(
                    self._run_script, handle, action, dict(params), alarm, response, extra), self.timeout)
            else:
                result, line = await asyncio.wait_for(
                    asyncio.to_thread(self._run, handle, (action, dict(params), alarm, response), extra),
                    self.timeout)
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
                result = with_header(result.decode() if isinstance(result, bytes) else result)
                try:
                    parse_and_validate(result)
                except InvalidTwiml as exc:
                    why = (f"call script at {self.path}:{line} returned invalid TwiML for {action!r} ({exc}); "
                           "using the default TwiML")
                else:
                    return result, None
        record_error(services, f"call script {self.path.name}", why, str(self.path))  # why names the line
        return response, why


def with_header(twiml: str) -> str:
    """TwiML as Twilio expects it, starting with the XML declaration (added when missing)."""
    text = twiml.lstrip("\ufeff").lstrip()
    return text if text.startswith("<?xml") else f"{XML_HEADER}\n{text}"

