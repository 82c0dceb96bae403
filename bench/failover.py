#!/usr/bin/env python3
"""Failover and the cost of the cluster, measured on a private PostgreSQL.

Phase 1 (failover): two or three ``annunciator run`` nodes on one database, a stream of alarms
(one every ``--interval`` s, each paged once through a webhook), and ``--kills`` kill -9 of the
active node at random moments, each killed node restarted at once. A node on the same machine
sees the killed process gone and takes over at once; ``--pause`` SIGSTOPs the active instead,
which is what a node on another machine sees of a dead one: the lease runs out. Reported: time from each
kill to the first page the receiver gets afterwards (p50 and max), pages lost (an alarm never
paged) and duplicated (the same idempotency key delivered twice).

Phase 2 (burst): ``--alarms`` alarms in batches of 50 into the active node, a single node
against a 2-node cluster (the same build, a fresh database each round), alternating
``--rounds`` times; delivered/s of each and the ratio cluster/single. The standby and the fencing
(one ``SELECT ... FOR SHARE`` on the lease row per write transaction) must cost the active under
10 %.

Everything binds 127.0.0.1; the PostgreSQL server is the benchmark's own (initdb + pg_ctl), never
the machine's. Run::

    python bench/failover.py --kills 10 --alarms 3000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from annunciator.testing.gateway import TOKEN, GatewayProcess, free_port, write_config  # noqa: E402
from annunciator.testing.postgres import PrivateCluster  # noqa: E402
from annunciator.testing.receiver import WebhookReceiver  # noqa: E402


def config(tmp: Path, i: int, db: str, rx: str, lease: float) -> Path:
    return write_config(tmp / f"node-{i}.yaml", {
        "gateway": {"http": {"host": "127.0.0.1", "port": free_port()}, "database": db, "api_tokens": [TOKEN],
                    "secret_file": str(tmp / "secret.key"), "cluster": {"lease": f"{lease:g}s", "node": f"node-{i}"}},
        "profiles": {"hook": {"type": "webhook", "url": rx, "timeout": "5s"}},
        "users": {"maria": {}}, "rosters": {"operators": ["maria"]},
        "pipelines": {"page": {"blocks": [{"type": "notification", "profile": "hook", "roster": "operators",
                                           "message": "{name}"}]}}})


def create_db(pg: PrivateCluster, name: str) -> str:
    engine = sa.create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'create database "{name}"')
    engine.dispose()
    return pg.url.rsplit("/", 1)[0] + "/" + name


def active_of(procs: list[GatewayProcess]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if p.proc is not None and p.proc.poll() is None:
                try:
                    if httpx.get(p.url + "/api/health?role=active", timeout=1).status_code == 200:
                        return i
                except httpx.HTTPError:
                    pass
        time.sleep(0.05)
    raise TimeoutError("no active node")


def failover(pg: PrivateCluster, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    db = create_db(pg, "failover")
    with WebhookReceiver() as rx:
        procs = [GatewayProcess(config(tmp, i, db, rx.url, args.lease)) for i in range(args.nodes)]
        procs[0].start()
        for p in procs[1:]:
            p.start(role="standby")
        raised: list[str] = []
        stop = threading.Event()

        def stream() -> None:
            k = 0
            # a short timeout: a paused node accepts connections and never answers
            client = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=1)
            while not stop.is_set():
                source = f"plant/a-{k}"
                while not stop.is_set():
                    p = random.choice(procs)
                    try:
                        r = client.post(p.url + "/api/alarms", json={"source": source, "pipelines": {"active": "page"}})
                        if r.status_code == 201:
                            raised.append(source)
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.05)
                k += 1
                time.sleep(args.interval)

        feeder = threading.Thread(target=stream, daemon=True)
        feeder.start()
        gaps: list[float] = []
        try:
            for _ in range(args.kills):
                time.sleep(random.uniform(1.0, 3.0))
                victim = active_of(procs)
                before = len(rx.requests)
                killed = time.monotonic()
                if args.pause:
                    # another machine's death as this one sees it: no process gone to notice, only
                    # a lease that is no longer renewed
                    procs[victim].pause()
                else:
                    procs[victim].kill()
                deadline = killed + args.lease + 30
                after: list[Any] = []
                while not after and time.monotonic() < deadline:
                    time.sleep(0.005)
                    after = [r for r in list(rx.requests)[before:] if r.received_at > killed]
                if after:
                    gaps.append(after[0].received_at - killed)
                if args.pause:
                    procs[victim].kill()
                procs[victim].start(role="any")
            stop.set()
            feeder.join(30)
            time.sleep(3)
        finally:
            stop.set()
            for p in procs:
                p.stop()
        keys = collections.Counter(r.headers["idempotency-key"] for r in rx.requests if r.status < 300)
        sources = {r.json["events"][0]["source"] for r in rx.requests if r.status < 300}
    return {"kills": len(gaps), "p50": statistics.median(gaps), "max": max(gaps), "alarms": len(raised),
            "lost": len(set(raised) - sources), "duplicated": sum(n - 1 for n in keys.values())}


async def burst(url: str, n: int, concurrency: int = 8) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        sem = asyncio.Semaphore(concurrency)
        tag = f"{time.monotonic_ns()}"

        async def post(lo: int) -> None:
            async with sem:
                body = [{"source": f"burst/{tag}/{i}", "pipelines": {"active": "page"}}
                        for i in range(lo, min(lo + 50, n))]
                r = await client.post(url + "/api/alarms", json=body)
                r.raise_for_status()
        await asyncio.gather(*(post(lo) for lo in range(0, n, 50)))


def throughput(pg: PrivateCluster, tmp: Path, nodes: int, round_: int, args: argparse.Namespace) -> float:
    db = create_db(pg, f"burst_{nodes}_{round_}")
    with WebhookReceiver() as rx:
        procs = [GatewayProcess(config(tmp, 10 * nodes + i, db, rx.url, args.lease)) for i in range(nodes)]
        try:
            procs[0].start()
            for p in procs[1:]:
                p.start(role="standby")
            started = time.monotonic()
            asyncio.run(burst(procs[0].url, args.alarms))
            deadline = started + 300
            while len(rx.requests) < args.alarms and time.monotonic() < deadline:
                time.sleep(0.01)
            took = max(r.received_at for r in rx.requests) - started
        finally:
            for p in procs:
                p.stop()
    return args.alarms / took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--nodes", type=int, default=2, help="nodes in the failover phase")
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between alarms in the failover phase")
    p.add_argument("--alarms", type=int, default=3000, help="alarms per burst")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pause", action="store_true",
                   help="SIGSTOP the active instead of kill -9: the takeover waits for the lease to run out, "
                        "as when the active's machine dies")
    p.add_argument("--skip-failover", action="store_true")
    p.add_argument("--skip-burst", action="store_true")
    args = p.parse_args()
    pg = PrivateCluster()
    pg.start()
    try:
        with tempfile.TemporaryDirectory(prefix="annunciator-failover-") as d:
            tmp = Path(d)
            if not args.skip_failover:
                f = failover(pg, tmp, args)
                how = "SIGSTOPs" if args.pause else "kills"
                print(f"failover: {f['kills']} {how} of the active ({args.nodes} nodes, lease {args.lease:g}s): "
                      f"kill -> first page p50 {f['p50']:.2f}s, max {f['max']:.2f}s; {f['alarms']} alarms, "
                      f"{f['lost']} lost, {f['duplicated']} duplicated")
            if not args.skip_burst:
                single, pair = [], []
                for r in range(args.rounds):  # alternating: the machine's noise hits both alike
                    single.append(throughput(pg, tmp, 1, r, args))
                    pair.append(throughput(pg, tmp, 2, r, args))
                print(f"burst {args.alarms} alarms: single node {' '.join(f'{x:.0f}' for x in single)} /s, "
                      f"2-node cluster {' '.join(f'{x:.0f}' for x in pair)} /s; "
                      f"ratio cluster/single (medians) {statistics.median(pair) / statistics.median(single):.3f}")
    finally:
        pg.remove()


if __name__ == "__main__":
    main()
