#!/usr/bin/env python3
"""Pages through a faulty provider: 1,000 alarms against a receiver that fails 30% of requests
(HTTP 500, 429 with Retry-After, hangs past the client timeout), against the same run with a
receiver that never fails.

Why: a provider outage or a flaky network must delay pages, never lose them. Before durable
retries, 992-995 of 1,000 were delivered in this setup; the rest gave up after four attempts.
The fault-free run is the reference measured in the same run: the ratio of drain times says
what the faults cost, whatever the machine is doing.

The gateway runs as a child process (``annunciator run``) on SQLite; the receiver is an aiohttp
server on 127.0.0.1 that records which Idempotency-Keys it answered 2xx. A hang that answers
after the client gave up is a duplicate the receiver de-duplicates by that key, as webhooks
must; it is counted apart. Run::

    python bench/faults.py                     # 1,000 alarms over 20 s, 30% faults
    python bench/faults.py --alarms 300 --fault-rate 0.5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from aiohttp import web  # noqa: E402

from annunciator.testing.gateway import TOKEN, GatewayProcess, api_client, free_port, write_config  # noqa: E402

BATCH = 50
CLIENT_TIMEOUT = 1.0  # the webhook profile's timeout; a hang lasts longer than this


class FaultyReceiver:
    """Answers each request 200, or (with probability ``rate``) one of: 500, 429 with
    Retry-After: 1, or a hang of 3 s before a 200 the client no longer waits for."""

    def __init__(self, rate: float, seed: int = 7) -> None:
        self.rate = rate
        self.random = random.Random(seed)
        self.ok: Counter[str] = Counter()  # idempotency key -> 2xx answers the client read
        self.late: Counter[str] = Counter()  # 2xx answers after the client timed out
        self.faults: Counter[str] = Counter()
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        key = request.headers.get("Idempotency-Key", "")
        roll = self.random.random()
        if roll < self.rate / 3:
            self.faults["500"] += 1
            return web.Response(status=500)
        if roll < self.rate * 2 / 3:
            self.faults["429"] += 1
            return web.Response(status=429, headers={"Retry-After": "1"})
        if roll < self.rate:
            self.faults["hang"] += 1
            await asyncio.sleep(CLIENT_TIMEOUT * 3)
            self.late[key] += 1
            return web.Response(status=200)
        self.ok[key] += 1
        return web.Response(status=200)

    def start(self) -> FaultyReceiver:
        def main() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            self._ready.set()
            loop.run_forever()

        threading.Thread(target=main, daemon=True).start()
        self._ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> set[str]:
        return set(self.ok) | set(self.late)


def config(tmp: Path, hook: str) -> dict[str, Any]:
    return {
        "gateway": {"http": {"port": free_port()}, "database": f"sqlite:///{tmp / 'faults.db'}",
                    "api_tokens": [TOKEN], "secret_file": str(tmp / "secret.key"),
                    # the defaults but a lower ceiling, so the run ends in a minute or two
                    "retry": {"max_backoff": "5s"}},
        "profiles": {"hook": {"type": "webhook", "url": hook, "timeout": f"{CLIENT_TIMEOUT}s"}},
        "users": {"maria": {}},
        "rosters": {"plant": ["maria"]},
        "pipelines": {"page": {"blocks": [{"type": "notification", "roster": "plant", "profile": "hook",
                                           "message": "{displayPath}: {name}"}]}},
    }


def run(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    rx = FaultyReceiver(rate).start()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        gw = GatewayProcess(write_config(tmp / "faults.yaml", config(tmp, rx.url))).start()
        try:
            client = api_client(gw.url)
            t0 = time.monotonic()
            batches = [list(range(i, min(i + BATCH, args.alarms))) for i in range(0, args.alarms, BATCH)]
            for n, batch in enumerate(batches):
                pause = t0 + n * args.spread / len(batches) - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                client.post("/api/alarms", json={"alarms": [
                    {"source": f"plant/tag{i}", "pipelines": {"active": "page"}} for i in batch]}).raise_for_status()
            deadline = time.monotonic() + args.timeout
            while len(rx.delivered()) < args.alarms and time.monotonic() < deadline:
                time.sleep(0.2)
            drained = time.monotonic() - t0
            time.sleep(CLIENT_TIMEOUT * 3.5)  # let late answers land before counting them
            failed = client.get("/api/audit", params={"code": "NotificationFailed", "limit": 5000}).json()["audit"]
            return {"faultRate": rate, "alarms": args.alarms, "delivered": len(rx.delivered()),
                    "lost": args.alarms - len(rx.delivered()), "givenUp": len(failed),
                    "duplicatesAfterTimeout": sum(1 for k in rx.late if rx.ok[k] or rx.late[k] > 1),
                    "faults": dict(rx.faults), "drainSeconds": round(drained, 1)}
        finally:
            gw.stop()
            if rx._loop is not None:
                rx._loop.call_soon_threadsafe(rx._loop.stop)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alarms", type=int, default=1000)
    p.add_argument("--spread", type=float, default=20.0, help="seconds over which the alarms are raised")
    p.add_argument("--fault-rate", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=180.0, help="give up waiting for delivery after this")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    reference = run(args, 0.0)
    faulty = run(args, args.fault_rate)
    ratio = faulty["drainSeconds"] / reference["drainSeconds"]
    if args.json:
        print(json.dumps({"reference": reference, "faulty": faulty, "drainRatio": round(ratio, 2)}, indent=2))
        return
    for r in (reference, faulty):
        print(f"fault rate {r['faultRate']:.0%}: {r['delivered']}/{r['alarms']} delivered, {r['lost']} lost, "
              f"{r['givenUp']} given up, {r['duplicatesAfterTimeout']} duplicates after a client timeout "
              f"(de-duplicated by Idempotency-Key), drained in {r['drainSeconds']} s, faults {r['faults']}")
    print(f"drain time with faults / without (same run): {ratio:.2f}")


if __name__ == "__main__":
    main()
