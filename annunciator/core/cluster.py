"""Several gateways on one PostgreSQL database: one active, the others standby.

Election and liveness go through the database. One row of ``cluster_lease`` names the active
node and its epoch; the active renews it every ``lease``/5. A standby takes the lease over, with
the epoch one higher, once it has run out in the *database's* clock (nodes' clocks never
matter), or at once when the holder is a process on this machine that no longer exists (a node
restarted after a crash need not wait out its own lease).

Safety comes from two checks, so that a paused or partitioned old active can neither commit nor
send once another node may have taken over:

* **Fencing.** Every write transaction of the active first locks the lease row (``FOR SHARE``)
  and checks that it still holds it: the holder, the epoch and an unexpired renewal. A takeover
  waits for such a transaction and then sees what it committed; a transaction after a takeover
  is rolled back (store.Fenced).
* **Local validity.** The node trusts its lease only until ``lease - margin`` after the start of
  its last successful renewal, on its own monotonic clock: always before the database would let
  another node take over. Nothing is sent outside that window (``valid``), and a watchdog steps
  the node down the moment it closes, even while a renewal hangs on a frozen database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from . import schema
from .store import Fenced, LeaseLapsed, create_engine

log = logging.getLogger(__name__)

STANDBY, ACTIVE, STOPPED = "standby", "active", "stopped"


def _identity() -> str:
    """Who this process is on this machine: enough for another node on the same machine (and in
    the same PID namespace) to tell that it has died, and not be fooled by a reused PID."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
        start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""
    return f"{socket.gethostname()}|{boot}|{ns}|{os.getpid()}|{start}"


def _dead_here(identity: str | None) -> bool:
    """Is ``identity`` a process of this machine and PID namespace that no longer exists?"""
    if not identity:
        return False
    try:
        host, boot, ns, pid, start = identity.split("|")
        mine = _identity().split("|")
    except ValueError:
        return False
    if len(mine) != 5 or [host, boot, ns] != mine[:3]:
        return False  # another machine (or container): only the lease's expiry can tell
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    # a zombie (killed, not yet reaped by its parent) runs no code; a new start time: a reused PID
    return fields[0] in ("Z", "X") or fields[19] != start


@dataclass
class LeaseView:
    """The lease as a node last read it."""

    epoch: int = 0
    holder: str | None = None
    holder_name: str | None = None
    address: str | None = None
    age: float | None = None  # seconds since the last renewal, in the database's clock
    lease: float = 0.0
    read_at: float = field(default_factory=time.monotonic)


class Lease:
    """This node's place in the cluster: its heartbeat row, and the lease while it is active.

    ``changed`` is called on the loop whenever the role or the epoch changes; the node runner
    starts or abandons the active services from there.
    """

    def __init__(self, url: str, *, name: str, address: str, public_url: str, lease: float, version: str,
                 changed: Callable[[], None] = lambda: None):
        self.node_id = uuid.uuid4().hex
        self.name, self.address, self.public_url = name, address, public_url
        self.lease = lease
        self.interval = min(max(lease / 5, 0.2), 2.0)
        # local validity ends this long before the database would let another node take over
        self.margin = min(max(lease * 0.2, 0.2), 2.0)
        self.version = version
        self.changed = changed
        self.identity = _identity()
        self.role = STANDBY
        self.epoch = 0
        self.valid_until = 0.0
        self.suspended = False  # active, but the lease lapsed: nothing is sent or committed
        self.view = LeaseView()
        self.peers: list[str] = []  # public URLs of live nodes (for Twilio signatures)
        self.failovers = 0  # terms this node took over from another node
        self.lost_reason: str | None = None
        self.took_over_from: str | None = None
        self.took_over_why = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.db_error: str | None = None
        self.started = datetime.now(UTC)
        timeout_ms = int(max(lease * 0.3, 0.5) * 1000)
        self.engine = create_engine(url, connect_args={
            "connect_timeout": max(1, int(lease / 3)),
            # a dead peer or a cut network is noticed by TCP within the lease, not in two hours
            "keepalives": 1, "keepalives_idle": max(1, int(lease / 5)), "keepalives_interval": 1,
            "keepalives_count": 3, "tcp_user_timeout": int(lease * 1000 / 2),
            "application_name": f"annunciator lease {name}"[:63]})
        self._timeouts = f"set local statement_timeout = {timeout_ms}; set local lock_timeout = {timeout_ms}"
        self._db = ThreadPoolExecutor(2, thread_name_prefix="annunciator-lease")
        self._inflight: asyncio.Future[None] | None = None
        self._stopping = False
        self._conn: Connection | None = None
        self._peers_read = 0.0
        self._yield_until = 0.0  # a node that could not start its gateway leaves the lease to others

    # --- what the rest of the node asks -----------------------------------------------------

    def valid(self, epoch: int | None = None) -> bool:
        """May this node act as the active one of ``epoch`` (default: its current one) right now?"""
        return (self.role == ACTIVE and (epoch is None or epoch == self.epoch)
                and time.monotonic() < self.valid_until)

    def term(self) -> Term:
        """The current term as active: what one gateway instance is fenced by."""
        return Term(self, self.epoch)

    def status(self) -> dict[str, Any]:
        """What /api/health reports about the cluster."""
        v = self.view
        age = None if v.age is None else round(v.age + (time.monotonic() - v.read_at), 3)
        return {"role": self.role if self.role != ACTIVE or self.valid() else STANDBY, "node": self.name,
                "epoch": self.epoch if self.role == ACTIVE else v.epoch, "leaseAge": age,
                "lease": self.lease, "suspended": self.suspended,
                "active": {"node": v.holder_name, "address": v.address, "epoch": v.epoch} if v.holder else None,
                "failovers": self.failovers}

    def active_address(self) -> str | None:
        """Where writes go: the active node's address, unless that is this node or nobody."""
        v = self.view
        if v.holder is None or v.holder == self.node_id or v.age is None or v.age > v.lease:
            return None
        return v.address

    # --- the loop ---------------------------------------------------------------------------

    def join(self) -> None:
        """The first round before anything is served: a node alone (or restarted after a crash)
        is active from its first answer. Runs in the caller's thread."""
        self._round(time.monotonic())

    async def run(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        last = 0.0
        while not self._stopping:
            now = time.monotonic()
            if self.role == ACTIVE and now >= self.valid_until and not self.suspended:
                self.suspended = True
                why = self.db_error or "the database did not answer, or this process was paused"
                log.critical("cluster: this node (%s) could not renew its lease in time (lease %gs, less a %gs "
                             "margin): %s. It sends and commits nothing until the lease is renewed; if another "
                             "node has taken over meanwhile, it steps down.", self.name, self.lease, self.margin, why)
            if now - last >= self.interval and (self._inflight is None or self._inflight.done()):
                last = now
                before = (self.role, self.epoch)
                self._inflight = loop.run_in_executor(self._db, self._round, now)
                self._inflight.add_done_callback(functools.partial(self._after_round, before=before))
            await asyncio.sleep(min(0.1, self.interval / 2))

    def _after_round(self, f: asyncio.Future[None], *, before: tuple[str, int]) -> None:
        if not f.cancelled() and f.exception() is not None:
            log.warning("cluster lease round failed: %s", f.exception())
        if (self.role, self.epoch) != before:
            self.changed()

    def _round(self, started: float) -> None:
        """One renewal (active) or campaign (standby), and the heartbeat; in a lease thread.

        The lease keeps one connection. If it breaks while the node is active (the server
        restarted, the backend was terminated, the network cut), the node steps down at once
        rather than trusting a lease it can no longer vouch for; once the database answers again
        it wins its own lease back (a new epoch: a fresh gateway recovered from the database) or
        another node takes over when the lease runs out."""
        try:
            conn = self._conn
            if conn is None or conn.invalidated or conn.closed:
                conn = self._conn = self.engine.connect()
            with conn.begin():
                # a round must end well within the lease, whatever holds the row or the server
                conn.exec_driver_sql(self._timeouts)
                if self.role == ACTIVE:
                    self._renew(conn, started)
                else:
                    self._campaign(conn, started)
                self._heartbeat(conn)
                self._read(conn)
            self.db_error = None
        except sa.exc.DBAPIError as exc:
            self.db_error = str(exc.orig).strip().splitlines()[0][:200] if exc.orig else str(exc)[:200]
            log.warning("cluster: the database did not answer the lease round: %s", self.db_error)
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
            if self.role == ACTIVE and not self.suspended:
                # the session that vouched for the lease is gone: nothing is sent on trust until
                # a renewal on a new connection shows nobody took the lease over
                self.valid_until = 0.0
                self.suspended = True
                log.critical("cluster: this node (%s) lost its lease connection (%s): it sends and commits "
                             "nothing until the lease is renewed", self.name, self.db_error)

    def _renew(self, conn: Connection, started: float) -> None:
        # No expiry condition: while this node still holds the lease with its epoch, nobody else
        # has taken over (a takeover changes both), so a lapsed lease may be renewed and the term
        # goes on with what it queued during a database outage. Once another node holds it, the
        # term is over for good.
        row = conn.execute(sa.text(
            "update cluster_lease set renewed = clock_timestamp() where id = 1 and holder = :me "
            "and epoch = :epoch returning epoch"), {"me": self.node_id, "epoch": self.epoch}).first()
        if row is None:
            self._lose(f"another node took the lease over (this node's epoch {self.epoch})")
            return
        if self.role == ACTIVE:
            self.valid_until = max(self.valid_until, started + self.lease - self.margin)
            if self.suspended and time.monotonic() < self.valid_until:
                self.suspended = False
                log.warning("cluster: lease renewed (epoch %d): this node sends and commits again", self.epoch)

    def _campaign(self, conn: Connection, started: float) -> None:
        conn.execute(pg_insert(schema.cluster_lease).values(id=1, epoch=0, lease=self.lease)
                     .on_conflict_do_nothing(index_elements=["id"]))
        row = conn.execute(sa.text(
            "select epoch, holder, holder_name, renewed is null or renewed < clock_timestamp() - "
            "make_interval(secs => lease) as expired, (select identity from cluster_nodes n "
            "where n.id = l.holder) from cluster_lease l where id = 1 for update")).one()
        epoch, holder, holder_name, expired, identity = row
        # this node's own lease, kept after it stepped down (a renewal that came back too late):
        # its old term's gateway is gone, so a new term may start at once
        mine = holder == self.node_id
        dead = holder is not None and not expired and not mine and _dead_here(identity)
        if holder is not None and not expired and not dead and not mine:
            return
        if time.monotonic() < self._yield_until:
            return
        epoch += 1
        conn.execute(sa.text(
            "update cluster_lease set epoch = :epoch, holder = :me, holder_name = :name, address = :address, "
            "renewed = clock_timestamp(), lease = :lease where id = 1"),
            {"epoch": epoch, "me": self.node_id, "name": self.name, "address": self.address, "lease": self.lease})
        self.epoch = epoch
        self.role = ACTIVE
        self.suspended = False
        self.valid_until = started + self.lease - self.margin
        self.lost_reason = None
        if holder is not None and not mine:
            self.failovers += 1
        self.took_over_from = holder_name if holder is not None and not mine else None
        why = ("it was this node's own" if mine else "its process is gone" if dead else "its lease ran out") \
            if holder is not None else "it was free"
        self.took_over_why = why
        log.warning("cluster: this node (%s) is now ACTIVE, epoch %d (took the lease from %s: %s)",
                    self.name, epoch, holder_name or "nobody", why)

    def step_down(self, why: str) -> None:
        """Give the lease up for a while (this node could not serve its term)."""
        self._yield_until = time.monotonic() + 2 * self.lease
        self._lose(why)

    def _heartbeat(self, conn: Connection) -> None:
        now = datetime.now(UTC)
        row = {"name": self.name, "address": self.address, "public_url": self.public_url,
               "host": socket.gethostname(), "pid": os.getpid(), "identity": self.identity,
               "version": self.version, "role": self.role if not self._stopping else STOPPED,
               "epoch": self.epoch or None, "heartbeat": now}
        conn.execute(pg_insert(schema.cluster_nodes).values(id=self.node_id, started=self.started, **row)
                     .on_conflict_do_update(index_elements=["id"], set_=row))

    def _read(self, conn: Connection) -> None:
        row = conn.execute(sa.text(
            "select epoch, holder, holder_name, address, extract(epoch from clock_timestamp() - renewed), lease "
            "from cluster_lease where id = 1")).first()
        if row is not None:
            self.view = LeaseView(epoch=row[0], holder=row[1], holder_name=row[2], address=row[3],
                                  age=float(row[4]) if row[4] is not None else None, lease=float(row[5]))
        self.peers = [r[0] for r in conn.execute(sa.text(
            "select distinct public_url from cluster_nodes where heartbeat > :since"),
            {"since": datetime.fromtimestamp(time.time() - 3600, UTC)})]

    def refresh_peers(self) -> bool:
        """Read the nodes' public URLs now (a webhook forwarded by a node that joined since the
        last round); at most once a second. True when the list changed."""
        now = time.monotonic()
        if now - self._peers_read < 1.0:
            return False
        self._peers_read = now
        before = list(self.peers)
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql(self._timeouts.replace("set local", "set"))
                self._read(conn)
        except sa.exc.DBAPIError as exc:
            log.warning("cluster: could not read the nodes: %s", exc.orig)
        return self.peers != before

    def _lose(self, why: str) -> None:
        if self.role != ACTIVE:
            return
        log.critical("cluster: this node (%s) is no longer active: %s. It sends and commits nothing more "
                     "and returns to standby.", self.name, why)
        self.role = STANDBY
        self.valid_until = 0.0
        self.suspended = False
        self.lost_reason = why
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.changed)

    async def leave(self) -> None:
        """A clean stop: release the lease so a standby takes over at once, not after it runs out."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._inflight), self.lease)

        def release() -> None:
            with self.engine.begin() as conn:
                conn.execute(sa.text("update cluster_lease set holder = null, renewed = null where id = 1 "
                                     "and holder = :me and epoch = :epoch"), {"me": self.node_id, "epoch": self.epoch})
                conn.execute(sa.text("update cluster_nodes set role = 'stopped', heartbeat = :now where id = :me"),
                             {"me": self.node_id, "now": datetime.now(UTC)})

        was_active = self.role == ACTIVE
        self.role = STANDBY
        self.valid_until = 0.0
        try:
            await asyncio.wait_for(loop.run_in_executor(self._db, release), self.lease)
            if was_active:
                log.warning("cluster: released the lease (epoch %d) for a standby to take over", self.epoch)
        except Exception as exc:
            log.warning("cluster: could not release the lease (a standby takes over when it runs out): %s", exc)
        self._db.shutdown(wait=False, cancel_futures=True)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self.engine.dispose()


@dataclass(frozen=True)
class Term:
    """One term of this node as the active one. A gateway built for a term sends and commits only
    while that term lasts: if the node loses the lease and wins it again, the new term has a new
    epoch, and the old gateway (still shutting down) stays fenced."""

    lease: Lease
    epoch: int

    def valid(self) -> bool:
        return self.lease.valid(self.epoch)

    def over(self) -> bool:
        """Has this term ended for good (another node took over, or this node stepped down)?"""
        return self.lease.role != ACTIVE or self.lease.epoch != self.epoch

    def fence(self, conn: Connection) -> None:
        """The first statement of every write transaction of the active (store.fence)."""
        if self.over():
            raise Fenced(f"this node's term (epoch {self.epoch}) is over")
        row = conn.exec_driver_sql(
            "select holder = %(me)s and epoch = %(epoch)s, renewed > clock_timestamp() - make_interval(secs => lease) "
            "from cluster_lease where id = 1 for share", {"me": self.lease.node_id, "epoch": self.epoch}).first()
        if row is None or not row[0]:
            raise Fenced(f"another node holds the lease (this node's epoch {self.epoch} is over)")
        if not row[1] or not self.valid():
            raise LeaseLapsed(f"the lease of epoch {self.epoch} lapsed; waiting for it to be renewed")

    def lost(self) -> None:
        """The store found itself fenced: step down now (the lease loop would, a moment later)."""
        if self.lease.epoch == self.epoch:
            self.lease._lose("a write was fenced: another node holds the lease")


def nodes(conn: Connection, lease: float) -> list[dict[str, Any]]:
    """Every node seen in the last day, newest heartbeat first, with the lease: for
    ``annunciator cluster`` and the console."""
    lrow = conn.execute(sa.text(
        "select epoch, holder, extract(epoch from clock_timestamp() - renewed), lease from cluster_lease "
        "where id = 1")).first()
    holder = lrow[1] if lrow is not None else None
    rows = conn.execute(sa.text(
        "select id, name, address, host, pid, version, role, epoch, started, heartbeat, "
        "extract(epoch from clock_timestamp() - heartbeat) as age from cluster_nodes "
        "where heartbeat > clock_timestamp() - interval '1 day' order by heartbeat desc")).all()
    out = []
    for r in rows:
        role = r.role
        if role != STOPPED and float(r.age) > 3 * lease:
            role = "gone"  # no heartbeat for a while: crashed, or cut off
        if role == ACTIVE and r.id != holder:
            role = STANDBY  # its last heartbeat predates a takeover
        out.append({"id": r.id, "node": r.name, "address": r.address, "host": r.host, "pid": r.pid,
                    "version": r.version, "role": role, "epoch": r.epoch, "started": r.started.isoformat(),
                    "heartbeat": r.heartbeat.isoformat(), "heartbeatAge": round(float(r.age), 3),
                    "holdsLease": r.id == holder})
    return out


def shared_secret(conn: Connection, mine: bytes) -> bytes:
    """The secret every node uses: the one stored by the first node to start, else ``mine``."""
    conn.execute(pg_insert(schema.shared_secrets).values(name="gateway", value=mine.decode(),
                                                         created=datetime.now(UTC))
                 .on_conflict_do_nothing(index_elements=["name"]))
    conn.commit()
    stored = conn.execute(sa.select(schema.shared_secrets.c.value)
                          .where(schema.shared_secrets.c.name == "gateway")).scalar_one()
    if stored.encode() != mine:
        log.warning("cluster: this node's secret file differs from the secret the cluster keeps in the "
                    "database; using the database's (PINs and console sessions work on every node)")
    return str(stored).encode()
