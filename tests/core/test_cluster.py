"""Several `annunciator run` processes on one PostgreSQL database: one active, failover with fencing.

Everything is driven from outside: real gateway processes on 127.0.0.1, a private PostgreSQL
server of the test's own (initdb + pg_ctl: it is killed, restarted and queried), a real webhook
receiver and the Twilio emulator, webhooks signed as Twilio signs them.
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from annunciator.testing.gateway import TOKEN, GatewayProcess, api_client, free_port, write_config
from annunciator.testing.receiver import WebhookReceiver

from conftest import wait_until

# Each node runs its own private PostgreSQL: the shared server's pass adds nothing here.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    bool(os.environ.get("ANNUNCIATOR_TEST_DATABASE_URL")),
    reason="cluster tests start their own PostgreSQL; they run in the first pass")]

LEASE = 2.0
MARIA, LI = "+15550100001", "+15550100002"


def node_config(tmp: Path, i: int, db: str, rx_url: str, pipelines: dict[str, Any], **extra: Any) -> Path:
    config: dict[str, Any] = {
        "gateway": {"http": {"host": "127.0.0.1", "port": free_port()}, "database": db, "api_tokens": [TOKEN],
                    # each node its own secret file: the cluster shares the first node's secret
                    "secret_file": str(tmp / f"secret-{i}.key"), "commit_timeout": "3s",
                    "cluster": {"lease": f"{LEASE:g}s", "node": f"node-{i}"},
                    "retry": {"attempts": 3, "backoff": "100ms", "max_backoff": "500ms"}},
        "profiles": {"hook": {"type": "webhook", "url": rx_url, "timeout": "5s"}},
        "users": {"maria": {"pin": "1234", "contacts": {"sms": MARIA}}, "li": {"contacts": {"sms": LI}}},
        "rosters": {"operators": ["maria"], "supervisors": ["li"]},
        "pipelines": pipelines,
    }
    for key, value in extra.items():
        if key == "gateway":
            config["gateway"].update(value)
        else:
            config[key] = value
    return write_config(tmp / f"node-{i}.yaml", config)


class Nodes:
    """N gateway processes on one database; whichever is active, the others standby."""

    def __init__(self, tmp: Path, db: str, rx_url: str, pipelines: dict[str, Any], n: int, **extra: Any):
        self.procs = [GatewayProcess(node_config(tmp, i, db, rx_url, pipelines, **extra)) for i in range(n)]

    def start(self) -> Nodes:
        self.procs[0].start()
        for p in self.procs[1:]:
            p.start(role="standby")
        return self

    def roles(self) -> dict[int, str]:
        out = {}
        for i, p in enumerate(self.procs):
            if p.proc is None or p.proc.poll() is not None:
                continue
            try:
                out[i] = httpx.get(p.url + "/api/health", timeout=1).json().get("role", "?")
            except httpx.HTTPError:
                out[i] = "unreachable"
        return out

    def active(self, timeout: float = LEASE + 10) -> int:
        def one() -> int | None:
            found = [i for i, role in self.roles().items() if role == "active"]
            return found[0] + 1 if len(found) == 1 else None
        return wait_until(one, timeout=timeout, what="one active node") - 1

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture
def nodes(tmp_path, private_postgres):
    made: list[Nodes] = []

    def make(rx_url: str, pipelines: dict[str, Any], n: int = 2, **extra: Any) -> Nodes:
        c = Nodes(tmp_path, private_postgres.url, rx_url, pipelines, n, **extra).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def raise_until_stored(urls: list[str], source: str, pipeline: str, deadline: float = 30.0) -> str:
    """What an alarm source does: POST, and on a 503 (no active node for a moment) try again,
    through any node. Raising an active source again returns its event, so a retry is safe."""
    end = time.monotonic() + deadline
    i = random.randrange(len(urls))
    while True:
        url = urls[i % len(urls)]
        i += 1
        try:
            r = httpx.post(url + "/api/alarms", json={"source": source, "name": source.rsplit("/", 1)[-1],
                                                      "pipelines": {"active": pipeline}},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            if r.status_code == 201:
                return str(r.json()["events"][0]["id"])
            assert r.status_code == 503, r.text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < end, f"{source} not stored within {deadline}s"
        time.sleep(0.2)


def by_source(rx: WebhookReceiver) -> dict[str, collections.Counter[tuple[str, str, str]]]:
    """Per alarm: (user, message, idempotency key) of every 2xx delivery, with how often."""
    out: dict[str, collections.Counter[tuple[str, str, str]]] = collections.defaultdict(collections.Counter)
    for r in list(rx.requests):
        if r.status < 300:
            j = r.json
            out[j["events"][0]["source"]][(j["user"]["username"], j["message"], r.headers["idempotency-key"])] += 1
    return out


def test_killing_the_active_ten_times_loses_no_page_and_fires_no_delay_early(nodes):
    """Three nodes; a stream of alarms through Delay and Escalate; the active node is killed -9
    ten times at random moments and restarted each time: every alarm gets exactly the pages of
    its pipeline (at most one resend per kill, with the same idempotency key), no Delay fires
    early, and sending resumes within the lease plus a few seconds of each kill."""
    pipelines = {"page": {"blocks": [
        {"type": "notification", "profile": "hook", "roster": "operators", "message": "first {name}"},
        {"type": "delay", "delay": "3s"},
        {"type": "escalate", "profile": "hook", "message": "esc {name}",
         "tiers": [{"roster": "operators", "wait": "1s"}, {"roster": "supervisors", "wait": "1s"}]}]}}
    with WebhookReceiver() as rx:
        cluster = nodes(rx.url, pipelines, n=3)
        urls = [p.url for p in cluster.procs]
        raised: dict[str, float] = {}
        stop = threading.Event()
        errors: list[BaseException] = []

        def stream() -> None:
            try:
                k = 0
                while not stop.is_set():
                    source = f"plant/pump-{k}"
                    started = time.monotonic()
                    raise_until_stored(urls, source, "page")
                    raised[source] = started
                    k += 1
                    time.sleep(0.25)
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        feeder = threading.Thread(target=stream, daemon=True)
        feeder.start()
        resumed: list[float] = []
        for _ in range(10):
            time.sleep(random.uniform(1.0, 3.0))
            victim = cluster.active()
            killed_at = time.monotonic()
            cluster.procs[victim].kill()
            # the next page anyone receives comes from the new active node
            before = len(rx.requests)
            wait_until(lambda before=before: len(rx.requests) > before, timeout=LEASE + 10,
                       what="a page after the kill")
            resumed.append(rx.requests[before].received_at - killed_at)
            cluster.procs[victim].start(role="any")
        stop.set()
        feeder.join(30)
        assert not errors, errors
        assert max(resumed) < LEASE + 5, resumed

        expected = {(u, f"{kind} {s.rsplit('/', 1)[-1]}") for s in raised
                    for u, kind in [("maria", "first"), ("maria", "esc"), ("li", "esc")]}

        def all_in() -> bool:
            seen = {(u, m) for counts in by_source(rx).values() for (u, m, _k) in counts}
            return expected <= seen
        wait_until(all_in, timeout=30, what="every page of every alarm")
        time.sleep(1.0)
        pages = by_source(rx)
        duplicates = 0
        for source in raised:
            got = pages[source]
            kinds = collections.Counter((u, m) for (u, m, _k) in got)
            name = source.rsplit("/", 1)[-1]
            # exactly one notification (one idempotency key) per step of the pipeline
            assert sorted(kinds) == sorted([("li", f"esc {name}"), ("maria", f"esc {name}"),
                                            ("maria", f"first {name}")]), (source, got)
            duplicates += sum(n - 1 for n in got.values())
        assert duplicates <= 10, duplicates
        # no Delay early: the escalation's first page comes 3 s after the alarm at the soonest
        for r in list(rx.requests):
            j = r.json
            if j["message"].startswith("esc") and j["user"]["username"] == "maria":
                assert r.received_at - raised[j["events"][0]["source"]] >= 2.9, j["message"]


def test_a_paused_active_wakes_up_fenced_sends_nothing_and_steps_down(nodes, private_postgres):
    pipelines = {"later": {"blocks": [{"type": "delay", "delay": "1s"},
                                      {"type": "notification", "profile": "hook", "roster": "operators",
                                       "message": "late {name}"}]}}
    with WebhookReceiver() as rx:
        cluster = nodes(rx.url, pipelines, n=2)
        a, b = cluster.procs
        raise_until_stored([a.url], "plant/paused", "later")
        a.pause()  # its Delay is armed in memory and on the row
        try:
            assert cluster.active(timeout=LEASE + 8) == 1
            [page] = rx.wait_for(1, timeout=10)  # the new active fired the stored Delay
            assert page.json["message"] == "late paused"
            raise_until_stored([b.url], "plant/after", "later")
            rx.wait_for(2, timeout=10)
        finally:
            a.resume()
        # the old active wakes with its timer due and a lease it still remembers
        time.sleep(3)
        assert len(rx.requests) == 2 and {r.json["message"] for r in rx.requests} == {"late paused", "late after"}
        assert a.health()["role"] == "standby" and b.health()["role"] == "active"
        log = a.log.read_text()
        assert "is no longer active" in log, log[-2000:]
        engine = sa.create_engine(private_postgres.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select count(*) from notifications")).scalar()
            journal = conn.execute(sa.text(
                "select notes from journal where source = 'annunciator/cluster' order by id")).scalars().all()
        engine.dispose()
        assert rows == 2  # the woken node committed nothing
        assert journal[-1].startswith("node node-1 took over from node-0"), journal


def test_terminating_the_lease_backend_is_noticed_and_never_makes_two_actives(nodes, private_postgres):
    with WebhookReceiver() as rx:
        cluster = nodes(rx.url, {"p": {"blocks": [{"type": "notification", "profile": "hook",
                                                    "roster": "operators", "message": "m {name}"}]}}, n=2)
        engine = sa.create_engine(private_postgres.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            killed = conn.execute(sa.text(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where application_name = 'annunciator lease node-0'")).scalars().all()
        engine.dispose()
        assert killed == [True]
        seen = []
        end = time.monotonic() + LEASE + 3
        while time.monotonic() < end:
            roles = cluster.roles()
            assert list(roles.values()).count("active") <= 1, roles
            seen.append(roles)
            time.sleep(0.05)
        log = cluster.procs[0].log.read_text()
        # noticed at its next round: nothing sent or committed on trust, until a renewal on a new
        # connection showed that nobody had taken the lease over
        assert "lost its lease connection (terminating connection due to administrator command): it sends " \
               "and commits nothing until the lease is renewed" in log, log[-2000:]
        assert "lease renewed (epoch 1): this node sends and commits again" in log, log[-2000:]
        active = cluster.active()
        raise_until_stored([p.url for p in cluster.procs], "plant/after-terminate", "p")
        [page] = rx.wait_for(1, timeout=10)
        assert page.json["message"] == "m after-terminate"
        assert active == 0 and cluster.procs[1].health()["role"] == "standby"


def test_restarting_the_database_mid_stream_loses_no_acknowledgement_and_pages_once(nodes, private_postgres):
    with WebhookReceiver() as rx:
        cluster = nodes(rx.url, {"p": {"blocks": [{"type": "notification", "profile": "hook",
                                                    "roster": "operators", "message": "m {name}"}]}}, n=2)
        urls = [p.url for p in cluster.procs]
        ids = [raise_until_stored(urls, f"plant/db-{i}", "p") for i in range(5)]
        rx.wait_for(5, timeout=10)
        with api_client(urls[1]) as api:  # through the standby
            r = api.post("/api/alarms/acknowledge", json={"eventIds": ids[:3], "user": "maria"})
            assert r.status_code == 200, r.text
        private_postgres.stop()
        try:
            with api_client(urls[0]) as api:
                r = api.post("/api/alarms", json={"source": "plant/during-outage"})
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                assert api.get("/api/health").status_code == 503
        finally:
            private_postgres.start()
        cluster.active(timeout=30)
        ids += [raise_until_stored(urls, f"plant/db-after-{i}", "p") for i in range(3)]
        rx.wait_for(8, timeout=20)
        with api_client(urls[cluster.active()]) as api:
            events = {e["id"]: e for e in api.get("/api/alarms").json()["events"]}
        for event_id in ids[:3]:
            assert event_id not in events or events[event_id]["acknowledged"], events.get(event_id)
        for event_id in ids[3:]:
            assert event_id in events and not events[event_id]["acknowledged"]
        time.sleep(1)
        keys = collections.Counter((r.json["events"][0]["source"], r.headers["idempotency-key"])
                                   for r in rx.requests if r.status < 300)
        per_source = collections.Counter(source for source, _ in keys)
        assert all(n == 1 for n in per_source.values()), per_source  # one notification per alarm
        assert len(per_source) == 8 + ("plant/during-outage" in per_source)


def test_an_sms_acknowledgement_posted_to_a_standby_acknowledges_and_cancels_the_delay(nodes, twilio_emulator):
    tw = twilio_emulator
    pipelines = {"page": {"blocks": [
        {"type": "notification", "profile": "sms", "roster": "operators", "message": "{name}"},
        {"type": "delay", "delay": "4s"},
        {"type": "notification", "profile": "sms", "roster": "supervisors", "message": "unanswered {name}"}]}}
    with WebhookReceiver() as rx:
        cluster = nodes(rx.url, pipelines, n=2, twilio={"accounts": {"main": {
            "account_sid": tw.account_sid, "auth_token": tw.auth_token, "api_base": tw.api_base,
            "numbers": tw.numbers, "rate_limit": 0}}},
            profiles={"sms": {"type": "twilio-sms"}})
        a, b = cluster.procs
        event_id = raise_until_stored([a.url], "plant/pump-sms", "page")
        maria = tw.phone(MARIA)
        maria.expect_sms(contains="pump-sms")
        # Maria's reply reaches the standby: Twilio signs the URL it posts to
        url = b.url + "/twilio/sms"
        form = {"MessageSid": "SM" + "7" * 32, "AccountSid": tw.account_sid, "From": MARIA,
                "To": tw.numbers[0], "Body": "1234"}
        r = httpx.post(url, data=form, headers={"X-Twilio-Signature": tw.sign(url, form)}, timeout=10)
        assert r.status_code == 200 and "Acknowledged" in r.text, r.text
        forged = httpx.post(url, data=form, headers={"X-Twilio-Signature": "forged"}, timeout=10)
        assert forged.status_code == 403
        with api_client(a.url) as api:
            assert api.get(f"/api/alarms/{event_id}").json()["acknowledged"] is True
            instances = api.get("/api/instances", params={"eventId": event_id}).json()["instances"]
            assert all(i["status"] != "running" for i in instances), instances
        time.sleep(5)  # past the Delay: Li is never paged
        assert not tw.find_messages(to=LI)


def test_a_second_node_on_sqlite_refuses_and_names_postgresql(tmp_path):
    db = f"sqlite:///{tmp_path / 'one.db'}"
    with WebhookReceiver() as rx:
        first = GatewayProcess(node_config(tmp_path, 0, db, rx.url, {})).start()
        try:
            second = node_config(tmp_path, 1, db, rx.url, {})
            r = subprocess.run([sys.executable, "-m", "annunciator", "run", "-c", str(second)],
                               capture_output=True, text=True, timeout=60)
        finally:
            first.stop()
    assert r.returncode == 1, r.stderr
    assert "another gateway" in r.stderr and "PostgreSQL" in r.stderr and "docs/ha.md" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_annunciator_cluster_lists_the_nodes_from_any_node(nodes):
    with WebhookReceiver() as rx:
        cluster = nodes(rx.url, {}, n=2)
        out = subprocess.run([sys.executable, "-m", "annunciator", "cluster", "--url", cluster.procs[1].url,
                              "--token", TOKEN], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "active: node-0 at " + cluster.procs[0].url in out.stdout, out.stdout
        lines = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()[2:]}
        assert lines == {"node-0": "active", "node-1": "standby"}, out.stdout
        # for load balancers: only the active answers 200
        assert httpx.get(cluster.procs[0].url + "/api/health?role=active").status_code == 200
        assert httpx.get(cluster.procs[1].url + "/api/health?role=active").status_code == 503
        metrics = httpx.get(cluster.procs[1].url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert 'annunciator_cluster_active{node="node-1"} 0' in metrics


def test_a_libpq_multi_host_url_finds_the_server_that_answers(tmp_path, private_postgres):
    """What Patroni and managed services hand out: several hosts, the first one down."""
    dead = free_port()
    url = (f"postgresql://postgres@127.0.0.1:{dead},127.0.0.1:{private_postgres.port}/postgres"
           "?target_session_attrs=read-write")
    with WebhookReceiver() as rx:
        gw = GatewayProcess(node_config(tmp_path, 0, url, rx.url, {"p": {"blocks": [
            {"type": "notification", "profile": "hook", "roster": "operators", "message": "m {name}"}]}})).start()
        try:
            raise_until_stored([gw.url], "plant/multi-host", "p")
            assert rx.wait_for(1)[0].json["message"] == "m multi-host"
            assert gw.health()["role"] == "active"
        finally:
            gw.stop()
