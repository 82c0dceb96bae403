#!/usr/bin/env python3
"""Twilio SMS webhooks and sends: signed inbound acknowledgements, and outbound notifications.

Why: on-call people acknowledge alarms by replying with their PIN, so an inbound SMS webhook is on
the critical path of every acknowledged alarm, and a plant upset makes the gateway send many SMS at
once. Each figure is printed next to a reference measured in the same run, because these shared
2-core machines are noisy and absolute figures drift between runs.

Phases (one gateway, ``annunciator run -c CONFIG`` as a child process on SQLite; the Twilio
emulator in this process; everything on 127.0.0.1):

  1. outbound reference: a plain sequential loop of the official ``twilio`` client's
     ``messages.create`` against the emulator (with a ``StatusCallback`` to the reference app, so
     the emulator does the same work per message as for the gateway).
  2. outbound gateway: N alarms raised over ``POST /api/alarms`` in batches, one ``twilio-sms``
     Notification block per on-call person, ``rate_limit: 0``; notifications per second are
     counted at the emulator (its recorded messages). These alarms are the ones acknowledged next.
  3. inbound, closed loop: signed ``POST /twilio/sms`` webhooks, form-encoded as Twilio sends them,
     ``ACK <code> <PIN>`` from the person's phone: signature check, parse, PIN check, acknowledge,
     store commit, TwiML answer, one alarm per request. Reference: a bare Starlette app under
     uvicorn (another child process) answering a constant TwiML string to the same requests,
     same client, same concurrency.
  4. inbound, open loop at ``--rate`` requests/s for ``--seconds``: latency p50/p99 for the
     reference and the gateway (measured from each request's scheduled send time).

The HTTP client of phases 3-4 is a minimal keep-alive HTTP/1.1 client over asyncio streams with
pre-built requests (signatures computed before timing), so the harness costs little next to
either server. Run::

    python bench/webhooks.py                        # defaults finish in about a minute
    python bench/webhooks.py --acks 3000 --rate 200 --seconds 10 --json /tmp/webhooks.json
    python bench/webhooks.py --py-spy /tmp/wh        # profile the gateway: /tmp/wh-{outbound,inbound}.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

T = TypeVar("T")

INBOUND_RATIO_TARGET = 0.5
STEADY_P99_TARGET_MS = 20.0
OUTBOUND_RATIO_TARGET = 2.0
PIN = "1234"
OUR_NUMBERS = ["+15005550006", "+15005550007"]
MESSAGE = "{priority} {displayPath}: {name}"
# What the reference endpoint answers: the shape of the gateway's own acknowledgement reply.
REFERENCE_TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Message>Acknowledged #12 '
                   "Plant/Area 3/Tag 12.</Message></Response>")


# --------------------------------------------------------------------------- utilities
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all threads) from /proc; None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of a server process and of this process (harness + emulator thread) over a phase."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.server0 = cpu_seconds(pid) if pid else None
        self.self0 = time.process_time()
        self.wall0 = time.monotonic()

    def done(self) -> dict[str, float | None]:
        wall = time.monotonic() - self.wall0
        server = None
        if self.pid and self.server0 is not None:
            after = cpu_seconds(self.pid)
            server = None if after is None else after - self.server0
        harness = time.process_time() - self.self0
        return {"wall_s": round(wall, 3),
                "server_cpu_s": None if server is None else round(server, 3),
                "server_cpu_pct": None if server is None or not wall else round(100 * server / wall),
                "harness_cpu_s": round(harness, 3),
                "harness_cpu_pct": round(100 * harness / wall) if wall else None}


def run_async(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, logfile: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{logfile.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:g}s:\n{logfile.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --------------------------------------------------------------------------- reference server
def serve_reference(port: int) -> None:
    """The bare endpoint: Starlette under uvicorn with the gateway's uvicorn settings, answering
    a constant TwiML string without looking at the request (run as a child process)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def sms(request: Request) -> Response:
        return Response(REFERENCE_TWIML, media_type="text/xml")

    async def status(request: Request) -> Response:  # StatusCallback target of the outbound reference
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[Route("/twilio/sms", sms, methods=["POST"]),
                            Route("/twilio/sms/status", status, methods=["POST"]),
                            Route("/health", health)])
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                                  access_log=False)).run()


def start_reference(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    logfile = tmp / "reference.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-reference", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 30, logfile)
    except BaseException:
        stop_process(proc)
        raise
    return proc


# --------------------------------------------------------------------------- raw HTTP client
class Conn:
    """One keep-alive HTTP/1.1 connection; requests are pre-built bytes, answers need Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise ValueError("chunked answers are not supported by this client")
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def build_request(host: str, port: int, path: str, body: bytes, signature: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\nUser-Agent: TwilioProxy/1.1\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class LoadResult:
    def __init__(self, name: str):
        self.name = name
        self.sent = 0
        self.ok = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.latency: list[float] = []
        self.lag: list[float] = []  # open loop: how late the harness sent (start - scheduled)
        self.elapsed: float | None = None
        self.cpu: dict[str, float | None] = {}
        self.rate: float | None = None  # open loop: the rate asked for

    def error(self, msg: str) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(msg)

    @property
    def per_s(self) -> float | None:
        return self.ok / self.elapsed if self.elapsed and self.ok else None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sent": self.sent, "ok": self.ok, "per_s": self.per_s and round(self.per_s, 1),
                "rate_asked": self.rate, "elapsed_s": self.elapsed and round(self.elapsed, 3),
                "p50_ms": ms(percentile(self.latency, 50)), "p99_ms": ms(percentile(self.latency, 99)),
                "max_ms": ms(max(self.latency) if self.latency else None),
                "harness_lag_p99_ms": ms(percentile(self.lag, 99)),
                "error_count": self.error_count, "errors": self.errors, **self.cpu}


Check = Callable[[int, bytes], str | None]


def _indices(n: int, duration: float | None) -> Any:
    """0..n-1 once; or cycled over the requests until ``duration`` seconds have passed."""
    if duration is None:
        yield from range(n)
        return
    end = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < end:
        yield i % n
        i += 1


async def closed_loop(name: str, host: str, port: int, reqs: list[bytes], concurrency: int, check: Check,
                      timeout: float, pid: int | None, duration: float | None = None) -> LoadResult:
    """Every request as fast as ``concurrency`` connections allow (with ``duration``: the requests
    cycled for that long, for the reference, whose answers do not depend on the request)."""
    res = LoadResult(name)
    conns = [await Conn.open(host, port) for _ in range(concurrency)]
    it = _indices(len(reqs), duration)
    meter = CpuMeter(pid)
    t0 = time.perf_counter()

    async def worker(conn: Conn) -> None:
        for i in it:
            res.sent += 1
            s = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    status, body = await conn.request(reqs[i])
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                res.error(f"request {i}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = await Conn.open(host, port)
                continue
            res.latency.append(time.perf_counter() - s)
            problem = check(status, body)
            if problem:
                res.error(f"request {i}: {problem}")
            else:
                res.ok += 1

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        res.elapsed = time.perf_counter() - t0
        res.cpu = meter.done()
        for c in conns:
            c.close()
    return res


async def open_loop(name: str, host: str, port: int, reqs: list[bytes], rate: float, check: Check,
                    timeout: float, pid: int | None, max_conns: int = 256) -> LoadResult:
    """Send request i at t0 + i/rate whatever the server is doing (open loop); latency is counted
    from the scheduled time, so a harness or server stall is not hidden."""
    res = LoadResult(name)
    res.rate = rate
    idle = [await Conn.open(host, port) for _ in range(16)]
    slots = asyncio.Semaphore(max_conns)
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    meter = CpuMeter(pid)
    t0 = clock() + 0.05

    async def one(i: int, scheduled: float) -> None:
        async with slots:
            res.lag.append(clock() - scheduled)
            conn = idle.pop() if idle else None
            while conn is not None and conn.reader.at_eof():  # closed by the server's keep-alive timeout
                conn.close()
                conn = idle.pop() if idle else None
            try:
                async with asyncio.timeout(timeout):
                    if conn is None:
                        conn = await Conn.open(host, port)
                    status, body = await conn.request(reqs[i])
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                res.error(f"request {i}: {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                return
            res.latency.append(clock() - scheduled)
            idle.append(conn)
            problem = check(status, body)
            if problem:
                res.error(f"request {i}: {problem}")
            else:
                res.ok += 1

    tasks = []
    for i in range(len(reqs)):
        scheduled = t0 + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        res.sent += 1
        tasks.append(asyncio.create_task(one(i, scheduled)))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 5)
    res.elapsed = clock() - t0
    res.cpu = meter.done()
    for t in tasks:
        if not t.done():
            t.cancel()
            res.error("request still unanswered at the end of the phase")
    for c in idle:
        c.close()
    return res


# --------------------------------------------------------------------------- the gateway
def gateway_config(tmp: Path, port: int, tw: Any, users: int) -> dict[str, Any]:
    from annunciator.testing.gateway import TOKEN

    names = [f"oncall{i:02d}" for i in range(users)]
    return {
        "gateway": {"http": {"host": "127.0.0.1", "port": port}, "database": f"sqlite:///{tmp / 'webhooks.db'}",
                    "api_tokens": [TOKEN], "secret_file": str(tmp / "secret.key"),
                    "external_url": f"http://127.0.0.1:{port}"},
        "twilio": {"accounts": {"main": {"account_sid": tw.account_sid, "auth_token": tw.auth_token,
                                         "api_base": tw.api_base, "numbers": list(tw.numbers), "rate_limit": 0}}},
        "profiles": {"sms": {"type": "twilio-sms"}},
        "users": {n: {"name": f"On-call {i}", "pin": PIN, "contacts": {"sms": phone_of(i)}}
                  for i, n in enumerate(names)},
        "rosters": {f"r{i}": [n] for i, n in enumerate(names)},
        "pipelines": {f"p{i}": {"blocks": [{"type": "notification", "roster": f"r{i}", "profile": "sms",
                                            "message": MESSAGE}]} for i in range(users)},
    }


def phone_of(i: int) -> str:
    return f"+1555{i + 1:07d}"


def outbound_count(tw: Any) -> int:
    return sum(1 for m in tw.messages if m.direction == "outbound-api")


def status_callbacks(tw: Any, prefix: str) -> int:
    return sum(1 for c in tw.callbacks if c.kind == "message-status" and c.url.startswith(prefix))


def outbound_reference(tw: Any, count: int, max_seconds: float, callback_url: str) -> dict[str, Any]:
    """The floor: one ``messages.create`` after the other with the official client."""
    from twilio.base.exceptions import TwilioRestException

    client = tw.client(timeout=10.0)
    before = outbound_count(tw)
    errors: list[str] = []
    meter = CpuMeter(None)
    t0 = time.monotonic()
    sent = 0
    for i in range(count):
        if time.monotonic() - t0 > max_seconds:
            errors.append(f"stopped after {max_seconds:g}s")
            break
        try:
            client.messages.create(to=phone_of(i % 8), from_=tw.numbers[0], status_callback=callback_url,
                                   body=f"High Plant/Area {i % 7}/Tag {i}: Level high [#{i % 997 + 1}]")
            sent += 1
        except (TwilioRestException, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    elapsed = time.monotonic() - t0
    counted = outbound_count(tw) - before
    return {"name": "twilio client loop", "sent": sent, "counted": counted, "elapsed_s": round(elapsed, 3),
            "per_s": round(counted / elapsed, 1) if elapsed and counted else None, "errors": errors[:5],
            "error_count": len(errors), **meter.done()}


async def raise_alarms(url: str, token: str, n: int, users: int, batch: int, concurrency: int,
                       timeout: float) -> tuple[list[dict[str, Any]], list[str], float]:
    """POST n alarms in batches; returns the events (with ackCode), errors, and the raise time."""
    import aiohttp

    events: list[dict[str, Any] | None] = [None] * n
    errors: list[str] = []
    batches = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
    queue = list(reversed(batches))
    t0 = time.monotonic()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def worker() -> None:
            while queue:
                idx = queue.pop()
                body = {"alarms": [{"source": f"plant/area{i % 7}/tag{i}", "displayPath": f"Plant/Area {i % 7}/Tag {i}",
                                    "name": "Level high", "priority": ("Low", "Medium", "High")[i % 3],
                                    "pipelines": {"active": f"p{i % users}"}} for i in idx]}
                try:
                    async with session.post(url + "/api/alarms", json=body) as resp:
                        data = await resp.json(content_type=None)
                        if resp.status not in (200, 201):
                            errors.append(f"HTTP {resp.status}: {str(data)[:300]}")
                            continue
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                for i, ev in zip(idx, data["events"], strict=False):
                    events[i] = ev

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [e for e in events if e is not None], errors, time.monotonic() - t0


def outbound_gateway(tw: Any, gw: Any, args: argparse.Namespace, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from annunciator.testing.gateway import TOKEN

    before = outbound_count(tw)
    meter = CpuMeter(gw.proc.pid)
    t0 = time.monotonic()
    events, errors, raise_s = run_async(
        raise_alarms(gw.url, TOKEN, n, args.users, args.batch, args.api_concurrency, args.request_timeout),
        args.request_timeout * 4)
    # counted at the emulator: every notification is one Messages.create it answered
    deadline = t0 + args.drain_timeout
    last, last_change, done_at = -1, time.monotonic(), None
    notes = []
    while True:
        counted = outbound_count(tw) - before
        now = time.monotonic()
        if counted != last:
            last, last_change = counted, now
        if counted >= len(events):
            done_at = now
            break
        if now > deadline or now - last_change > args.stall_timeout:
            notes.append(f"drain stopped: {counted}/{len(events)} messages at the emulator")
            break
        time.sleep(0.02)
    elapsed = (done_at or time.monotonic()) - t0
    cpu = meter.done()
    # let the status callbacks (sent, delivered: two per message) finish before the inbound phases
    prefix = gw.url
    settle_deadline = time.monotonic() + args.drain_timeout
    seen, last_change = -1, time.monotonic()
    while time.monotonic() < settle_deadline:
        n_cb = status_callbacks(tw, prefix)
        if n_cb >= 2 * last:
            break
        if n_cb != seen:
            seen, last_change = n_cb, time.monotonic()
        elif time.monotonic() - last_change > args.stall_timeout:
            notes.append(f"status callbacks stalled at {n_cb}/{2 * last}")
            break
        time.sleep(0.05)
    settled = time.monotonic() - t0
    failed_cb = sum(1 for c in tw.callbacks if c.url.startswith(prefix) and (c.error or (c.status or 0) >= 400))
    if failed_cb:
        notes.append(f"{failed_cb} status callback(s) to the gateway failed")
    time.sleep(0.5)
    return ({"name": "gateway twilio-sms", "alarms": n, "raised": len(events), "counted": last,
             "raise_s": round(raise_s, 3), "elapsed_s": round(elapsed, 3),
             "per_s": round(last / elapsed, 1) if elapsed and last else None,
             "callbacks_settled_s": round(settled, 3), "errors": errors[:5], "error_count": len(errors),
             "notes": notes, **cpu}, events)


# --------------------------------------------------------------------------- inbound requests
def inbound_requests(events: list[dict[str, Any]], users: int, tw: Any, public_url: str) -> list[tuple[bytes, str]]:
    """(form body, signature) per event: ``ACK <code> <PIN>`` from the phone of the person notified,
    with the fields and order Twilio uses, signed over the gateway's public URL."""
    from twilio.request_validator import RequestValidator

    from annunciator.testing.twilio.records import API_VERSION, new_sid

    validator = RequestValidator(tw.auth_token)
    out = []
    for ev in events:
        i = int(ev["source"].rsplit("tag", 1)[1])
        sid = new_sid("SM")
        body = f"ACK {ev['ackCode']} {PIN}"
        params = {"ToCountry": "US", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
                  "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
                  "Body": body, "FromCountry": "US", "To": tw.numbers[0], "ToZip": "", "NumSegments": "1",
                  "MessageSid": sid, "AccountSid": tw.account_sid, "From": phone_of(i % users),
                  "ApiVersion": API_VERSION}
        out.append((urlencode(params).encode(), validator.compute_signature(public_url, params)))
    return out


def check_ack(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    if b"Acknowledged" not in body:
        return f"not acknowledged: {body[:200]!r}"
    return None


def check_ref(status: int, body: bytes) -> str | None:
    return None if status == 200 and b"<Response>" in body else f"HTTP {status}: {body[:200]!r}"


# --------------------------------------------------------------------------- py-spy
def start_py_spy(out: str | None, pid: int) -> subprocess.Popen[bytes] | None:
    if not out:
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        log("--py-spy given but py-spy is not installed (pip install py-spy); not profiling")
        return None
    fmt = {".json": "speedscope", ".svg": "flamegraph"}.get(Path(out).suffix, "raw")
    log(f"profiling gateway pid {pid} -> {out}")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "-o", out, "--format", fmt, "--rate", "250",
                             "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from annunciator.testing.gateway import TOKEN, GatewayProcess, free_port, write_config
    from annunciator.testing.twilio import TwilioEmulator

    steady_n = math.ceil(args.rate * args.seconds)
    warmup = 2 * args.concurrency
    n_alarms = warmup + args.acks + steady_n
    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    gw_port, ref_port = free_port(), free_port()
    gw_base = f"http://127.0.0.1:{gw_port}"
    ref_proc = gw = None
    spy: subprocess.Popen[bytes] | None = None
    summary: dict[str, Any] = {"setup": {"alarms": n_alarms, "users": args.users, "acks": args.acks,
                                         "warmup": warmup, "concurrency": args.concurrency, "rate": args.rate,
                                         "seconds": args.seconds, "ref_sends": args.ref_sends,
                                         "cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    tw = TwilioEmulator(numbers=OUR_NUMBERS, sms_url=f"{gw_base}/twilio/sms", step_delay=args.step_delay)
    try:
        tw.start()
        ref_proc = start_reference(tmp, ref_port)
        gw = GatewayProcess(write_config(tmp / "webhooks.yaml", gateway_config(tmp, gw_port, tw, args.users)))
        gw.start(timeout=args.startup_timeout)
        log(f"gateway {gw.url} (pid {gw.proc.pid}), reference 127.0.0.1:{ref_port} (pid {ref_proc.pid}), "
            f"emulator {tw.api_base}")

        # -- outbound
        # the reference loop runs before and after the gateway phase (the machine's load drifts);
        # the ratio is against the mean of the two
        callback = f"http://127.0.0.1:{ref_port}/twilio/sms/status"
        log(f"outbound reference: {args.ref_sends} sequential messages.create")
        ref_before = outbound_reference(tw, args.ref_sends, args.ref_max_seconds, callback)
        log(f"outbound gateway: {n_alarms} alarms in batches of {args.batch}")
        spy = start_py_spy(args.py_spy and f"{args.py_spy}-outbound.txt", gw.proc.pid)
        gw_out, events = outbound_gateway(tw, gw, args, n_alarms)
        stop_py_spy(spy)
        spy = None
        log(f"outbound reference again: {args.ref_sends} sequential messages.create")
        ref_after = outbound_reference(tw, args.ref_sends, args.ref_max_seconds, callback)
        rates = [r["per_s"] for r in (ref_before, ref_after) if r["per_s"]]
        ref_out = {"name": "twilio client loop", "runs": [ref_before, ref_after],
                   "counted": ref_before["counted"] + ref_after["counted"],
                   "per_s": round(sum(rates) / len(rates), 1) if rates else None,
                   "harness_cpu_pct": max(r["harness_cpu_pct"] or 0 for r in (ref_before, ref_after)),
                   "errors": ref_before["errors"] + ref_after["errors"],
                   "error_count": ref_before["error_count"] + ref_after["error_count"]}
        summary["outbound"] = {"reference": ref_out, "gateway": gw_out}
        if ref_out["per_s"] and gw_out["per_s"]:
            summary["outbound"]["ratio"] = round(gw_out["per_s"] / ref_out["per_s"], 3)

        # -- inbound
        if len(events) < n_alarms:
            raise RuntimeError(f"only {len(events)}/{n_alarms} alarms were raised: {gw_out['errors']}")
        signed = inbound_requests(events, args.users, tw, f"{gw_base}/twilio/sms")
        gw_reqs = [build_request("127.0.0.1", gw_port, "/twilio/sms", b, s) for b, s in signed]
        ref_reqs = [build_request("127.0.0.1", ref_port, "/twilio/sms", b, s) for b, s in signed]
        w, k = warmup, warmup + args.acks
        ref_pid, gw_pid = ref_proc.pid, gw.proc.pid
        t = args.request_timeout
        budget = args.request_timeout * 4 + args.acks / 50 + args.seconds

        log(f"inbound closed loop: {args.acks} requests, concurrency {args.concurrency}")
        warm = run_async(closed_loop("warmup", "127.0.0.1", gw_port, gw_reqs[:w], args.concurrency, check_ack, t,
                                     None), budget)
        spy = start_py_spy(args.py_spy and f"{args.py_spy}-inbound.txt", gw_pid)
        gw_closed = run_async(closed_loop("gateway ACK", "127.0.0.1", gw_port, gw_reqs[w:k], args.concurrency,
                                          check_ack, t, gw_pid), budget)
        stop_py_spy(spy)
        spy = None
        # the reference answers in well under a second what the gateway takes seconds for: it runs
        # the same requests, cycled, for as long as the gateway did (at least 3 s) for a stable rate
        run_async(closed_loop("warmup", "127.0.0.1", ref_port, ref_reqs[:w], args.concurrency, check_ref, t, None),
                  budget)
        ref_closed = run_async(closed_loop("reference Starlette", "127.0.0.1", ref_port, ref_reqs[w:k],
                                           args.concurrency, check_ref, t, ref_pid,
                                           duration=max(3.0, gw_closed.elapsed or 0.0)), budget)

        log(f"inbound open loop: {args.rate:g}/s for {args.seconds:g}s each")
        ref_steady = run_async(open_loop("reference Starlette", "127.0.0.1", ref_port, ref_reqs[k:], args.rate,
                                         check_ref, t, ref_pid), budget)
        gw_steady = run_async(open_loop("gateway ACK", "127.0.0.1", gw_port, gw_reqs[k:], args.rate, check_ack, t,
                                        gw_pid), budget)

        # the gateway's own records agree: a sample of the alarms is acknowledged by the right person
        sample = random.Random(7).sample(events[w:], min(25, len(events) - w))
        wrong = []
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as api:
            for ev in sample:
                r = api.get(f"/api/alarms/{ev['id']}")
                body = r.json() if r.status_code == 200 else {}
                who = f"oncall{int(ev['source'].rsplit('tag', 1)[1]) % args.users:02d}"
                if not body.get("acknowledged") or body.get("ackUser") != who:
                    wrong.append(f"{ev['id']}: HTTP {r.status_code} {str(body)[:160]}")
        summary["inbound"] = {"closed": {"reference": ref_closed.as_dict(), "gateway": gw_closed.as_dict(),
                                         "warmup_errors": warm.errors},
                              "steady": {"reference": ref_steady.as_dict(), "gateway": gw_steady.as_dict()},
                              "verified": len(sample) - len(wrong), "verify_errors": wrong[:5]}
        if ref_closed.per_s and gw_closed.per_s:
            summary["inbound"]["ratio"] = round(gw_closed.per_s / ref_closed.per_s, 3)
        gw_log = gw.log.read_text(errors="replace").splitlines() if gw.log.exists() else []
        problems = [ln for ln in gw_log if " ERROR " in ln or "Traceback" in ln]
        summary["gateway_log_errors"] = problems[:5]
    finally:
        stop_py_spy(spy)
        if gw is not None:
            gw.stop()
        stop_process(ref_proc)
        tw.stop()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def report(s: dict[str, Any]) -> None:
    out, inb = s["outbound"], s["inbound"]
    ro, go = out["reference"], out["gateway"]
    print("\noutbound SMS (counted at the emulator)")
    print(f"  twilio client loop    {ro['counted']:>6} msgs  {fmt(ro['per_s'], 0):>6}/s   (before/after the gateway: "
          f"{' / '.join(fmt(r['per_s'], 0) for r in ro['runs'])}) harness+emulator CPU up to {ro['harness_cpu_pct']}%")
    print(f"  gateway twilio-sms    {go['counted']:>6} msgs  {fmt(go['per_s'], 0):>6}/s   "
          f"(raised in {go['raise_s']:.1f}s, all sent at {go['elapsed_s']:.1f}s, callbacks settled at "
          f"{go['callbacks_settled_s']:.1f}s) gateway CPU {go['server_cpu_pct']}%, "
          f"harness+emulator CPU {go['harness_cpu_pct']}%")
    ratio = out.get("ratio")
    print(f"  ratio gateway/loop: {fmt(ratio, 2)} (target >= {OUTBOUND_RATIO_TARGET:g}) -> "
          f"{'MET' if ratio and ratio >= OUTBOUND_RATIO_TARGET else 'MISSED'}")
    print("\ninbound signed webhooks, closed loop")
    for r in (inb["closed"]["reference"], inb["closed"]["gateway"]):
        print(f"  {r['name']:<20} {r['ok']:>6}/{r['sent']:<6} {fmt(r['per_s'], 0):>6} req/s  p50 {fmt(r['p50_ms'])} "
              f"p99 {fmt(r['p99_ms'])} ms  server CPU {r['server_cpu_pct']}%  harness CPU {r['harness_cpu_pct']}%"
              f"  errors {r['error_count']}")
    ratio = inb.get("ratio")
    print(f"  ratio gateway/reference: {fmt(ratio, 2)} (target >= {INBOUND_RATIO_TARGET:g}) -> "
          f"{'MET' if ratio and ratio >= INBOUND_RATIO_TARGET else 'MISSED'}")
    print(f"\ninbound signed webhooks, open loop at {s['setup']['rate']:g}/s")
    for r in (inb["steady"]["reference"], inb["steady"]["gateway"]):
        print(f"  {r['name']:<20} {r['ok']:>6}/{r['sent']:<6} p50 {fmt(r['p50_ms'])}  p99 {fmt(r['p99_ms'])}  "
              f"max {fmt(r['max_ms'])} ms  server CPU {r['server_cpu_pct']}%  harness lag p99 "
              f"{fmt(r['harness_lag_p99_ms'])} ms  errors {r['error_count']}")
    g = inb["steady"]["gateway"]
    ok = g["p99_ms"] is not None and g["p99_ms"] <= STEADY_P99_TARGET_MS and g["ok"] == g["sent"]
    print(f"  gateway p99 {fmt(g['p99_ms'])} ms vs target {STEADY_P99_TARGET_MS:g} ms -> {'MET' if ok else 'MISSED'}")
    notes = [*go.get("notes", []), *(f"outbound error: {e}" for e in go["errors"] + ro["errors"])]
    for phase in ("closed", "steady"):
        for side in ("reference", "gateway"):
            notes += [f"{phase} {side}: {e}" for e in inb[phase][side]["errors"]]
    notes += [f"warmup: {e}" for e in inb["closed"]["warmup_errors"]]
    notes += [f"verify: {e}" for e in inb["verify_errors"]]
    notes += [f"gateway log: {e}" for e in s.get("gateway_log_errors", [])]
    print(f"\n  {inb['verified']} sampled alarms verified acknowledged over the API")
    for n in notes:
        print(f"  note: {n}")
    st = s["setup"]
    print(f"\nsetup: alarms={st['alarms']} users={st['users']} concurrency={st['concurrency']} "
          f"cpus={st['cpus']} python={st['python']}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--acks", type=int, default=1500, help="inbound acknowledgements in the closed-loop phase")
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    p.add_argument("--seconds", type=float, default=8.0, help="open-loop duration (each of reference, gateway)")
    p.add_argument("--concurrency", type=int, default=16, help="connections in the closed-loop phase")
    p.add_argument("--users", type=int, default=8, help="on-call people (one pipeline and phone each)")
    p.add_argument("--ref-sends", type=int, default=400, help="messages.create calls in the outbound reference")
    p.add_argument("--ref-max-seconds", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=50, help="alarms per POST /api/alarms")
    p.add_argument("--api-concurrency", type=int, default=16, help="concurrent alarm POSTs")
    p.add_argument("--step-delay", type=float, default=0.01, help="emulator: seconds between message statuses")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--request-timeout", type=float, default=15.0)
    p.add_argument("--drain-timeout", type=float, default=60.0, help="max wait for all SMS at the emulator")
    p.add_argument("--stall-timeout", type=float, default=10.0, help="give up after this long without progress")
    p.add_argument("--timeout", type=float, default=600.0, help="global limit for the run")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (config, gateway log)")
    p.add_argument("--py-spy", metavar="PREFIX", help="profile the gateway: PREFIX-outbound.txt, PREFIX-inbound.txt")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="JSON to PATH (stdout without PATH)")
    p.add_argument("--serve-reference", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.acks, args.concurrency, args.users, args.batch, args.api_concurrency, args.ref_sends) < 1:
        p.error("counts must be >= 1")
    if args.rate <= 0 or args.seconds <= 0:
        p.error("--rate and --seconds must be > 0")
    if args.acks + args.rate * args.seconds > 100_000:
        p.error("refusing more than 100000 alarms (bounded benchmark)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_reference:
        serve_reference(args.serve_reference)
        return 0
    # bound the whole run: SIGALRM raises in the main thread, and the finally blocks stop the children
    def on_alarm(*_: Any) -> None:
        raise TimeoutError(f"global timeout of {args.timeout:g}s reached")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout))
    try:
        summary = run(args)
    finally:
        signal.alarm(0)
    if args.json == "-":
        print(json.dumps(summary, indent=2))
    else:
        report(summary)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
    phases = [summary["outbound"]["gateway"], summary["outbound"]["reference"],
              *summary["inbound"]["closed"].values(), *summary["inbound"]["steady"].values()]
    failed = any(isinstance(p, dict) and p.get("error_count") for p in phases) or summary["inbound"]["verify_errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
