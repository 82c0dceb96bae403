#!/usr/bin/env python3
"""End-to-end notification throughput: annunciator against Prometheus Alertmanager.

Why this exists: "how many notifications per second can the gateway push out, and how
long from an alarm arriving to its webhook firing" is the number users compare against
Alertmanager. Both systems are driven the same way (HTTP batches of 50 from a pool of
concurrent clients, one alarm = one webhook POST) into the same real HTTP receiver, so
the figures are comparable on the same machine.

Phases:
  1. Alertmanager (Debian ``prometheus-alertmanager``) burst: N alerts, distinct
     ``alertname`` each, ``group_by: [alertname]``, ``group_wait: 0s``.
  (harness floor: the steady-rate loop below posting straight to the receiver, to show
     how much of a p99 is this process itself; --no-calibrate skips it)
  2. annunciator burst: the same N alarms through ``POST /api/alarms`` and a webhook
     notification pipeline.
  3. annunciator steady rate: ``--rate`` alarms/s for ``--seconds``, one alarm per request,
     open loop (the sender never waits for the gateway before sending the next alarm), and
     time-to-notify p50/p99 against the 50 ms target.

Everything listens on 127.0.0.1 only, every wait is bounded, and child processes are
stopped in ``finally`` blocks. Run::

    python bench/pipeline_throughput.py --alarms 5000 --rate 200 --seconds 10
    python bench/pipeline_throughput.py --skip-annunciator      # Alertmanager only
    python bench/pipeline_throughput.py --skip-alertmanager     # gateway only
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from annunciator.testing.receiver import WebhookReceiver  # noqa: E402

ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"
STEADY_TARGET_P99_MS = 50.0
BATCH = 50
API_TOKEN = "bench-token"


# --------------------------------------------------------------------------- utilities
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join("    " + line for line in text[-lines:])


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (Linux); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_delta(before: float | None, pid: int) -> float | None:
    after = cpu_seconds(pid)
    return None if before is None or after is None else after - before


def chunks(seq: list[Any], n: int) -> list[list[Any]]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def stop_process(proc: subprocess.Popen[bytes], name: str, timeout: float = 15.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: a benchmark must never leave servers behind."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} did not exit {timeout:g}s after SIGTERM; killing it")
        proc.kill()
        return proc.wait(5)


@dataclass
class PhaseResult:
    name: str
    sent: int = 0
    accepted: int = 0
    accept_elapsed: float | None = None  # first POST start -> last POST completion
    delivered: int = 0  # distinct keys that reached the receiver
    deliver_elapsed: float | None = None  # first POST start -> last first-arrival
    ttn: list[float] = field(default_factory=list)  # per key, seconds
    # (send time relative to the phase start, time-to-notify): shows whether latency drifts
    # over a run, e.g. when per-alarm cost grows with the number of open alarms.
    timeline: list[tuple[float, float]] = field(default_factory=list)
    api_latency: list[float] = field(default_factory=list)  # per request, seconds
    duplicates: int = 0
    strays: int = 0  # receiver requests that matched no key of this phase
    errors: list[str] = field(default_factory=list)
    # CPU seconds the server process (all its threads) spent from the first POST to the end
    # of draining: tells a CPU-bound server (≈ wall time x cores) from one that waits.
    server_cpu_s: float | None = None
    # The same for this process (sender + receiver): if it nears one core, the harness and
    # not the server limits the figures.
    harness_cpu_s: float | None = None
    error_count: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def accepted_per_s(self) -> float | None:
        if not self.accept_elapsed or not self.accepted:
            return None
        return self.accepted / self.accept_elapsed

    @property
    def delivered_per_s(self) -> float | None:
        if not self.deliver_elapsed or not self.delivered:
            return None
        return self.delivered / self.deliver_elapsed

    def slices(self, n: int = 5) -> list[dict[str, Any]]:
        """p50/p99 time-to-notify for ``n`` consecutive slices of the send timeline."""
        if len(self.timeline) < n * 10:
            return []
        end = self.timeline[-1][0] or 1e-9
        out = []
        for i in range(n):
            lo, hi = end * i / n, end * (i + 1) / n
            ttn = [d for t, d in self.timeline if lo <= t < hi or (i == n - 1 and t == end)]
            out.append(
                {
                    "from_s": round(lo, 2),
                    "to_s": round(hi, 2),
                    "count": len(ttn),
                    "p50_ms": _ms(percentile(ttn, 50)),
                    "p99_ms": _ms(percentile(ttn, 99)),
                }
            )
        return out

    def error(self, msg: str) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(msg)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "skipped": self.skipped,
            "sent": self.sent,
            "accepted": self.accepted,
            "accepted_per_s": self.accepted_per_s,
            "delivered": self.delivered,
            "delivered_per_s": self.delivered_per_s,
            "ttn_p50_ms": _ms(percentile(self.ttn, 50)),
            "ttn_p99_ms": _ms(percentile(self.ttn, 99)),
            "ttn_max_ms": _ms(max(self.ttn) if self.ttn else None),
            "ttn_by_slice": self.slices(),
            "api_p50_ms": _ms(percentile(self.api_latency, 50)),
            "api_p99_ms": _ms(percentile(self.api_latency, 99)),
            "server_cpu_s": self.server_cpu_s,
            "harness_cpu_s": self.harness_cpu_s,
            "duplicates": self.duplicates,
            "strays": self.strays,
            "error_count": self.error_count,
            "errors": self.errors,
            "notes": self.notes,
        }


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


# --------------------------------------------------------------------------- core loops
async def post_batches(
    session: aiohttp.ClientSession,
    url: str,
    batches: list[tuple[list[str], Any]],
    *,
    headers: dict[str, str],
    ok_status: Iterable[int],
    concurrency: int,
    send_times: dict[str, float],
    result: PhaseResult,
    check: Callable[[Any, list[str]], str | None] | None = None,
) -> tuple[float, float]:
    """POST every batch as fast as ``concurrency`` workers allow; return (first start, last end).

    ``send_times[key]`` is stamped just before each batch's POST, which is what
    time-to-notify is measured from.
    """
    ok = set(ok_status)
    queue: asyncio.Queue[tuple[list[str], Any]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    first_start: list[float] = []
    last_end = 0.0

    async def worker() -> None:
        nonlocal last_end
        while True:
            try:
                keys, payload = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.monotonic()
            if not first_start:
                first_start.append(t0)
            for k in keys:
                send_times[k] = t0
            result.sent += len(keys)
            try:
                async with session.post(url, json=payload, headers=headers) as resp:
                    body = await resp.read()
                    t1 = time.monotonic()
                    result.api_latency.append(t1 - t0)
                    if resp.status not in ok:
                        result.error(f"HTTP {resp.status}: {body[:300]!r}")
                        continue
                    if check is not None:
                        problem = check(json.loads(body) if body else None, keys)
                        if problem:
                            result.error(problem)
                            continue
                    result.accepted += len(keys)
                    last_end = max(last_end, t1)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                result.error(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    start = first_start[0] if first_start else time.monotonic()
    return start, max(last_end, start)


async def collect_arrivals(
    rx: WebhookReceiver,
    send_times: dict[str, float],
    extract: Callable[[Any], list[str]],
    result: PhaseResult,
    *,
    expected: int,
    drain_timeout: float,
    stall_timeout: float,
    first_start: float,
) -> None:
    """Wait (bounded) until every sent key reached the receiver, then fill ``result``."""
    first_arrival: dict[str, float] = {}
    seen = 0
    deadline = time.monotonic() + drain_timeout
    last_progress = time.monotonic()
    while True:
        reqs = rx.requests
        n = len(reqs)
        for req in reqs[seen:n]:
            keys = extract(req.json)
            matched = False
            for k in keys:
                if k not in send_times:
                    continue
                matched = True
                if k in first_arrival:
                    result.duplicates += 1
                else:
                    first_arrival[k] = req.received_at
            if not matched:
                result.strays += 1
        if n > seen:
            last_progress = time.monotonic()
        seen = n
        if len(first_arrival) >= expected:
            break
        now = time.monotonic()
        if now > deadline:
            result.notes.append(
                f"drain timeout: {len(first_arrival)}/{expected} delivered after {drain_timeout:g}s"
            )
            break
        if now - last_progress > stall_timeout:
            result.notes.append(
                f"stalled: no webhook for {stall_timeout:g}s, "
                f"{len(first_arrival)}/{expected} delivered"
            )
            break
        await asyncio.sleep(0.02)
    result.delivered = len(first_arrival)
    result.ttn = [t - send_times[k] for k, t in first_arrival.items()]
    result.timeline = sorted(
        (send_times[k] - first_start, t - send_times[k]) for k, t in first_arrival.items()
    )
    if first_arrival:
        result.deliver_elapsed = max(first_arrival.values()) - first_start


# --------------------------------------------------------------------------- Alertmanager
def ensure_alertmanager() -> tuple[str | None, str]:
    if os.access(ALERTMANAGER_BIN, os.X_OK):
        return ALERTMANAGER_BIN, ""
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "prometheus-alertmanager missing and not root with apt-get to install it"
    log("installing prometheus-alertmanager with apt-get (bounded to 15 min)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd, limit in (
            (["apt-get", "update", "-qq"], 300),
            (["apt-get", "install", "-y", "-qq", "prometheus-alertmanager"], 600),
        ):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
            if proc.returncode != 0:
                return None, f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"apt-get failed: {exc}"
    if os.access(ALERTMANAGER_BIN, os.X_OK):
        return ALERTMANAGER_BIN, ""
    return None, f"apt-get install succeeded but {ALERTMANAGER_BIN} is missing"


async def wait_http_ok(
    session: aiohttp.ClientSession,
    url: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    name: str,
    logfile: Path,
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with code {proc.returncode} before {url} answered; log:\n"
                + tail(logfile)
            )
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.1)
    raise RuntimeError(
        f"{name}: {url} not ready after {timeout:g}s ({last}); log:\n{tail(logfile)}"
    )


def am_extract(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    names = [
        a.get("labels", {}).get("alertname") for a in body.get("alerts", []) if isinstance(a, dict)
    ]
    names = [n for n in names if n]
    if not names:
        name = body.get("groupLabels", {}).get("alertname")
        names = [name] if name else []
    return names


async def run_alertmanager(args: argparse.Namespace, rx: WebhookReceiver) -> PhaseResult:
    result = PhaseResult("alertmanager burst")
    binary, why = ensure_alertmanager()
    if binary is None:
        result.skipped = why
        log(f"SKIP alertmanager: {why}")
        return result
    tmp = Path(tempfile.mkdtemp(prefix="bench-am-"))
    port = free_port()
    config = {
        "route": {
            "receiver": "hook",
            "group_by": ["alertname"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "hook",
                "webhook_configs": [{"url": rx.url, "send_resolved": False, "max_alerts": 0}],
            }
        ],
    }
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    logfile = tmp / "alertmanager.log"
    cmd = [
        binary,
        f"--config.file={tmp / 'alertmanager.yml'}",
        f"--storage.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    log(f"starting Alertmanager on 127.0.0.1:{port} ({tmp})")
    with open(logfile, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=args.request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await wait_http_ok(session, f"{base}/-/ready", proc, 30, "alertmanager", logfile)
            rx.clear()
            run = uuid.uuid4().hex[:6]
            starts = dt.datetime.now(dt.UTC).isoformat()
            alerts = [
                {
                    "labels": {"alertname": f"bench_{i}", "job": "bench", "run": run},
                    "annotations": {"summary": f"bench alert {i}"},
                    "startsAt": starts,
                }
                for i in range(args.alarms)
            ]
            batches = [
                ([a["labels"]["alertname"] for a in b], b) for b in chunks(alerts, args.batch)
            ]
            send_times: dict[str, float] = {}
            log(f"alertmanager: posting {args.alarms} alerts in {len(batches)} batches")
            cpu0, me0 = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
            first, last = await post_batches(
                session,
                f"{base}/api/v2/alerts",
                batches,
                headers={},
                ok_status=(200,),
                concurrency=args.concurrency,
                send_times=send_times,
                result=result,
            )
            result.accept_elapsed = last - first
            log(f"alertmanager: {result.accepted} accepted in {last - first:.2f}s; draining")
            await collect_arrivals(
                rx,
                send_times,
                am_extract,
                result,
                expected=result.accepted,
                drain_timeout=args.drain_timeout,
                stall_timeout=args.stall_timeout,
                first_start=first,
            )
            result.server_cpu_s = cpu_delta(cpu0, proc.pid)
            result.harness_cpu_s = cpu_delta(me0, os.getpid())
            log(f"alertmanager: {result.delivered} notifications delivered")
    finally:
        code = stop_process(proc, "alertmanager")
        if code not in (0, None, -signal.SIGTERM):
            result.notes.append(f"alertmanager exit code {code}")
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            result.notes.append(f"kept {tmp}")
    return result


# --------------------------------------------------------------------------- annunciator
def gateway_command(config: Path) -> list[str] | None:
    """How to start the gateway from this checkout, in order of preference."""
    if (REPO_ROOT / "annunciator" / "__main__.py").exists():
        return [sys.executable, "-m", "annunciator", "run", "-c", str(config)]
    script = shutil.which("annunciator")
    if script:
        return [script, "run", "-c", str(config)]
    if (REPO_ROOT / "annunciator" / "cli.py").exists():
        code = "import sys; from annunciator.cli import main; sys.exit(main())"
        return [sys.executable, "-c", code, "run", "-c", str(config)]
    return None


def gateway_config(tmp: Path, port: int, database: str, hook_url: str) -> dict[str, Any]:
    return {
        "gateway": {
            "http": {"host": "127.0.0.1", "port": port},
            "database": database,
            "api_tokens": [API_TOKEN],
            "secret_file": str(tmp / "secret.key"),
        },
        "profiles": {"hook": {"type": "webhook", "url": hook_url}},
        "users": {"bench": {"name": "Bench User"}},
        "rosters": {"bench": ["bench"]},
        "pipelines": {
            "bench": {
                "blocks": [
                    {
                        "type": "notification",
                        "profile": "hook",
                        "roster": "bench",
                        "message": "{displayPath} {eventValue}",
                    }
                ]
            }
        },
    }


def ann_extract(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    events = body.get("events")
    if isinstance(events, list):
        return [e["source"] for e in events if isinstance(e, dict) and "source" in e]
    event = body.get("event")  # tolerate a single-event shape
    if isinstance(event, dict) and "source" in event:
        return [event["source"]]
    return []


def ann_check(body: Any, keys: list[str]) -> str | None:
    """A 201 must echo one stored event per alarm: that is the durability contract."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        return f"201 without an events list: {str(body)[:200]}"
    got = {e.get("source") for e in body["events"] if isinstance(e, dict) and e.get("id")}
    missing = [k for k in keys if k not in got]
    if missing:
        return f"201 but {len(missing)} alarm(s) missing from events, e.g. {missing[:3]}"
    return None


def alarm(source: str, i: int) -> dict[str, Any]:
    return {
        "source": source,
        "name": f"bench alarm {i}",
        "priority": "High",
        "eventValue": i,
        "pipelines": {"active": "bench"},
    }


async def run_steady(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    rx: WebhookReceiver,
    args: argparse.Namespace,
    *,
    name: str,
    seconds: float,
    key_of: Callable[[int], str],
    body_of: Callable[[int, str], Any],
    ok_status: int,
    check: Callable[[Any, list[str]], str | None] | None,
) -> PhaseResult:
    """Open-loop constant rate: request i is due at t0 + i/rate whatever the server does.

    The send time is the moment the POST is issued (== its due time while the sender
    keeps up), so a gateway that slows down shows up as latency instead of being hidden by
    a sender that politely waits (coordinated omission).
    """
    total = int(args.rate * seconds)
    result = PhaseResult(name)
    send_times: dict[str, float] = {}
    max_in_flight = max(64, int(args.rate * 2))
    sem = asyncio.Semaphore(max_in_flight)
    tasks: list[asyncio.Task[None]] = []
    behind = 0.0

    async def one(i: int) -> None:
        key = key_of(i)
        async with sem:
            t0 = time.monotonic()
            send_times[key] = t0
            result.sent += 1
            try:
                async with session.post(url, json=body_of(i, key), headers=headers) as resp:
                    body = await resp.read()
                    result.api_latency.append(time.monotonic() - t0)
                    if resp.status != ok_status:
                        result.error(f"HTTP {resp.status}: {body[:300]!r}")
                        return
                    if check is not None:
                        problem = check(json.loads(body) if body else None, [key])
                        if problem:
                            result.error(problem)
                            return
                    result.accepted += 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                result.error(f"{type(exc).__name__}: {exc}")

    log(f"{name}: {total} requests at {args.rate:g}/s for {seconds:g}s")
    t_start = time.monotonic()
    for i in range(total):
        due = t_start + i / args.rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            behind = max(behind, now - due)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    t_end = time.monotonic()
    result.accept_elapsed = t_end - t_start
    if behind > 0.005:
        result.notes.append(f"sender fell up to {behind * 1000:.0f} ms behind schedule")
    await collect_arrivals(
        rx,
        send_times,
        ann_extract,
        result,
        expected=result.accepted,
        drain_timeout=args.drain_timeout,
        stall_timeout=args.stall_timeout,
        first_start=t_start,
    )
    return result


async def run_calibration(args: argparse.Namespace, rx: WebhookReceiver) -> PhaseResult:
    """The harness floor: the steady-rate loop posting straight to the receiver.

    Sender and receiver share this process (and the GIL) and the machine's cores with the
    server under test; this row shows how much of a steady-phase p99 is the harness itself.
    """
    seconds = min(args.seconds, 5.0)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        rx.clear()
        result = await run_steady(
            session,
            f"{rx.base_url}/calibrate",
            {},
            rx,
            args,
            name=f"harness floor {args.rate:g}/s",
            seconds=seconds,
            key_of=lambda i: f"calibrate/{i}",
            body_of=lambda i, key: {"events": [{"source": key}], "message": "calibration"},
            ok_status=200,
            check=None,
        )
    rx.clear()
    return result


async def run_annunciator(
    args: argparse.Namespace, rx: WebhookReceiver
) -> tuple[PhaseResult, PhaseResult | None]:
    burst = PhaseResult("annunciator burst")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ann-"))
    port = free_port()
    database = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(
        yaml.safe_dump(gateway_config(tmp, port, database, rx.url), sort_keys=False)
    )
    cmd = gateway_command(cfg_path)
    if cmd is None:
        burst.skipped = "no annunciator entry point yet (annunciator/__main__.py, cli.py)"
        log(f"SKIP annunciator: {burst.skipped}")
        return burst, None
    # A shared database may hold earlier runs: make sources unique so no alarm is taken
    # for a re-raise of an already-active one.
    run = f"{uuid.uuid4().hex[:6]}-" if args.database_url else ""

    def source_of(i: int) -> str:
        return f"bench/{run}{i}"

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    logfile = tmp / "gateway.log"
    log(f"starting annunciator on 127.0.0.1:{port}: {' '.join(cmd)}")
    with open(logfile, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=tmp, env=env)
    profiler: subprocess.Popen[bytes] | None = None
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    steady: PhaseResult | None = None
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=args.request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                await wait_http_ok(
                    session, f"{base}/api/health", proc, args.startup_timeout, "gateway", logfile
                )
            except RuntimeError as exc:
                burst.skipped = str(exc).splitlines()[0]
                log(f"SKIP annunciator: {exc}")
                return burst, None
            if args.py_spy:
                profiler = start_py_spy(args.py_spy, proc.pid, tmp)
            rx.clear()
            batches = [
                ([source_of(i) for i in idx], {"alarms": [alarm(source_of(i), i) for i in idx]})
                for idx in chunks(list(range(args.alarms)), args.batch)
            ]
            send_times: dict[str, float] = {}
            log(f"annunciator: posting {args.alarms} alarms in {len(batches)} batches")
            cpu0, me0 = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
            first, last = await post_batches(
                session,
                f"{base}/api/alarms",
                batches,
                headers=headers,
                ok_status=(201,),
                concurrency=args.concurrency,
                send_times=send_times,
                result=burst,
                check=ann_check,
            )
            burst.accept_elapsed = last - first
            log(f"annunciator: {burst.accepted} accepted in {last - first:.2f}s; draining")
            await collect_arrivals(
                rx,
                send_times,
                ann_extract,
                burst,
                expected=burst.accepted,
                drain_timeout=args.drain_timeout,
                stall_timeout=args.stall_timeout,
                first_start=first,
            )
            burst.server_cpu_s = cpu_delta(cpu0, proc.pid)
            burst.harness_cpu_s = cpu_delta(me0, os.getpid())
            log(f"annunciator: {burst.delivered} notifications delivered")
            if args.seconds > 0 and args.rate > 0:
                await asyncio.sleep(1.0)  # let stragglers of the burst land before measuring
                rx.clear()
                cpu0, me0 = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
                offset = args.alarms
                steady = await run_steady(
                    session,
                    f"{base}/api/alarms",
                    headers,
                    rx,
                    args,
                    name=f"annunciator steady {args.rate:g}/s",
                    seconds=args.seconds,
                    key_of=lambda i: source_of(offset + i),
                    body_of=lambda i, key: {"alarms": [alarm(key, offset + i)]},
                    ok_status=201,
                    check=ann_check,
                )
                steady.server_cpu_s = cpu_delta(cpu0, proc.pid)
                steady.harness_cpu_s = cpu_delta(me0, os.getpid())
                log(f"annunciator steady: {steady.delivered}/{steady.sent} delivered")
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
        code = stop_process(proc, "gateway")
        if code not in (0, None, -signal.SIGTERM):
            burst.notes.append(f"gateway exit code {code} after SIGTERM; log:\n{tail(logfile)}")
        warnings = (
            [
                line
                for line in logfile.read_text(errors="replace").splitlines()
                if "Traceback" in line or "ERROR" in line or "CRITICAL" in line
            ]
            if logfile.exists()
            else []
        )
        if warnings:
            burst.notes.append(f"gateway log has {len(warnings)} error line(s), e.g. {warnings[0]}")
        if args.keep_tmp or warnings:
            burst.notes.append(f"kept {tmp} (config, gateway.log)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return burst, steady


def start_py_spy(out: str, pid: int, tmp: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy")
    if exe is None:
        log("--py-spy given but py-spy is not installed (pip install py-spy); not profiling")
        return None
    fmt = {".json": "speedscope", ".txt": "raw"}.get(Path(out).suffix, "flamegraph")
    cmd = [exe, "record", "--pid", str(pid), "-o", out, "--format", fmt, "--rate", "200"]
    log(f"profiling gateway pid {pid} with py-spy -> {out}")
    with open(tmp / "py-spy.log", "wb") as errf:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------- report
def report(results: list[PhaseResult], args: argparse.Namespace) -> dict[str, Any]:
    cols = (
        f"{'phase':<28} {'sent':>6} {'accepted/s':>10} {'deliv':>6} {'delivered/s':>11} "
        f"{'ttn p50 ms':>10} {'ttn p99 ms':>10} {'ttn max ms':>10} {'api p99 ms':>10} {'err':>4}"
    )
    print()
    print(cols)
    print("-" * len(cols))
    for r in results:
        if r.skipped:
            print(f"{r.name:<28} SKIPPED: {r.skipped}")
            continue
        print(
            f"{r.name:<28} {r.sent:>6} {fmt_rate(r.accepted_per_s):>10} {r.delivered:>6} "
            f"{fmt_rate(r.delivered_per_s):>11} {fmt_ms(percentile(r.ttn, 50)):>10} "
            f"{fmt_ms(percentile(r.ttn, 99)):>10} "
            f"{fmt_ms(max(r.ttn) if r.ttn else None):>10} "
            f"{fmt_ms(percentile(r.api_latency, 99)):>10} {r.error_count:>4}"
        )
    print()
    for r in results:
        for msg in r.errors:
            print(f"  {r.name}: error: {msg}")
        if r.duplicates or r.strays:
            print(f"  {r.name}: {r.duplicates} duplicate and {r.strays} unmatched webhook(s)")
        for note in r.notes:
            print(f"  {r.name}: {note}")
        if r.server_cpu_s is not None and r.deliver_elapsed and r.delivered:
            print(
                f"  {r.name}: server CPU {r.server_cpu_s:.2f}s over {r.deliver_elapsed:.2f}s "
                f"({100 * r.server_cpu_s / r.deliver_elapsed:.0f}% of one core), "
                f"{1000 * r.server_cpu_s / r.delivered:.2f} ms CPU per notification; "
                f"harness CPU {r.harness_cpu_s or 0:.2f}s"
            )
    for r in results:
        parts = [
            f"{s['from_s']:.1f}-{s['to_s']:.1f}s p50 {s['p50_ms']:.0f}/p99 {s['p99_ms']:.0f}"
            for s in r.slices()
            if s["count"]
        ]
        if parts:
            print(f"  {r.name}: time-to-notify ms by send time: " + ", ".join(parts))
    summary: dict[str, Any] = {"phases": [r.as_dict() for r in results]}
    by_name = {r.name: r for r in results}
    am = by_name.get("alertmanager burst")
    ann = by_name.get("annunciator burst")
    if am and ann and am.delivered_per_s and ann.delivered_per_s:
        ratio = ann.delivered_per_s / am.delivered_per_s
        summary["ratio_delivered_per_s"] = round(ratio, 3)
        print(
            f"\nratio annunciator/alertmanager, notifications delivered/s: {ratio:.2f} "
            f"({ann.delivered_per_s:.0f} / {am.delivered_per_s:.0f})"
        )
    steady = next((r for r in results if r.name.startswith("annunciator steady")), None)
    if steady and steady.ttn:
        p99 = percentile(steady.ttn, 99) or 0.0
        ok = p99 * 1000 <= STEADY_TARGET_P99_MS and steady.delivered == steady.sent
        summary["steady_p99_ms"] = round(p99 * 1000, 2)
        summary["steady_target_met"] = ok
        print(
            f"steady {args.rate:g}/s: time-to-notify p50 {fmt_ms(percentile(steady.ttn, 50))} ms, "
            f"p99 {p99 * 1000:.1f} ms vs target {STEADY_TARGET_P99_MS:g} ms -> "
            f"{'MET' if ok else 'MISSED'} ({steady.delivered}/{steady.sent} delivered)"
        )
    print(
        f"\nsetup: N={args.alarms} batch={args.batch} concurrency={args.concurrency} "
        f"cpus={os.cpu_count()} python={sys.version.split()[0]}",
        flush=True,
    )
    return summary


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alarms", type=int, default=5000, help="alarms per burst phase")
    p.add_argument("--rate", type=float, default=200.0, help="steady-phase alarms/s")
    p.add_argument("--seconds", type=float, default=10.0, help="steady-phase duration")
    p.add_argument("--batch", type=int, default=BATCH, help="alarms per POST in bursts")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    p.add_argument("--skip-alertmanager", action="store_true")
    p.add_argument("--skip-annunciator", action="store_true")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the harness-floor run (steady loop posting straight to the receiver)",
    )
    p.add_argument("--database-url", help="gateway database (default: sqlite in a temp dir)")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="max wait for all webhooks after the last POST",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="give up draining after this long without any webhook",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="global limit for the run")
    p.add_argument("--keep-tmp", action="store_true", help="keep temp dirs (configs, logs)")
    p.add_argument(
        "--py-spy",
        metavar="OUT",
        help="profile the gateway with py-spy into OUT (.svg, .json speedscope, .txt collapsed)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.alarms < 1 or args.batch < 1 or args.concurrency < 1:
        p.error("--alarms, --batch and --concurrency must be >= 1")
    if args.alarms > 200_000 or args.rate * args.seconds > 200_000:
        p.error("refusing more than 200000 alarms per phase (bounded benchmark)")
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    results: list[PhaseResult] = []
    with WebhookReceiver() as rx:
        log(f"receiver listening at {rx.url}")
        if not args.skip_alertmanager:
            results.append(await run_alertmanager(args, rx))
        if not args.skip_annunciator:
            if args.seconds > 0 and args.rate > 0 and not args.no_calibrate:
                results.append(await run_calibration(args, rx))
            burst, steady = await run_annunciator(args, rx)
            results.append(burst)
            if steady is not None:
                results.append(steady)
    return report(results, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            summary = runner.run(asyncio.wait_for(amain(args), args.timeout))
    except TimeoutError:
        log(f"global timeout of {args.timeout:g}s reached; aborted")
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    # Non-zero when any request failed, so a wrapper script notices a broken run.
    return 1 if any(p["error_count"] for p in summary["phases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
