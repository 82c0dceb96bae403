"""A loopback Twilio: the REST subset annunciator uses, signed callbacks, phones and faults.

Why an emulator rather than mocks: no machine here reaches Twilio, and the SMS and voice
profiles must be exercised through the official ``twilio`` client, over real HTTP, with real
signatures, the way they will run in production. The emulator answers with the same paths,
form-encoded bodies, JSON shapes, status codes and error bodies as Twilio's API 2010-04-01, and
``annunciator.testing.prism`` checks that claim against Twilio's own OpenAPI description.

Why the same threading model as ``WebhookReceiver``: aiohttp on a private loop in a daemon
thread works the same from sync tests, async tests, scripts and ``annunciator twilio-emulator``.

Typical use::

    with TwilioEmulator(numbers=["+15005550006"]) as tw:
        client = tw.client()                       # official twilio.rest.Client, pointed here
        msg = client.messages.create(to="+15550100001", from_="+15005550006", body="Tank 3 high")
        tw.phone("+15550100001").expect_sms(contains="Tank 3")
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future
from datetime import UTC, date, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from annunciator.plugins.twilio.sms import (
    MAX_BODY_CHARS,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    encoding_of,
    normalize_number,
    segments,
)

from .faults import Faults
from .records import (
    API_VERSION,
    Callback,
    Message,
    RecordedRequest,
    TwilioApiError,
    new_sid,
    now,
    rfc2822,
)

if TYPE_CHECKING:
    from twilio.rest import Client

    from .calls import Call
    from .phone import Phone

__all__ = ["DEFAULT_NUMBER", "TwilioEmulator"]

log = logging.getLogger("annunciator.twilio_emulator")
T = TypeVar("T")

# Twilio's magic test number that "always succeeds" as a From; a familiar default for newcomers.
DEFAULT_NUMBER = "+15005550006"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
# Twilio gives up on a webhook after 15 s; the emulator does the same so a hung gateway fails a
# test instead of hanging it.
WEBHOOK_TIMEOUT = 15.0
_USER_AGENT = "TwilioProxy/1.1"
_PREFIX = f"/{API_VERSION}/Accounts"
_FORM = web.RequestKey("form", dict)  # the request's form and query values, parsed once
_SID = web.RequestKey("sid", str)  # what the request created, for the request record


class TwilioEmulator:
    """Loopback HTTP server speaking Twilio's REST API (Messages, Calls, IncomingPhoneNumbers).

    Args:
        account_sid / auth_token: the credentials clients must use (generated when omitted).
        numbers: phone numbers the emulated account owns (the only valid ``From`` values).
        sms_url: the URL Twilio would POST inbound SMS to (the gateway's public ``/twilio/sms``).
            Use :meth:`route` when the gateway listens somewhere else than its public URL.
        step_delay: seconds between status steps (queued → sent → delivered); fast by default.
        api_keys: ``{"SK…": secret}`` API keys accepted besides AccountSid:AuthToken.
        strict_numbers: require numbers ``phonenumbers`` calls *valid*, not just *possible*
            (fictional 555 numbers are only possible); invalid ``To`` → 21211.
        opt_out_replies: send Twilio's standard STOP/START/HELP confirmations, as Twilio does.
        host / port: where to listen; 127.0.0.1 and a free port by default.
    """

    def __init__(self, *, account_sid: str | None = None, auth_token: str | None = None,
                 numbers: Iterable[str] = (DEFAULT_NUMBER,), sms_url: str | None = None,
                 step_delay: float = 0.01, api_keys: Mapping[str, str] | None = None,
                 strict_numbers: bool = False, opt_out_replies: bool = True,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.account_sid = account_sid or new_sid("AC")
        self.auth_token = auth_token or new_sid("")  # 32 hex, like a real auth token
        self.host = host
        self.port = port
        self._requested_port = port
        self._initial: dict[str, Any] = {"numbers": list(numbers), "sms_url": sms_url, "step_delay": step_delay,
                         "api_keys": dict(api_keys or {}), "strict_numbers": strict_numbers,
                         "opt_out_replies": opt_out_replies}
        self.faults = Faults()
        self._cond = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._api_base_override: str | None = None
        # the PrismProxy in front, when the twilio_emulator fixture runs the contract pass
        self.prism: Any = None
        self._configure()

    def _configure(self) -> None:
        """(Re)set every piece of state to the constructor's values; see reset()."""
        init = self._initial
        owned = [self._norm(n, "numbers") for n in init["numbers"]]
        with self._cond:
            self.step_delay: float = init["step_delay"]
            self.sms_url: str | None = init["sms_url"]
            self.api_keys: dict[str, str] = dict(init["api_keys"])
            self.strict_numbers: bool = init["strict_numbers"]
            self.opt_out_replies: bool = init["opt_out_replies"]
            self._numbers: dict[str, str] = {n: new_sid("PN") for n in owned}
            # one Messaging Service holding every number, like a typical account
            self.messaging_services: dict[str, list[str]] = {new_sid("MG"): list(owned)}
            self._messages: dict[str, Message] = {}
            self._calls: dict[str, Call] = {}
            self._requests: list[RecordedRequest] = []
            self._callbacks: list[Callback] = []
            self._routes: list[tuple[str, str]] = []
            self._fail: dict[str, tuple[str, int]] = {}
            self._opted_out: set[tuple[str, str]] = set()  # (our number, their phone)
            self._sticky: dict[tuple[str, str], str] = {}
            self._rr = 0
            self._phones: dict[str, Phone] = {}
            self._cond.notify_all()
        self.faults.clear()

    def reset(self) -> None:
        """Forget everything and restore the constructor's settings; credentials and port stay.

        Why: a Prism proxy takes seconds to start, so the contract pass shares one emulator (and
        one Prism) across tests and resets it between them instead of starting a new pair.
        """
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._run(self._cancel_tasks(), timeout=_STOP_TIMEOUT)
        self._configure()

    # ------------------------------------------------------------------ config
    @property
    def numbers(self) -> list[str]:
        """The numbers the account owns, in the order given."""
        with self._cond:
            return list(self._numbers)

    @property
    def messaging_service_sid(self) -> str:
        """The SID of the account's first Messaging Service (all owned numbers)."""
        with self._cond:
            return next(iter(self.messaging_services))

    def add_number(self, number: str) -> str:
        """Give the account another number (E.164) and return it normalised."""
        e164 = self._norm(number, "number")
        with self._cond:
            self._numbers.setdefault(e164, new_sid("PN"))
        return e164

    def add_messaging_service(self, numbers: Iterable[str]) -> str:
        """Create a Messaging Service (a sender pool) over owned numbers; returns its ``MG`` SID."""
        pool = [self._norm(n, "number") for n in numbers]
        with self._cond:
            missing = [n for n in pool if n not in self._numbers]
            if missing:
                raise ValueError(f"numbers not owned by the emulated account: {missing}")
            sid = new_sid("MG")
            self.messaging_services[sid] = pool
        return sid

    def route(self, public_prefix: str, actual_prefix: str) -> None:
        """POST URLs starting with ``public_prefix`` to ``actual_prefix`` instead, still signing the public URL.

        This is the reverse proxy in front of a gateway: Twilio signs the URL it was given
        (``https://alarms.example.com/twilio/sms``) while the bytes reach ``http://127.0.0.1:8080``.
        """
        with self._cond:
            self._routes.append((public_prefix, actual_prefix))
            self._routes.sort(key=lambda r: len(r[0]), reverse=True)

    def fail_number(self, number: str, *, status: str = "undelivered", error_code: int = 30003) -> None:
        """Messages to ``number`` end ``failed`` or ``undelivered`` with ``error_code`` instead of delivered."""
        if status not in ("failed", "undelivered"):
            raise ValueError("status must be 'failed' or 'undelivered'")
        with self._cond:
            self._fail[self._norm(number, "number")] = (status, error_code)

    def is_opted_out(self, phone: str, sender: str | None = None) -> bool:
        """Whether ``phone`` sent STOP to ``sender`` (or to any owned number when sender is None)."""
        phone = self._norm(phone, "phone")
        with self._cond:
            return any(p == phone and (sender is None or s == sender) for s, p in self._opted_out)

    def phone(self, number: str) -> Phone:
        """The emulated handset for ``number`` (one per number, created on first use)."""
        from .phone import Phone

        e164 = self._norm(number, "phone")
        with self._cond:
            if e164 not in self._phones:
                self._phones[e164] = Phone(self, e164)
            return self._phones[e164]

    # ------------------------------------------------------------------ URLs and clients
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the emulator itself (valid once started)."""
        if not self.port:
            raise RuntimeError("TwilioEmulator not started (call start() or use `with`)")
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """What a ``twilio.rest.Client`` must be pointed at: the emulator, or the Prism proxy in front of it."""
        return self._api_base_override or self.base_url

    @api_base.setter
    def api_base(self, value: str | None) -> None:
        self._api_base_override = value

    def client(self, *, timeout: float = 5.0, username: str | None = None, password: str | None = None) -> Client:
        """An official ``twilio.rest.Client`` whose every request goes to :attr:`api_base`."""
        from .client import make_client

        return make_client(self.api_base, self.account_sid, self.auth_token, timeout=timeout,
                           username=username, password=password)

    def async_client(self, *, timeout: float = 5.0) -> Client:
        """Like :meth:`client` but with an ``AsyncTwilioHttpClient`` for the ``*_async`` methods."""
        from .client import make_async_client

        return make_async_client(self.api_base, self.account_sid, self.auth_token, timeout=timeout)

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """``X-Twilio-Signature`` for ``params`` POSTed to ``url``, computed by twilio's RequestValidator."""
        return RequestValidator(self.auth_token).compute_signature(url, dict(params))

    # ------------------------------------------------------------------ records
    @property
    def messages(self) -> list[Message]:
        """Every message, inbound and outbound, oldest first (a snapshot)."""
        with self._cond:
            return list(self._messages.values())

    def find_messages(self, *, to: str | None = None, from_: str | None = None,
                      direction: str | None = None, status: str | None = None) -> list[Message]:
        """Messages filtered by recipient, sender, direction (``inbound``/``outbound-*``) and status."""
        out = []
        for m in self.messages:
            if to is not None and m.to != to:
                continue
            if from_ is not None and m.from_ != from_:
                continue
            if direction is not None and not m.direction.startswith(direction):
                continue
            if status is not None and m.status != status:
                continue
            out.append(m)
        return out

    def message(self, sid: str) -> Message:
        with self._cond:
            return self._messages[sid]

    @property
    def calls(self) -> list[Call]:
        """Every call, oldest first (a snapshot)."""
        with self._cond:
            return list(self._calls.values())

    def find_calls(self, *, to: str | None = None, from_: str | None = None) -> list[Call]:
        return [c for c in self.calls if (to is None or c.to == to) and (from_ is None or c.from_ == from_)]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every REST request answered, with its status and fault (a snapshot)."""
        with self._cond:
            return list(self._requests)

    @property
    def callbacks(self) -> list[Callback]:
        """Every signed request the emulator made: status callbacks, webhooks, TwiML fetches."""
        with self._cond:
            return list(self._callbacks)

    def wait_for_status(self, sid: str, *statuses: str, timeout: float = 5.0) -> Message:
        """Block until message ``sid`` reaches one of ``statuses``; AssertionError with its history otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                msg = self._messages.get(sid)
                if msg is not None and msg.status in statuses:
                    return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = msg.statuses if msg else "no such message"
                    raise AssertionError(f"message {sid} did not reach {statuses} within {timeout:g}s: {seen}")
                self._cond.wait(remaining)

    def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
        """Block until ``predicate()`` is truthy (re-checked on every emulator change); return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"TwilioEmulator: {what} not met within {timeout:g}s")
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TwilioEmulator:
        """Serve in a daemon thread; return self once listening."""
        if self._thread is not None:
            raise RuntimeError("TwilioEmulator already started")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, name="twilio-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"TwilioEmulator did not start within {_START_TIMEOUT}s")
        if self._startup_error is not None:
            self._thread.join(_STOP_TIMEOUT)
            self._thread = None
            raise RuntimeError("TwilioEmulator failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent; records are kept."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"TwilioEmulator did not stop within {_STOP_TIMEOUT}s")
        self._thread = self._loop = self._stop_event = None
        self.port = self._requested_port

    def __enter__(self) -> TwilioEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<TwilioEmulator {where} {self.account_sid} messages={len(self._messages)}>"

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.exception("twilio emulator stopped with an error")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        base = f"{_PREFIX}/{{account}}"
        sid = "{sid:[A-Za-z0-9]+}"
        app.router.add_post(f"{base}/Messages.json", self._create_message)
        app.router.add_get(f"{base}/Messages.json", self._list_messages)
        app.router.add_get(f"{base}/Messages/{sid}.json", self._fetch_message)
        app.router.add_post(f"{base}/Calls.json", self._create_call)
        app.router.add_get(f"{base}/Calls.json", self._list_calls)
        app.router.add_get(f"{base}/Calls/{sid}.json", self._fetch_call)
        app.router.add_post(f"{base}/Calls/{sid}.json", self._update_call)
        app.router.add_get(f"{base}/IncomingPhoneNumbers.json", self._list_numbers)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT))
        try:
            site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
            await site.start()
            for addr in runner.addresses:
                if isinstance(addr, tuple) and len(addr) >= 2:
                    self.port = int(addr[1])
                    break
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await self._cancel_tasks()
            await self._session.close()
            await runner.cleanup()

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)

    # ------------------------------------------------------------------ loop plumbing
    def _spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` on the emulator loop (from the loop itself)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("twilio emulator task failed", exc_info=task.exception())

    def _submit(self, coro: Awaitable[T]) -> Future[T]:
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError("TwilioEmulator not started (call start() or use `with`)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    def _run(self, coro: Awaitable[T], timeout: float) -> T:
        """Run ``coro`` on the emulator loop and wait for it from another thread, bounded."""
        if self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("blocking emulator call made from the emulator's own loop")
        return self._submit(coro).result(timeout)

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ signed outbound requests
    def _resolve(self, url: str) -> str:
        with self._cond:
            for public, actual in self._routes:
                if url.startswith(public):
                    return actual.rstrip("/") + "/" + url[len(public):].lstrip("/") if url[len(public):] else actual
        return url

    async def post_signed(self, kind: str, url: str, params: Mapping[str, str], method: str = "POST") -> Callback:
        """POST (or GET) ``params`` to ``url`` as Twilio does: form-encoded, signed over the public URL."""
        params = {k: v for k, v in params.items() if v is not None}
        target = self._resolve(url)
        if method.upper() == "GET":
            sep = "&" if "?" in url else "?"
            signed_url = f"{url}{sep}{urlencode(params)}" if params else url
            target = self._resolve(signed_url)
            signature = self.sign(signed_url, {})
        else:
            signature = self.sign(url, params)
        headers = {"X-Twilio-Signature": signature, "User-Agent": _USER_AGENT,
                   "I-Twilio-Idempotency-Token": new_sid("")}
        status: int | None = None
        error: str | None = None
        body = ""
        assert self._session is not None
        try:
            if method.upper() == "GET":
                resp_cm = self._session.get(target, headers=headers)
            else:
                resp_cm = self._session.post(target, data=params, headers=headers)
            async with resp_cm as resp:
                status = resp.status
                body = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        cb = Callback(kind=kind, url=url, posted_to=target, params=dict(params), signature=signature,
                      status=status, error=error, body=body)
        with self._cond:
            self._callbacks.append(cb)
            self._cond.notify_all()
        if error or (status is not None and status >= 400):
            log.warning("%s callback to %s failed: %s", kind, target, error or status)
        return cb

    # ------------------------------------------------------------------ REST plumbing
    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        form: dict[str, list[str]] = {}
        if request.method == "POST":
            post = await request.post()
            for k, v in post.items():
                form.setdefault(k, []).append(str(v))
        for k, v in request.query.items():
            form.setdefault(k, []).append(v)
        request[_FORM] = form
        fault_name: str | None = None
        sid: str | None = None
        try:
            self._authenticate(request)
            fault = self.faults.take(request.method, request.path)
            if fault is not None:
                fault_name = fault.name
                if fault.kind == "timeout":
                    await asyncio.sleep(fault.hold)
                    raise TwilioApiError(504, 20504, "Gateway Timeout")
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                status = int(fault.kind)
                raise TwilioApiError(status, 20000 + status, None, headers)
            response = await handler(request)
            sid = request.get(_SID)
            status, code = response.status, None
        except TwilioApiError as exc:
            status, code = exc.status, exc.code
            response = web.json_response(exc.body(), status=exc.status, headers=exc.headers)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        with self._cond:
            self._requests.append(RecordedRequest(method=request.method, path=request.path, params=form,
                                                  status=status, error_code=code, fault=fault_name, sid=sid))
            self._cond.notify_all()
        response.headers.setdefault("Twilio-Request-Id", new_sid("RQ"))
        return response

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        user = password = ""
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                pass
        ok = (user == self.account_sid and password == self.auth_token) or (
            user in self.api_keys and password == self.api_keys[user])
        if not ok:
            raise TwilioApiError(401, 20003)
        account = request.match_info.get("account")
        if account is not None and account != self.account_sid:
            raise TwilioApiError(404, 20404, f"The requested resource {request.path} was not found")

    async def _not_found(self, request: web.Request) -> web.Response:
        raise TwilioApiError(404, 20404, f"The requested resource {request.path} was not found")

    @staticmethod
    def _one(request: web.Request, name: str) -> str | None:
        values = request[_FORM].get(name)
        return values[-1] if values else None

    def _norm(self, raw: str, what: str) -> str:
        # lenient on purpose: strict_numbers is about what Twilio accepts as a To, not about
        # which fictional numbers a test may own or hold
        e164 = normalize_number(raw)
        if e164 is None:
            raise ValueError(f"{what}: {raw!r} is not a phone number in E.164 form")
        return e164

    def _page(self, request: web.Request, key: str, items: list[dict[str, Any]],
              filters: list[tuple[str, str]]) -> web.Response:
        q = request.query
        try:
            page_size = max(1, min(1000, int(q.get("PageSize", "50"))))
            page = max(0, int(q.get("Page", "0")))
        except ValueError:
            raise TwilioApiError(400, 20001, "Invalid paging parameters")
        start = page * page_size
        chunk = items[start:start + page_size]

        def uri(p: int) -> str:
            pairs = [*filters, ("PageSize", str(page_size)), ("Page", str(p))]
            if p > 0 and items:
                pairs.append(("PageToken", "PA" + str(items[min(p * page_size, len(items)) - 1].get("sid", ""))))
            return f"{request.path}?{urlencode(pairs)}"

        return web.json_response({
            "end": start + len(chunk) - 1 if chunk else 0,
            "first_page_uri": uri(0),
            key: chunk,
            "next_page_uri": uri(page + 1) if start + page_size < len(items) else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": uri(page),
        })

    # ------------------------------------------------------------------ Messages
    async def _create_message(self, request: web.Request) -> web.Response:
        to_raw = self._one(request, "To")
        from_raw = self._one(request, "From")
        service = self._one(request, "MessagingServiceSid")
        body = self._one(request, "Body") or ""
        callback = self._one(request, "StatusCallback")
        if not to_raw:
            raise TwilioApiError(400, 21604)
        if not from_raw and not service:
            raise TwilioApiError(400, 21603)
        if not body and not request[_FORM].get("MediaUrl") and not self._one(request, "ContentSid"):
            raise TwilioApiError(400, 21602)
        if len(body) > MAX_BODY_CHARS:
            raise TwilioApiError(400, 21617)
        to = normalize_number(to_raw, strict=self.strict_numbers)
        if to is None:
            raise TwilioApiError(400, 21211, f"Invalid 'To' Phone Number: {to_raw}")
        if callback is not None and not callback.startswith(("http://", "https://")):
            raise TwilioApiError(400, 21609)
        with self._cond:
            if service is not None and service not in self.messaging_services:
                raise TwilioApiError(400, 21701, f"The Messaging Service Sid {service} is invalid.")
            if from_raw:
                sender = normalize_number(from_raw)
                if sender not in self._numbers:
                    raise TwilioApiError(400, 21606, f"The 'From' phone number {from_raw} is not a valid, "
                                                     "SMS-capable inbound phone number or short code for your account.")
                senders = [sender]
            else:
                sender = None
                senders = self.messaging_services[service or ""]
            if any((s, to) in self._opted_out for s in senders):
                raise TwilioApiError(400, 21610)
            if sender == to:
                raise TwilioApiError(400, 21266)
            if sender is None:
                sender = self._pick_sender(service or "", to)
            msg = self._new_outbound(to, sender, body, "outbound-api", service, callback)
            request[_SID] = msg.sid
            doc = msg.to_json()
            if service and not from_raw:
                doc["from"] = None  # Twilio picks the sender after accepting the request
        log.info("SMS %s %s -> %s: %s", msg.sid, sender, to, body)
        return web.json_response(doc, status=201)

    def _pick_sender(self, service: str, to: str) -> str:
        """Sticky sender: the same pool number for the same recipient, round robin otherwise."""
        key = (service, to)
        if key not in self._sticky:
            pool = self.messaging_services[service]
            self._sticky[key] = pool[self._rr % len(pool)]
            self._rr += 1
        return self._sticky[key]

    def _new_outbound(self, to: str, sender: str, body: str, direction: str, service: str | None,
                      callback: str | None) -> Message:
        """Record an outbound message and start its status progression (call with the lock held)."""
        fail = self._fail.get(to)
        msg = Message(sid=new_sid("SM"), account_sid=self.account_sid, to=to, from_=sender, body=body,
                      status="accepted" if service else "queued", direction=direction,
                      num_segments=segments(body), encoding=encoding_of(body), messaging_service_sid=service,
                      status_callback=callback, reaches_handset=fail is None)
        msg.statuses.append(msg.status)
        self._messages[msg.sid] = msg
        steps: list[tuple[str, int | None]] = [("queued", None)] if service else []
        if fail is None:
            steps += [("sent", None), ("delivered", None)]
        elif fail[0] == "failed":
            steps += [("failed", fail[1])]
        else:
            steps += [("sent", None), ("undelivered", fail[1])]
        self._cond.notify_all()
        self._spawn(self._progress(msg, steps))
        return msg

    async def _progress(self, msg: Message, steps: list[tuple[str, int | None]]) -> None:
        from .records import ERROR_MESSAGES

        for status, code in steps:
            await asyncio.sleep(self.step_delay)
            with self._cond:
                msg.status = status
                msg.statuses.append(status)
                msg.date_updated = now()
                if status == "sent":
                    msg.date_sent = msg.date_updated
                if code is not None:
                    msg.error_code = code
                    msg.error_message = ERROR_MESSAGES.get(code, "Unknown error")
                self._cond.notify_all()
            if msg.status_callback:
                params = {"SmsSid": msg.sid, "SmsStatus": status, "MessageStatus": status, "To": msg.to,
                          "MessageSid": msg.sid, "AccountSid": msg.account_sid, "From": msg.from_ or "",
                          "ApiVersion": API_VERSION}
                if msg.messaging_service_sid:
                    params["MessagingServiceSid"] = msg.messaging_service_sid
                if code is not None:
                    params["ErrorCode"] = str(code)
                if status in ("delivered", "undelivered"):
                    params["RawDlrDoneDate"] = msg.date_updated.strftime("%y%m%d%H%M")
                await self.post_signed("message-status", msg.status_callback, params)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        with self._cond:
            msg = self._messages.get(sid)
            if msg is None:
                raise TwilioApiError(404, 20404, f"The requested resource {request.path} was not found")
            request[_SID] = sid
            return web.json_response(msg.to_json())

    async def _list_messages(self, request: web.Request) -> web.Response:
        q = request.query
        to, from_ = q.get("To"), q.get("From")
        exact, before, after = (_parse_when(q.get(k)) for k in ("DateSent", "DateSent<", "DateSent>"))
        items = []
        with self._cond:
            for m in reversed(self._messages.values()):  # Twilio lists newest first
                if (to and m.to != to) or (from_ and m.from_ != from_):
                    continue
                if (exact or before or after) and m.date_sent is None:
                    continue
                if exact and not _same(m.date_sent, exact):
                    continue
                if before and not _on_or_before(m.date_sent, before):
                    continue
                if after and not _on_or_after(m.date_sent, after):
                    continue
                items.append(m.to_json())
        filters = [(k, q[k]) for k in ("To", "From", "DateSent", "DateSent<", "DateSent>") if k in q]
        return self._page(request, "messages", items, filters)

    # ------------------------------------------------------------------ inbound SMS
    async def inbound_sms(self, phone: str, to: str, body: str) -> InboundSms:
        """Deliver an SMS from ``phone`` to our number ``to`` the way Twilio does (see Phone.send)."""
        from .phone import InboundSms

        with self._cond:
            if to not in self._numbers:
                raise ValueError(f"{to} is not a number of the emulated account (numbers: {list(self._numbers)})")
            sms_url = self.sms_url
            service = next((sid for sid, pool in self.messaging_services.items() if to in pool), None)
            msg = Message(sid=new_sid("SM"), account_sid=self.account_sid, to=to, from_=phone, body=body,
                          status="received", direction="inbound", num_segments=segments(body),
                          encoding=encoding_of(body), messaging_service_sid=service, date_sent=now())
            msg.statuses.append("received")
            self._messages[msg.sid] = msg
            keyword = body.strip().upper()
            replies: list[Message] = []
            pool = self.messaging_services.get(service or "", [to])
            if keyword in OPT_OUT_KEYWORDS:
                self._opted_out.add((to, phone))
                auto = ("You have successfully been unsubscribed. You will not receive any more messages "
                        "from this number. Reply START to resubscribe.")
            elif keyword in OPT_IN_KEYWORDS:
                for number in pool:
                    self._opted_out.discard((number, phone))
                self._opted_out.discard((to, phone))
                auto = ("You have successfully been re-subscribed to messages from this number. "
                        "Reply HELP for help. Reply STOP to unsubscribe. Msg&Data Rates May Apply.")
            elif keyword in ("HELP", "INFO"):
                auto = "Reply STOP to unsubscribe. Msg&Data Rates May Apply."
            else:
                auto = None
            if auto and self.opt_out_replies:
                # Twilio's own confirmation goes out even to a number that just opted out
                replies.append(self._new_outbound(phone, to, auto, "outbound-reply", None, None))
            self._cond.notify_all()
        log.info("SMS %s %s -> %s (inbound): %s", msg.sid, phone, to, body)
        if sms_url is None:
            raise RuntimeError("TwilioEmulator.sms_url is not set: nowhere to deliver the inbound SMS "
                               "(set it to the gateway's public /twilio/sms URL)")
        from annunciator.plugins.twilio.sms import country_of

        params = {
            "ToCountry": country_of(to), "ToState": "", "SmsMessageSid": msg.sid, "NumMedia": "0", "ToCity": "",
            "FromZip": "", "SmsSid": msg.sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
            "Body": body, "FromCountry": country_of(phone), "To": to, "ToZip": "", "NumSegments": str(msg.num_segments),
            "MessageSid": msg.sid, "AccountSid": self.account_sid, "From": phone, "ApiVersion": API_VERSION,
        }
        if service:
            params["MessagingServiceSid"] = service
        cb = await self.post_signed("sms", sms_url, params)
        if cb.status is not None and 200 <= cb.status < 300 and cb.body.strip():
            replies += self._twiml_replies(cb.body, phone, to)
        return InboundSms(message=msg, webhook=cb, replies=replies)

    def _twiml_replies(self, text: str, phone: str, number: str) -> list[Message]:
        """Messages for each ``<Message>`` of a TwiML answer, sent as Twilio would (opt-outs apply)."""
        from .twiml import TwimlError, message_verbs

        try:
            verbs = message_verbs(text)
        except TwimlError as exc:
            log.warning("SMS webhook answered something that is not TwiML (Twilio error 12100): %s", exc)
            return []
        out = []
        with self._cond:
            for body, to_attr, from_attr in verbs:
                to = normalize_number(to_attr) if to_attr else phone
                sender = normalize_number(from_attr) if from_attr else number
                if to is None or sender not in self._numbers:
                    log.warning("TwiML <Message to=%r from=%r> refused", to_attr, from_attr)
                    continue
                if (sender, to) in self._opted_out:
                    # Twilio refuses the reply (error 21610); keep it visible, never on the handset
                    msg = Message(sid=new_sid("SM"), account_sid=self.account_sid, to=to, from_=sender, body=body,
                                  status="failed", direction="outbound-reply", num_segments=segments(body),
                                  encoding=encoding_of(body), error_code=21610,
                                  error_message="Attempt to send to unsubscribed recipient", reaches_handset=False)
                    msg.statuses.append("failed")
                    self._messages[msg.sid] = msg
                    out.append(msg)
                    continue
                out.append(self._new_outbound(to, sender, body, "outbound-reply", None, None))
            self._cond.notify_all()
        return out

    # ------------------------------------------------------------------ Calls
    async def _create_call(self, request: web.Request) -> web.Response:
        from .calls import Call

        to_raw, from_raw = self._one(request, "To"), self._one(request, "From")
        url, twiml = self._one(request, "Url"), self._one(request, "Twiml")
        if not to_raw:
            raise TwilioApiError(400, 21201)
        if not from_raw:
            raise TwilioApiError(400, 21213)
        if not url and not twiml and not self._one(request, "ApplicationSid"):
            raise TwilioApiError(400, 21205)
        to = normalize_number(to_raw, strict=self.strict_numbers)
        if to is None:
            raise TwilioApiError(400, 21211, f"Invalid 'To' Phone Number: {to_raw}")
        sender = normalize_number(from_raw)
        with self._cond:
            if sender not in self._numbers:
                raise TwilioApiError(400, 21210, f"The source phone number provided, {from_raw}, is not yet verified "
                                                 "for your account.")
            events = [e for v in request[_FORM].get("StatusCallbackEvent", []) for e in v.split()]
            timeout_raw = self._one(request, "Timeout")
            call = Call(
                self, sid=new_sid("CA"), to=to, from_=sender, url=url, twiml=twiml,
                method=self._one(request, "Method") or "POST",
                fallback_url=self._one(request, "FallbackUrl"),
                fallback_method=self._one(request, "FallbackMethod") or "POST",
                status_callback=self._one(request, "StatusCallback"),
                status_callback_events=events or ["completed"],
                status_callback_method=self._one(request, "StatusCallbackMethod") or "POST",
                machine_detection=self._one(request, "MachineDetection"),
                timeout=int(timeout_raw) if timeout_raw and timeout_raw.isdigit() else 60,
            )
            self._calls[call.sid] = call
            request[_SID] = call.sid
            doc = call.to_json()
            self._cond.notify_all()
        log.info("call %s %s -> %s", call.sid, sender, to)
        self._spawn(call.run())
        return web.json_response(doc, status=201)

    async def _fetch_call(self, request: web.Request) -> web.Response:
        with self._cond:
            call = self._calls.get(request.match_info["sid"])
            if call is None:
                raise TwilioApiError(404, 20404, f"The requested resource {request.path} was not found")
            request[_SID] = call.sid
            return web.json_response(call.to_json())

    async def _update_call(self, request: web.Request) -> web.Response:
        with self._cond:
            call = self._calls.get(request.match_info["sid"])
            if call is None:
                raise TwilioApiError(404, 20404, f"The requested resource {request.path} was not found")
            request[_SID] = call.sid
        status = self._one(request, "Status")
        url, twiml = self._one(request, "Url"), self._one(request, "Twiml")
        if status in ("completed", "canceled"):
            call.command(("end", status))
        elif url:
            call.command(("fetch", url, self._one(request, "Method") or "POST", {}))
        elif twiml:
            call.command(("twiml", twiml))
        elif status is not None:
            raise TwilioApiError(400, 21220, "Invalid call state")
        with self._cond:
            return web.json_response(call.to_json())

    async def _list_calls(self, request: web.Request) -> web.Response:
        q = request.query
        with self._cond:
            items = [c.to_json() for c in reversed(self._calls.values())
                     if (not q.get("To") or c.to == q["To"]) and (not q.get("From") or c.from_ == q["From"])
                     and (not q.get("Status") or c.status == q["Status"])]
        filters = [(k, q[k]) for k in ("To", "From", "Status") if k in q]
        return self._page(request, "calls", items, filters)

    # ------------------------------------------------------------------ IncomingPhoneNumbers
    async def _list_numbers(self, request: web.Request) -> web.Response:
        import phonenumbers

        wanted = request.query.get("PhoneNumber")
        created = rfc2822(datetime(2024, 1, 1, tzinfo=UTC))
        items = []
        with self._cond:
            for number, sid in self._numbers.items():
                if wanted and wanted not in number:
                    continue
                friendly = phonenumbers.format_number(phonenumbers.parse(number, None),
                                                      phonenumbers.PhoneNumberFormat.NATIONAL)
                items.append({
                    "account_sid": self.account_sid, "address_sid": None, "address_requirements": "none",
                    "api_version": API_VERSION, "beta": False,
                    "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
                    "date_created": created, "date_updated": created, "friendly_name": friendly,
                    "identity_sid": None, "phone_number": number, "origin": "twilio", "sid": sid,
                    "sms_application_sid": None, "sms_fallback_method": "POST", "sms_fallback_url": None,
                    "sms_method": "POST", "sms_url": self.sms_url, "status_callback": None,
                    "status_callback_method": "POST", "trunk_sid": None,
                    "uri": f"{_PREFIX}/{self.account_sid}/IncomingPhoneNumbers/{sid}.json",
                    "voice_receive_mode": "voice", "voice_application_sid": None, "voice_caller_id_lookup": False,
                    "voice_fallback_method": "POST", "voice_fallback_url": None, "voice_method": "POST",
                    "voice_url": None, "emergency_status": "Inactive", "emergency_address_sid": None,
                    "emergency_address_status": "unregistered", "bundle_sid": None, "status": "in-use",
                    "type": "local",
                })
        filters = [(k, request.query[k]) for k in ("PhoneNumber",) if k in request.query]
        return self._page(request, "incoming_phone_numbers", items, filters)


# ---------------------------------------------------------------------- helpers
if TYPE_CHECKING:
    from .phone import InboundSms


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _parse_when(value: str | None) -> datetime | date | None:
    """``YYYY-MM-DD`` or an ISO 8601 date-time, as the DateSent filters accept."""
    if not value:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TwilioApiError(400, 20001, f"Invalid DateSent filter: {value}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _same(sent: datetime | None, when: datetime | date) -> bool:
    assert sent is not None
    return sent.date() == (when.date() if isinstance(when, datetime) else when)


def _on_or_before(sent: datetime | None, when: datetime | date) -> bool:
    assert sent is not None
    return sent <= when if isinstance(when, datetime) else sent.date() <= when


def _on_or_after(sent: datetime | None, when: datetime | date) -> bool:
    assert sent is not None
    return sent >= when if isinstance(when, datetime) else sent.date() >= when
