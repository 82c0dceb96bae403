#!/usr/bin/env python3
"""Alarm flood: 1,000 alarms within a minute into one Notification block for a roster of three,
with consolidation on and off.

Why: a plant upset raises hundreds of alarms at once. Without consolidation every person gets one
message per alarm (and the provider bill and rate limits follow); with it, each gets a summary.
The run with consolidation off is the reference measured in the same run, so the ratios printed
(messages per person, provider calls per alarm, time to drain) do not depend on how busy the
machine is.

The gateway runs as a child process (``annunciator run``) on SQLite, the notifications go to a
real HTTP receiver on 127.0.0.1, and alarms are raised over the HTTP API in batches of 50 spread
over ``--spread`` seconds. Run::

    python bench/flood.py                       # 1,000 alarms over 20 s, delay 5s, frequency 30s
    python bench/flood.py --alarms 300 --spread 5 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from annunciator.testing.gateway import TOKEN, GatewayProcess, api_client, free_port, write_config  # noqa: E402
from annunciator.testing.receiver import WebhookReceiver  # noqa: E402

PEOPLE = ["maria", "li", "sam"]
BATCH = 50


def config(tmp: Path, hook: str, consolidation: dict[str, str] | None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "notification", "roster": "plant", "profile": "hook",
                             "message": "{priority} {displayPath}: {name}"}
    if consolidation:
        block["consolidation"] = consolidation
    return {
        "gateway": {"http": {"port": free_port()}, "database": f"sqlite:///{tmp / 'flood.db'}",
                    "api_tokens": [TOKEN], "secret_file": str(tmp / "secret.key")},
        "profiles": {"hook": {"type": "webhook", "url": hook}},
        "users": {u: {} for u in PEOPLE},
        "rosters": {"plant": PEOPLE},
        "pipelines": {"flood": {"blocks": [block]}},
    }


def run(args: argparse.Namespace, consolidation: dict[str, str] | None) -> dict[str, Any]:
    label = "consolidation on" if consolidation else "consolidation off"
    with tempfile.TemporaryDirectory() as d, WebhookReceiver() as rx:
        tmp = Path(d)
        gw = GatewayProcess(write_config(tmp / "flood.yaml", config(tmp, rx.url, consolidation))).start()
        try:
            client = api_client(gw.url)
            t0 = time.monotonic()
            batches = [list(range(i, min(i + BATCH, args.alarms))) for i in range(0, args.alarms, BATCH)]
            for n, batch in enumerate(batches):
                # spread the batches evenly over the flood window, as an upset would
                pause = t0 + n * args.spread / len(batches) - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                r = client.post("/api/alarms", json={"alarms": [
                    {"source": f"plant/area{i % 7}/tag{i}", "displayPath": f"Area {i % 7}/Tag {i}",
                     "priority": ("Low", "Medium", "High")[i % 3], "pipelines": {"active": "flood"}}
                    for i in batch]})
                r.raise_for_status()
            raised = time.monotonic()
            deadline = raised + args.timeout
            # drained: nothing held, every alarm has reached each person, and no new message lately
            while time.monotonic() < deadline:
                held = client.get("/api/held").json()["held"]
                carried = sum(len(q.json["events"]) for q in rx.requests)
                if not held and carried >= args.alarms * len(PEOPLE):
                    break
                time.sleep(0.1)
            drained = time.monotonic()
            time.sleep(0.5)
        finally:
            gw.stop()
        per_person = Counter(q.json["user"]["username"] for q in rx.requests)
        carried = sum(len(q.json["events"]) for q in rx.requests)
        return {
            "label": label, "alarms": args.alarms, "messages": rx.count,
            "messagesPerPerson": {u: per_person.get(u, 0) for u in PEOPLE},
            "maxPerPerson": max(per_person.values(), default=0),
            "providerCallsPerAlarm": rx.count / args.alarms,
            "alarmsCarried": carried, "complete": carried == args.alarms * len(PEOPLE),
            "raiseSeconds": raised - t0, "drainSeconds": drained - t0,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alarms", type=int, default=1000)
    p.add_argument("--spread", type=float, default=20.0, help="seconds over which the alarms are raised")
    p.add_argument("--delay", default="5s", help="consolidation delay")
    p.add_argument("--frequency", default="30s", help="consolidation frequency")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    off = run(args, None)
    on = run(args, {"delay": args.delay, "frequency": args.frequency})
    ratios = {
        "messagesPerPersonOnOverOff": on["maxPerPerson"] / max(off["maxPerPerson"], 1),
        "providerCallsOnOverOff": on["messages"] / max(off["messages"], 1),
        "drainOnOverOff": on["drainSeconds"] / off["drainSeconds"],
    }
    if args.json:
        print(json.dumps({"off": off, "on": on, "ratios": ratios}, indent=2))
    else:
        for r in (off, on):
            print(f"{r['label']:<18} messages {r['messages']:>5}  per person {r['messagesPerPerson']}  "
                  f"provider calls/alarm {r['providerCallsPerAlarm']:.3f}  alarms carried {r['alarmsCarried']}"
                  f"{'' if r['complete'] else ' (INCOMPLETE)'}  raised in {r['raiseSeconds']:.1f}s, "
                  f"drained at {r['drainSeconds']:.1f}s")
        print(f"ratio on/off: messages per person {ratios['messagesPerPersonOnOverOff']:.4f}, provider calls "
              f"{ratios['providerCallsOnOverOff']:.4f}, time to drain {ratios['drainOnOverOff']:.2f}")
        target = "met" if on["maxPerPerson"] <= 2 else "MISSED"
        print(f"target <= 2 messages per person with consolidation on: {target} ({on['maxPerPerson']})")
    return 0 if on["complete"] and off["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
