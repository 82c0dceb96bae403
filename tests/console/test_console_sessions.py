"""Console sessions that outlive the process: sign-outs stored in ``console_revocations`` and
refused after a restart; and the admin page's cluster section (single node here: the cluster
itself is tested in tests/core/test_cluster.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from test_console import browser, console_section, sign_in

from annunciator.console.auth import Session, Sessions
from annunciator.console.plugin import console_of
from annunciator.core import schema

COOKIE = "annunciator_console"


class _Recorder:
    """Stands in for the store: remembers what was queued."""

    def __init__(self) -> None:
        self.rows: list[tuple[sa.Table, dict[str, Any]]] = []

    def insert(self, table: sa.Table, row: dict[str, Any]) -> None:
        self.rows.append((table, row))


def test_a_revoked_sid_is_stored_once_and_expired_ones_are_not_restored():
    store = _Recorder()
    sessions = Sessions(b"k" * 32, 3600, store)  # type: ignore[arg-type]
    session = Session(user="otto")
    cookie = sessions.dump(session)
    assert sessions.load(cookie) is not None
    sessions.revoke(session)
    sessions.revoke(session)  # a second sign-out racing the first: no second row for the key
    assert sessions.load(cookie) is None
    assert [(t.name, r["sid"]) for t, r in store.rows] == [("console_revocations", session.sid)]
    until = store.rows[0][1]["until"]
    assert until.tzinfo is not None and until.timestamp() >= session.issued + 3600

    fresh = Sessions(b"k" * 32, 3600)
    fresh.restore({session.sid: until.timestamp(), "gone": time.time() - 1})
    assert fresh.load(cookie) is None and "gone" not in fresh.revoked


def test_a_signed_out_cookie_stays_refused_after_a_restart(gateway_config, start_gateway):
    gateway_config["console"] = console_section()
    gateway_config["pipelines"] = {"wait": {"blocks": [{"type": "delay", "delay": "1h"}]}}
    gw = start_gateway(gateway_config)
    otto, token = sign_in(gw, "otto")
    signed_out = otto.cookies.get(COOKIE)
    vera, _ = sign_in(gw, "vera")
    kept = vera.cookies.get(COOKIE)
    assert otto.post("/console/logout", data={"csrf": token}).status_code == 303

    def stored() -> list[Any]:
        t = schema.console_revocations
        return gw.call(lambda: gw.gateway.store.read(lambda conn: conn.execute(sa.select(t.c.sid)).all()))

    assert len(stored()) == 1  # stored before the sign-out was answered

    gw.stop()  # a new gateway on the same database (and secret file)
    gw = start_gateway(gateway_config)
    replay = browser(gw)
    replay.cookies.set(COOKIE, signed_out, path="/console")
    page = replay.get("/console/alarms")
    assert page.status_code == 303 and page.headers["location"].startswith("/console/login")
    assert replay.get("/console/alarms/rows", headers={"X-Console-Fragment": "1"}).status_code == 401
    # a session nobody signed out still works on the new gateway
    still = browser(gw)
    still.cookies.set(COOKIE, kept, path="/console")
    assert still.get("/console/alarms").status_code == 200
    assert len(stored()) == 1


def test_admin_page_says_single_node_without_a_cluster(gateway_config, start_gateway):
    gateway_config["console"] = console_section()
    gw = start_gateway(gateway_config)
    ada, _ = sign_in(gw, "ada")
    page = ada.get("/console/admin")
    assert page.status_code == 200
    assert "<h2>Cluster</h2>" in page.text and "Single node" in page.text
    assert '<table class="cluster">' not in page.text


def test_admin_cluster_table_escapes_what_the_nodes_report(gateway_config, start_gateway):
    """The template alone, with nodes as core.cluster.nodes returns them (no cluster needed)."""
    gateway_config["console"] = console_section()
    gw = start_gateway(gateway_config)
    console = console_of(gw.gateway.services)
    assert console is not None
    evil = "<script>alert(1)</script>"
    cluster = {"epoch": 7, "error": "", "status": {
        "role": "active", "node": evil, "epoch": 7, "leaseAge": 0.4, "lease": 10.0, "active": None, "failovers": 2},
        "nodes": [{"node": evil, "address": "http://a\"><b>x", "role": "active", "epoch": 7, "heartbeatAge": 1.2,
                   "holdsLease": True},
                  {"node": "b", "address": "http://b:8080", "role": "gone", "epoch": None, "heartbeatAge": 95.0,
                   "holdsLease": False}]}
    ctx = SimpleNamespace(user=None, nav=None, session=Session())
    html = console.render("admin.html", ctx=ctx, cluster=cluster, users=[], settings=console.settings, people=[],
                          plugins=[], notices=[], profiles=[], pipelines=[])
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>x" not in html
    table = html[html.index('<table class="cluster">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 3 and table.count("holds the lease") == 1
    assert "1m 35s ago" in table and "<td>gone</td>" in table
    assert "Single node" not in html
