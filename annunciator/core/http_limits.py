"""Bounds on what an HTTP request may carry, checked at the edge before any handler sees it.

* Bodies: every route has a byte limit (``BODY_LIMIT`` unless the route was given its own with
  ``limit_body``). It is enforced while the body is read, counting the bytes of each
  ``http.request`` message, and up front from ``Content-Length``: a 10 MB note is answered 413
  before it is parsed, stored, or copied into every webhook about its alarm.
* URLs: a NUL character in the path or the query string is answered 422. No id, tag path or
  filter contains one, and PostgreSQL cannot even compare text with one (it raised a 500).
* JSON: ``loads`` refuses nesting deeper than ``MAX_DEPTH`` (``json.loads`` raises RecursionError
  on 100,000 levels, not ValueError), and ``normalise`` makes what no database stores alike
  storable: lone UTF-16 surrogates become U+FFFD, NaN/Infinity and NUL go through
  ``sanitize.clean``. Each change is reported as ``"path: what was done"``.
* A database that does not answer (``errors.Unavailable``) is a 503 with ``Retry-After`` on every
  guarded route, plugin routes included, rather than a 500.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import sanitize
from .errors import Unavailable

log = logging.getLogger(__name__)

# 64 KiB holds any single JSON API request with room to spare (an ack with 4,000 characters of
# notes and a thousand event ids is ~40 KiB). POST /api/alarms takes batches of up to 10,000 alarms
# (RaiseBody): 2 MiB, since 10,000 plain alarms are ~1 MB (256 KiB would cap a batch near 2,500).
# Plugin routes get the default too unless they declare their own (scripts/run takes 2 MB).
BODY_LIMIT = 64 * 1024
ALARMS_BODY_LIMIT = 2 * 1024 * 1024
MAX_DEPTH = 32
RETRY_AFTER = 5  # seconds: what a client told 503 should wait before asking again

_SURROGATE = re.compile("[\ud800-\udfff]")
_GUARDED = "_annunciator_body_limit"
R = TypeVar("R", bound=BaseRoute)


class BodyRefused(ValueError):
    """A JSON body that is not accepted: ``message`` says why, ``path`` where."""

    def __init__(self, message: str, path: str = "body"):
        super().__init__(message)
        self.message, self.path = message, path


def _size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


async def _json_answer(send: Send, status: int, data: dict[str, Any],
                       headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(data, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RouteGuard:
    """Wraps one route's ASGI app: the body limit, and Unavailable answered 503.

    The body is read in full (up to ``limit``) before the route runs and then replayed: every
    route reads its whole body anyway, and a handler can then never see half a body or have to
    abandon a response it started. The bytes past the limit are never buffered.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        what = f"{scope['method']} {scope['path']}"
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._too_large(send, what)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._too_large(send, what)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then e.g. http.disconnect, for handlers that listen for it

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, replay, watch)
        except Unavailable as exc:
            if started:
                raise
            log.warning("%s answered 503: %s", what, exc)
            await _json_answer(send, 503, unavailable_body(exc), [(b"retry-after", str(RETRY_AFTER).encode())])

    async def _too_large(self, send: Send, what: str) -> None:
        # Not "Connection: close": the server reads and drops the rest of the body, so a client
        # still sending it can read this answer afterwards instead of a reset connection.
        await _json_answer(send, 413, {
            "error": f"request body too large: {what} takes at most {_size(self.limit)}",
            "limit": self.limit})


def unavailable_body(exc: Exception) -> dict[str, Any]:
    return {"error": str(exc) or "the database is not answering; try again shortly",
            "retryAfter": RETRY_AFTER}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one before we get here
    return None


def limit_body(route: R, limit: int) -> R:
    """Give ``route`` its own body limit (instead of ``BODY_LIMIT``); returns the route. A route
    keeps the first limit it is given."""
    if isinstance(route, Route) and not getattr(route, _GUARDED, None):
        route.app = RouteGuard(route.app, limit)
        setattr(route, _GUARDED, limit)
    return route


def guard_routes(routes: Iterable[BaseRoute], default: int = BODY_LIMIT) -> None:
    """Put every route not yet guarded under ``default`` (Mounts, static files, stay as they are:
    they read no bodies)."""
    for route in routes:
        limit_body(route, default)


class UrlGuard:
    """Answer 422 for a NUL character in the decoded path or in a query parameter."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = url_problem(scope)
            if problem is not None:
                where, message = problem
                await _json_answer(send, 422, {"error": f"{where}: {message}",
                                               "fields": [{"path": where, "message": message}]})
                return
        await self.app(scope, receive, send)


def url_problem(scope: Scope) -> tuple[str, str] | None:
    """(where, what) when the request's URL carries a NUL, else None."""
    if sanitize.NUL in scope.get("path", ""):
        return "path", "NUL characters (%00) are not allowed in a URL path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        # parsed as Starlette parses it, to name the parameter
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if sanitize.NUL in key or sanitize.NUL in value:
                name = sanitize.clean_text(key)[:100] or "query"
                return name, "NUL characters (%00) are not allowed in query parameters"
    return None


# --- JSON bodies --------------------------------------------------------------------------------

def loads(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw``, or BodyRefused saying why not (also for nesting deeper than
    ``max_depth``, which json.loads reports as RecursionError once it is deep enough)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BodyRefused(f"body is nested too deeply: at most {max_depth} levels of arrays and objects") from None
    except ValueError as exc:  # includes UnicodeDecodeError and ints of over 4,300 digits
        raise BodyRefused(f"body is not valid JSON: {exc}") from None
    levels = depth(value, max_depth)
    if levels > max_depth:
        raise BodyRefused(f"body is nested too deeply: more than {max_depth} levels of arrays and objects "
                          f"(at most {max_depth})")
    return value


def depth(value: Any, stop: int | None = None) -> int:
    """How many arrays and objects deep ``value`` is (0 for a scalar), without recursion; stops
    counting once past ``stop``."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > deepest:
            deepest = d
            if stop is not None and d > stop:
                return d
        for child in (v.values() if isinstance(v, dict) else v):
            if isinstance(child, dict | list):
                stack.append((child, d + 1))
    return deepest


def normalise(value: Any, notes: list[str], path: str = "") -> Any:
    """``value`` made storable on every database (see the module docstring), each change noted.
    Only for values checked by ``loads`` (bounded depth: this recurses)."""
    return sanitize.clean(_surrogates(value, path, notes), path, notes)


def _fix(text: str, path: str, notes: list[str]) -> str:
    if _SURROGATE.search(text):
        notes.append(f"{path or 'value'}: invalid UTF-16 surrogates replaced with U+FFFD")
        return _SURROGATE.sub("\ufffd", text)
    return text


def _surrogates(value: Any, path: str, notes: list[str]) -> Any:
    # json.loads joins valid surrogate pairs, so any surrogate left is a lone one: no database
    # driver can encode it as UTF-8 (the row was refused after the API had answered 201)
    if isinstance(value, str):
        return _fix(value, path, notes)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = _SURROGATE.sub("\ufffd", k) if isinstance(k, str) else k
            if key != k:
                notes.append(f"{path}.{key}: invalid UTF-16 surrogates in the key replaced with U+FFFD" if path
                             else f"{key}: invalid UTF-16 surrogates in the key replaced with U+FFFD")
            out[key] = _surrogates(v, f"{path}.{key}" if path else str(key), notes)
        return out
    if isinstance(value, list):
        return [_surrogates(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    return value
