"""A real, fast HTTP webhook receiver for tests and benchmarks.

Why a real server rather than a mock: the gateway's webhook delivery path (connection
pooling, keep-alive, retries on 5xx, timeouts) is exactly what tests and benchmarks need
to exercise, and a mocked HTTP client would hide all of it.

Why a background thread with its own asyncio loop: the code under test may run its own
event loop (or none at all, e.g. a subprocess gateway driven from a synchronous pytest
test). A receiver that lives on a private loop in a daemon thread works the same from
sync tests, async tests and scripts, and never competes with the caller's loop.

Why aiohttp.web: it is already a runtime dependency, it keeps connections alive by
default, and it comfortably handles thousands of small POSTs per second, so the receiver
is never the bottleneck of a throughput measurement.

Typical use::

    with WebhookReceiver() as rx:
        ...configure the gateway to POST to rx.url...
        [req] = rx.wait_for(1)
        assert req.json["message"] == "..."

    rx.status = 503        # simulate a failing endpoint (settable while running)
    rx.delay = 2.0         # simulate a slow endpoint
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["ReceivedRequest", "WebhookReceiver"]

# How long start()/stop() wait for the background loop before declaring it stuck. Generous
# because CI machines can be slow, but bounded so a broken receiver never hangs a test run.
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0

# How many recent bodies an AssertionError from wait_for() shows, and how much of each:
# enough to see what the gateway actually sent, short enough to keep pytest output readable.
_SHOW_LAST = 3
_SHOW_BYTES = 300


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One HTTP request as the receiver saw it.

    ``received_at`` is ``time.monotonic()`` taken once the whole body has been read, so
    latency figures (send time → arrival) are comparable to other monotonic stamps taken
    in the same process. ``wall_time`` is ``time.time()`` for correlating with logs or
    with timestamps taken in another process.
    """

    received_at: float
    wall_time: float
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any | None
    method: str = "POST"
    query: dict[str, str] = field(default_factory=dict)
    # the status this request is answered with (``status`` as it was when the request arrived),
    # so a test can tell the deliveries that succeeded from the attempts that were refused
    status: int = 200
    # answered in X-Request-Id, as relays and providers answer with an id of their own
    request_id: str = field(default_factory=lambda: f"rx-{uuid.uuid4().hex[:16]}")

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (lossy), for assertions and error messages."""
        return self.body.decode("utf-8", errors="replace")


class WebhookReceiver:
    """HTTP server on 127.0.0.1 that records every request and answers ``status``.

    Any method and any path is accepted and recorded; ``url`` points at ``/hook`` only as
    a convenient default. ``status`` and ``delay`` are read per request, so a test can
    flip them while the receiver is running to simulate outages or slow endpoints.
    """

    def __init__(self, *, status: int = 200, delay: float = 0.0) -> None:
        self.status: int = status
        self.delay: float = delay
        # extra response headers, e.g. {"Retry-After": "6"} beside a 503 (read per request)
        self.headers: dict[str, str] = {}
        self.host: str = "127.0.0.1"
        self.port: int = 0
        # Appended only under self._cond; read freely (list append is atomic in CPython,
        # and wait_for() returns a snapshot copy for callers that need a stable view).
        self.requests: list[ReceivedRequest] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None

    # ------------------------------------------------------------------ properties
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (valid once started)."""
        self._require_started()
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The default webhook URL, ``http://127.0.0.1:<port>/hook``."""
        return f"{self.base_url}/hook"

    @property
    def count(self) -> int:
        """Number of requests recorded so far."""
        with self._cond:
            return len(self.requests)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WebhookReceiver:
        """Start serving in a daemon thread; return self once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("WebhookReceiver already started")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._thread_main, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"WebhookReceiver did not start within {_START_TIMEOUT}s")
        if self._startup_error is not None:
            self._thread.join(_STOP_TIMEOUT)
            self._thread = None
            raise RuntimeError("WebhookReceiver failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent; recorded requests are kept."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"WebhookReceiver did not stop within {_STOP_TIMEOUT}s")
        self._thread = None
        self._loop = None
        self._stop_event = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<WebhookReceiver {where} status={self.status} requests={len(self.requests)}>"

    # ------------------------------------------------------------------ queries
    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Block until at least ``count`` requests arrived; return a snapshot of all of them.

        Raises AssertionError (so pytest shows it as a test failure, not an error) with how
        many arrived and the last few bodies, which is usually enough to see what went wrong.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._timeout_message(count, timeout))
                self._cond.wait(remaining)
            return list(self.requests)

    def clear(self) -> None:
        """Forget all recorded requests (in place, so references to ``requests`` stay valid)."""
        with self._cond:
            self.requests.clear()

    def _timeout_message(self, count: int, timeout: float) -> str:
        got = len(self.requests)
        msg = [f"WebhookReceiver: expected >= {count} request(s) within {timeout:g}s, got {got}"]
        for req in self.requests[-_SHOW_LAST:]:
            text = req.text
            if len(text) > _SHOW_BYTES:
                text = text[:_SHOW_BYTES] + "..."
            msg.append(f"  {req.method} {req.path}: {text}")
        return "\n".join(msg)

    def _require_started(self) -> None:
        if not self.port:
            raise RuntimeError("WebhookReceiver not started (call start() or use `with`)")

    # ------------------------------------------------------------------ server side
    def _thread_main(self) -> None:
        loop = _new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # surface startup failures to start()
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        # client_max_size: gateways may batch many events into one POST; the 1 MiB aiohttp
        # default would turn a large-but-valid notification into a 413 and a confusing test.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # access_log=None: logging every request costs more than handling it at bench rates.
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=75.0)
        await runner.setup()
        self._runner = runner
        try:
            # backlog=2048: a gateway bursting hundreds of concurrent connections must not
            # see refused/reset connects that a real endpoint would not cause.
            site = web.TCPSite(runner, self.host, 0, backlog=2048, reuse_address=True)
            await site.start()
            port = _bound_port(runner)
            if not port:
                raise RuntimeError(f"could not learn the bound port from {runner.addresses!r}")
            self.port = port
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received_at = time.monotonic()
        wall_time = time.time()
        parsed: Any | None = None
        if body:
            try:
                parsed = _json.loads(body)
            except ValueError:
                parsed = None
        rec = ReceivedRequest(
            received_at=received_at,
            wall_time=wall_time,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
            method=request.method,
            query=dict(request.query),
            status=self.status,
        )
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        delay = self.delay
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(status=rec.status, text="ok\n" if rec.status < 400 else "error\n",
                            headers={**self.headers, "X-Request-Id": rec.request_id})


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return 0


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the ``speed``/``test`` extras), else the stdlib loop.

    Why: the receiver shares the GIL with whatever drives the test or benchmark, so the
    less CPU it spends per request the less it distorts the figures being measured.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
