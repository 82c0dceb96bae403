"""Persistence: SQLite by default, PostgreSQL by URL, through SQLAlchemy 2 and Alembic.

Writes are group-committed. Callers queue inserts and updates from the event loop; one writer
thread commits everything queued so far in a single transaction, and whatever arrives meanwhile
goes into the next one. ``await store.commit()`` returns once what the caller queued is durable;
``after_commit`` runs a callback at that point (notifications are sent only then, so a crash can
never send what was not recorded). One transaction per alarm could not keep up with a flood.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from . import sanitize, schema, units
from .errors import AlreadyRunning, Refused, Unavailable
from .units import Unit

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    # psycopg 3 is the driver we ship; a plain postgresql:// URL would ask for psycopg2.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return _multi_host("postgresql+psycopg://" + url[len(prefix):])
    return url


def _multi_host(url: str) -> str:
    """libpq's multi-host form (``user@db-a:5432,db-b:5432/name?target_session_attrs=read-write``,
    what Patroni and managed services hand out) as SQLAlchemy spells it: one ``host=`` per server."""
    scheme, _, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return url
    path, _, query = tail.partition("?")
    params = "&".join(f"host={h}" for h in hosts.split(",") if h)
    query = f"{params}&{query}" if query else params
    return f"{scheme}://{userinfo}{at}/{path}?{query}"


def create_engine(url: str, connect_args: dict[str, Any] | None = None) -> Engine:
    url = normalize_url(url)
    # A file database needs no liveness ping; a server does (restarts, idle timeouts).
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, json_serializer=sanitize.dumps)
    else:
        # A server needs a liveness ping (restarts, idle timeouts) and a bounded connect: during
        # an outage a reader must give up within the read timeout rather than hang in connect().
        engine = sa.create_engine(url, pool_pre_ping=True,
                                  connect_args={"connect_timeout": 5, **(connect_args or {})},
                                  json_serializer=sanitize.dumps)
    if engine.dialect.name == "sqlite":
        @sa_event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the writer; NORMAL keeps every commit across a process
            # crash (kill -9), trading only the last commits on power loss for speed.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            # No checkpoint inside a commit: it fsyncs and stalled commits (and so notifications)
            # by up to 150 ms. Store.checkpoint() runs them off the commit path instead.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()
    return engine


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # several nodes starting at once: one migrates, the others wait here and then find
            # nothing left to do (the lock goes with the transaction, however it ends)
            conn.exec_driver_sql("select pg_advisory_xact_lock(hashtext('annunciator:migrations'))")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class _Batch:
    """Rows queued since the last flush, each remembered with the *unit* that queued it.

    A unit (core.units) is one piece of work: a request, a timer, a delivery. A row queued outside
    any unit is a unit of its own. Units that touch the same keyed row are merged, since their
    changes stand or fall together. When a commit fails for a reason other than a lost connection
    (a value the database refuses), the batch is written again group by group (halving it until
    the offending groups are found), so only they fail and their neighbours are stored.
    """

    __slots__ = ("callbacks", "dependents", "failed", "future", "groups", "insert_units", "inserts",
                 "on_refused", "owners", "parent", "refused_keys", "retried", "root_unit", "updates")

    def __init__(self, loop: asyncio.AbstractEventLoop | None):
        self.inserts: dict[sa.Table, dict[Any, dict[str, Any]] | list[dict[str, Any]]] = {}
        self.updates: dict[sa.Table, dict[Any, dict[str, Any]]] = {}
        self.callbacks: list[tuple[Any, Callable[[], Any]]] = []
        self.future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None
        # unkeyed inserts: the unit of each row, in step with inserts[table]
        self.insert_units: dict[sa.Table, list[Any]] = {}
        # keyed inserts and updates: (table, key) -> the unit that first touched the row
        self.owners: dict[tuple[sa.Table, Any], Any] = {}
        self.parent: dict[Any, Any] = {}  # union-find over units that share a row
        self.failed: dict[Any, BaseException] = {}  # unit group root -> why its rows were refused
        self.groups: list[_Batch] | None = None  # set once the batch is written group by group
        self.root_unit: Any = None  # of a group: the unit its units were merged into
        # keyed inserts: what to undo when the database refuses the row (forget the alarm, ...)
        self.on_refused: dict[tuple[sa.Table, Any], Callable[[], Any]] = {}
        # keyed inserts: units (of later batches) that acted on the row before it was stored
        self.dependents: dict[tuple[sa.Table, Any], list[Unit]] = {}
        self.refused_keys: list[tuple[sa.Table, Any]] = []  # the keyed inserts refused
        self.retried = False  # a write failed on the connection: its COMMIT may have happened

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.callbacks)

    def root(self, unit: Any) -> Any:
        parent = self.parent
        while parent.get(unit, unit) is not unit:
            nxt = parent[unit]
            parent[unit] = parent.get(nxt, nxt)
            unit = nxt
        return unit

    def own(self, table: sa.Table, key: Any, unit: Any) -> None:
        owner = self.owners.setdefault((table, key), unit)
        if owner is not unit:
            a, b = self.root(owner), self.root(unit)
            if a is not b:
                self.parent[b] = a

    def units(self) -> set[Any]:
        """Every unit with a row, a callback or a dependency in this batch."""
        found = set(self.parent) | set(self.owners.values())
        found.update(u for _, u in self.callbacks)
        for us in self.insert_units.values():
            found.update(us)
        found.discard(None)
        return found

    def split(self) -> list[_Batch]:
        """One sub-batch per group of units, in the order the groups first queued a row."""
        groups: dict[Any, _Batch] = {}

        def group(unit: Any) -> _Batch:
            r = self.root(unit)
            g = groups.get(r)
            if g is None:
                g = groups[r] = _Batch(None)
                g.root_unit = r
            return g

        for table, pending in self.inserts.items():
            if isinstance(pending, dict):
                for key, row in pending.items():
                    g = group(self.owners[(table, key)])
                    g.inserts.setdefault(table, {})[key] = row
            else:
                for unit, row in zip(self.insert_units[table], pending, strict=True):
                    g = group(unit)
                    g.inserts.setdefault(table, []).append(row)  # type: ignore[union-attr]
        for table, updates in self.updates.items():
            for key, values in updates.items():
                group(self.owners[(table, key)]).updates.setdefault(table, {})[key] = values
        return list(groups.values())

    @staticmethod
    def merged(groups: list[_Batch]) -> _Batch:
        """The rows of several groups as one batch, to write them in one transaction."""
        out = _Batch(None)
        for g in groups:
            for table, pending in g.inserts.items():
                if isinstance(pending, dict):
                    out.inserts.setdefault(table, {}).update(pending)  # type: ignore[union-attr]
                else:
                    out.inserts.setdefault(table, []).extend(pending)  # type: ignore[union-attr]
            for table, updates in g.updates.items():
                out.updates.setdefault(table, {}).update(updates)
        return out

    def first_key(self) -> tuple[sa.Table, Any] | None:
        """A keyed row this batch inserts: present in the database only if the batch committed."""
        for table in _ORDER:
            pending = self.inserts.get(table)
            if isinstance(pending, dict) and pending:
                return table, next(iter(pending))
        return None


# Tables whose rows are updated later by primary key; their pending inserts are kept by key so
# a later update in the same batch folds into the insert instead of costing a second statement.
_KEYED = {schema.alarm_events, schema.pipeline_instances, schema.notifications, schema.shelves,
          schema.oncall_overrides, schema.messages, schema.opt_outs, schema.pin_sessions}
_FIRST = [schema.users, schema.alarm_events, schema.shelves, schema.pipeline_instances, schema.notifications]
# every table is written: one added to schema.py is never silently left out of a batch
_ORDER = _FIRST + [t for t in schema.metadata.sorted_tables if t not in _FIRST]


class Store:
    """The gateway's database: one writer thread with group commit, readers on a pool."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.engine = create_engine(self.url)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="annunciator-writer")
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="annunciator-reader")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: _Batch | None = None
        self._flushing = False
        self._flush_task: asyncio.Future[None] | None = None
        self._checkpoint_task: asyncio.Future[None] | None = None
        self._writer_conn: Connection | None = None
        self._plans: dict[tuple[sa.Table, tuple[str, ...]], Any] = {}
        self._before_flush: list[Callable[[], Any]] = []
        self._lock: Any = None
        self._inflight: _Batch | None = None
        self.rows_refused = 0
        # refused units still alive (their work may go on queueing rows after an await); weak, so
        # a finished request leaves nothing behind, and the flush checks batches only while any live
        self._refused_units: weakref.WeakSet[Unit] = weakref.WeakSet()
        self.batches_written = 0
        self.rows_written = 0
        # how long a read (with the commit it waits for) may take before it answers Unavailable
        self.read_timeout = 10.0
        # when writes started failing for a lost connection (None: the database answers)
        self.outage_since: datetime | None = None
        self.outage_error = ""
        # set by the cluster (PostgreSQL): runs first in every write transaction and raises
        # Fenced unless this node still holds the lease; once fenced, nothing more is written
        self.fence: Callable[[Connection], None] | None = None
        self.on_fenced: Callable[[], None] = lambda: None
        self.fenced: str | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def lock(self) -> None:
        """Claim the database for this gateway, or raise AlreadyRunning.

        Two gateways on one SQLite file would both recover and send the same pending
        notifications: people would be paged twice. SQLite gets an exclusive lock on a file
        beside the database, which the kernel releases when this process dies, however it dies.
        On PostgreSQL several gateways share the database as a cluster: the lease (core.cluster)
        decides which one is active, and ``fence`` keeps every other one from committing.
        """
        if self._lock is not None:
            return
        url = sa.engine.make_url(self.url)
        if self.dialect != "sqlite" or not url.database or url.database == ":memory:":
            self._lock = True
            return
        import fcntl

        path = Path(url.database + ".lock")
        f = open(path, "a+")  # noqa: SIM115 - held open for the gateway's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            f.close()
            raise AlreadyRunning(
                f"another gateway (pid {owner}) is already using {url.database}; stop it first. "
                "SQLite serves one gateway only: several gateways (a standby that takes over) need "
                "PostgreSQL, e.g. gateway.database: postgresql://user@host/annunciator (docs/ha.md)") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None and lock is not True:
            lock.close()

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lock()
        self._loop = loop
        self._batch = _Batch(loop)
        migrate(self.engine)
        if self.dialect == "sqlite":
            loop.call_soon_threadsafe(self._start_checkpoints)

    def _start_checkpoints(self) -> None:
        self._checkpoint_task = asyncio.ensure_future(self._checkpoint_loop())

    async def _checkpoint_loop(self, every: float = 1.0) -> None:
        loop = self._loop
        assert loop is not None
        written = self.batches_written
        while True:
            await asyncio.sleep(every)
            if self.batches_written != written:
                written = self.batches_written
                try:
                    await loop.run_in_executor(self._readers, self.checkpoint, "PASSIVE")
                except Exception as exc:  # a failed checkpoint loses nothing; the next one retries
                    log.warning("WAL checkpoint failed: %s", exc)

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        """Copy committed WAL pages into the database file (SQLite only)."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})")

    async def close(self) -> None:
        if self.fenced is None:
            await self.commit()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
        if self.dialect == "sqlite":
            await asyncio.get_running_loop().run_in_executor(self._readers, self.checkpoint, "TRUNCATE")
        if self.fenced is not None:
            # a node that lost the lease may have a writer stuck on a database that stopped
            # answering: it is left to time out; nothing it holds may be written anyway
            self._writer.shutdown(wait=False, cancel_futures=True)
            self._readers.shutdown(wait=False, cancel_futures=True)
            self._unlock()
            self.engine.dispose()
            return
        if self._writer_conn is not None:
            self._writer.submit(self._writer_conn.close).result()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._unlock()
        self.engine.dispose()

    # --- writing ---------------------------------------------------------------------------

    def insert(self, table: sa.Table, row: dict[str, Any],
               on_refused: Callable[[], Any] | None = None, *, shared: bool = False) -> None:
        """Queue a new row. ``on_refused`` (keyed tables) runs on the loop if the database refuses
        the row: the caller undoes what it did in memory, so memory never gets ahead of the store.
        A ``shared`` row (a consolidated message many alarms join) belongs to no caller's unit:
        one refused caller must not take it, and so every other caller, down with it."""
        batch = self._current()
        unit = object() if shared else _unit()
        if table in _KEYED:
            rows = batch.inserts.setdefault(table, {})
            key = _key(table, row)
            rows[key] = row
            batch.own(table, key, unit)
            if on_refused is not None:
                batch.on_refused[(table, key)] = on_refused
        else:
            batch.inserts.setdefault(table, []).append(row)  # type: ignore[union-attr]
            batch.insert_units.setdefault(table, []).append(unit)

    def depend(self, table: sa.Table, key: Any) -> None:
        """The current unit acts on a row that may not be stored yet (a duplicate raise answered
        with an event another request is storing): if that row is refused, so is this unit."""
        unit = units.current()
        if unit is None:
            return
        batch = self._batch  # not _current(): depending on a row writes nothing, so no flush is due
        if batch is not None and (table, key) in batch.owners:
            batch.own(table, key, unit)
            return
        inflight = self._inflight
        if inflight is not None and (table, key) in inflight.owners:
            inflight.dependents.setdefault((table, key), []).append(unit)

    def update(self, table: sa.Table, key: Any, values: dict[str, Any], *, shared: bool = False) -> None:
        """Queue ``values`` for the row with primary key ``key`` (``shared``: see insert)."""
        batch = self._current()
        if shared:
            batch.owners.setdefault((table, key), object())
        else:
            batch.own(table, key, _unit())
        pending = batch.inserts.get(table)
        if pending is not None and key in pending:
            pending[key].update(values)
            return
        batch.updates.setdefault(table, {}).setdefault(key, {}).update(values)

    def before_flush(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` on the loop just before each batch is taken for writing, so a caller
        that buffers rows (the engine's trace) can queue them as late as possible."""
        self._before_flush.append(callback)

    def _run_before_flush(self) -> None:
        for cb in self._before_flush:
            cb()

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` on the event loop once everything queued so far is committed; it is
        dropped (and logged) if the database refused the rows its caller queued."""
        self._current().callbacks.append((units.current(), callback))

    async def commit(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is durable.

        With ``timeout``, raise Unavailable when the database does not answer by then (the rows
        stay queued and are written when it returns): a webhook must not hang through an outage.

        That includes a batch already taken for writing: a caller's rows may be in it (commit()
        can start a loop iteration after they were queued, e.g. under asyncio.wait_for), and
        returning early would let an API answer "stored" before they are.

        Raises Refused when the database refused rows this task queued (its neighbours in the
        batch are stored all the same).
        """
        self._run_before_flush()
        batch = self._current()
        target = batch if batch else self._inflight
        if target is not None and target.future is not None:
            if timeout is None:
                await asyncio.shield(target.future)
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(target.future)
                except TimeoutError:
                    raise Unavailable("the database is not answering; the change is queued and will be "
                                      "stored when it returns") from None
        unit = units.current()
        if unit is not None and unit.refused is not None:
            raise Refused(f"the database refused this change: {_reason(unit.refused)}") from unit.refused

    def touch(self) -> None:
        """Make sure a flush will run soon (for rows a before_flush callback will add)."""
        self._current()

    def _current(self) -> _Batch:
        batch = self._batch
        assert batch is not None, "store not open"
        if not self._flushing:
            self._flushing = True
            # the flush (and the callbacks it runs) belongs to no caller's unit
            self._loop.call_soon(self._start_flush, context=units.outside())  # type: ignore[union-attr]
        return batch

    def _start_flush(self) -> None:
        # keep a reference: the loop holds tasks weakly, and a collected flush would hang commit()
        self._flush_task = asyncio.ensure_future(self._flush_loop())

    async def _flush_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        delay = 0.5
        try:
            while True:
                self._run_before_flush()
                if not self._batch:
                    break
                batch, self._batch = self._batch, _Batch(loop)
                self._inflight = batch
                self._drop_refused_work(batch)
                while True:
                    if self.fenced is not None:
                        self._refuse_fenced(batch)
                        break
                    try:
                        await loop.run_in_executor(self._writer, self._write, batch)
                        if self.outage_since is not None:
                            log.warning("database answers again (unreachable since %s)",
                                        self.outage_since.isoformat(timespec="seconds"))
                            self.outage_since = None
                        break
                    except Fenced as exc:
                        self.fenced = str(exc)
                        log.critical("%s: this gateway commits and sends nothing more", exc)
                        units.run_outside(self.on_fenced)
                        self._refuse_fenced(batch)
                        break
                    except (sa.exc.OperationalError, _Transient, LeaseLapsed) as exc:
                        # The database is unreachable (or read-only during a failover): keep the batch
                        # and try again; losing an alarm is worse than holding callers for a while.
                        log.error("database write failed, retrying in %.1fs: %s", delay, exc.orig)
                        if self.outage_since is None:
                            self.outage_since = datetime.now(UTC)
                        self.outage_error = str(exc.orig).strip().splitlines()[0][:300] if str(exc.orig) else ""
                        batch.retried = True
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 10.0)
                    except Exception as exc:
                        log.exception("database write failed; every caller waiting on this batch gets the error")
                        assert batch.future is not None
                        batch.future.set_exception(exc)
                        batch.future.exception()  # mark retrieved: shielded waiters re-raise it
                        break
                self._inflight = None
                assert batch.future is not None
                if not batch.future.done():
                    self._settle_refused(batch)
                    batch.future.set_result(None)
                    for unit, cb in batch.callbacks:
                        if unit is not None and unit.refused is not None:
                            continue  # its rows are not stored: nothing may act as if they were
                        try:
                            contextvars.copy_context().run(cb)
                        except Exception:
                            log.exception("after-commit callback failed")
                delay = 0.5
        finally:
            self._flushing = False

    def fence_now(self, why: str) -> None:
        """Write nothing more (the node lost the lease): queued and later rows are refused."""
        if self.fenced is None:
            self.fenced = why

    def _refuse_fenced(self, batch: _Batch) -> None:
        """A node that lost the lease: its callers hear it is unavailable (the active node will do
        the work: requests are safe to repeat) and its after-commit callbacks (sends) never run."""
        assert batch.future is not None
        batch.callbacks.clear()
        if not batch.future.done():
            batch.future.set_exception(Unavailable(f"this gateway is no longer the active node ({self.fenced}); "
                                                   "try again: another node takes over"))
            batch.future.exception()

    def _drop_refused_work(self, batch: _Batch) -> None:
        """Rows queued by work already refused in an earlier batch (it went on after an ``await``
        before it learnt so) are dropped: they belong to a change that was never stored."""
        if not self._refused_units:
            return
        stale: dict[Any, BaseException] = {}
        for u in batch.units():
            if isinstance(u, Unit) and u.refused is not None:
                stale.setdefault(batch.root(u), u.refused)
        if not stale:
            return
        groups = batch.split()
        batch.groups = []
        for g in groups:
            if g.root_unit in stale:
                batch.failed[g.root_unit] = stale[g.root_unit]
                self._refuse_group(batch, g, "already refused")
            else:
                batch.groups.append(g)

    def _settle_refused(self, batch: _Batch) -> None:
        """Refuse every unit of a refused group (its commit() raises, its callbacks are skipped),
        then let the owners of refused rows undo them in memory."""
        if not batch.failed:
            return
        for u in batch.units():
            if isinstance(u, Unit) and batch.root(u) in batch.failed:
                u.refuse(batch.failed[batch.root(u)])
                self._refused_units.add(u)
        # alarms before their instances before their notifications: an undo may look at the others
        for key in sorted(batch.refused_keys, key=lambda k: _ORDER.index(k[0])):
            for dependent in batch.dependents.get(key, ()):
                dependent.refuse(Refused(f"it depends on a {key[0].name} row the database refused"))
                self._refused_units.add(dependent)
            undo = batch.on_refused.get(key)
            if undo is not None:
                try:
                    units.run_outside(undo)
                except Exception:
                    log.exception("undoing a refused %s row failed", key[0].name)

    def _refuse_group(self, batch: _Batch, group: _Batch, why: str) -> None:
        rows = sum(len(v) for v in group.inserts.values()) + sum(len(v) for v in group.updates.values())
        self.rows_refused += rows
        for table, pending in group.inserts.items():
            if isinstance(pending, dict):
                batch.refused_keys.extend((table, k) for k in pending)
        tables = sorted({t.name for t in group.inserts} | {t.name for t in group.updates})
        log.error("database refused %d row(s) (%s): %s; the rows beside them in the batch are stored",
                  rows, ", ".join(tables), why)

    def _write(self, batch: _Batch) -> None:
        # The writer thread keeps one connection: a pool checkout per batch cost as much as the
        # batch itself at one alarm per request.
        conn = self._writer_conn
        if conn is None or conn.invalidated or conn.closed:
            conn = self._writer_conn = self.engine.connect()
        try:
            if batch.groups is None:
                if batch.retried and self._committed(conn, batch):
                    return
                try:
                    self._write_rows(conn, batch)
                    return
                except (sa.exc.OperationalError, Fenced, LeaseLapsed):
                    raise
                except sa.exc.DBAPIError as exc:
                    if not _refusal(exc):
                        raise _Transient(exc) from exc
                    self._split(conn, batch, exc)
                except (ValueTooLong, TypeError, ValueError) as exc:
                    self._split(conn, batch, exc)
            self._write_groups(conn, batch)
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            if isinstance(sys.exc_info()[1], sa.exc.OperationalError | _Transient):
                conn.close()
                self._writer_conn = None
            raise

    def _committed(self, conn: Connection, batch: _Batch) -> bool:
        """After a lost connection, did the batch's COMMIT happen before the connection went?
        A transaction is all or nothing, so one of its inserted rows answers for all of them;
        writing it again would fail on its own keys and be taken for a refusal."""
        probe = batch.first_key()
        if probe is None:
            return False  # updates only: writing them again is harmless
        table, key = probe
        pk = table.primary_key.columns.values()[0]
        try:
            found = conn.execute(sa.select(sa.literal(1)).select_from(table).where(pk == key)).first()
        finally:
            if conn.in_transaction():
                conn.rollback()
        if found is not None:
            log.warning("a batch whose commit was cut off by the connection had been stored; not writing it again")
        return found is not None

    def _split(self, conn: Connection, batch: _Batch, exc: BaseException) -> None:
        """A row the database refuses (a constraint, a value too long): the batch is written
        again group by group, so only the group holding that row fails."""
        if conn.in_transaction():
            conn.rollback()
        batch.groups = batch.split()
        log.warning("database refused a batch of %d group(s) (%s); finding the refused ones",
                    len(batch.groups), _reason(exc))

    def _try(self, conn: Connection, batch: _Batch) -> BaseException | None:
        """Write ``batch`` in one transaction; the refusal, or None once stored. A lost connection
        (or a database that is not working) raises: the whole batch is retried later."""
        try:
            self._write_rows(conn, batch)
            return None
        except (sa.exc.OperationalError, Fenced, LeaseLapsed):
            raise
        except sa.exc.DBAPIError as exc:
            if not _refusal(exc):
                raise _Transient(exc) from exc
            failure: BaseException = exc
        except (ValueTooLong, TypeError, ValueError) as exc:
            failure = exc
        if conn.in_transaction():
            conn.rollback()
        return failure.with_traceback(None)

    def _write_groups(self, conn: Connection, batch: _Batch) -> None:
        """Find the refused groups by halving: a half that is stored costs one transaction, so a
        flood with one bad row takes a few dozen commits, not one per request. A group refused
        alone is tried again after the others (it may need their rows), until a pass stores
        nothing more. A lost connection stops the search; the groups already stored are taken
        out of the batch, so a retry does not write them twice."""
        assert batch.groups is not None

        def store(groups: list[_Batch]) -> list[_Batch]:
            """Write what can be written; return the groups refused on their own."""
            if not groups:
                return []
            if batch.retried:  # after a lost connection: skip groups whose commit went through
                for g in [g for g in groups if self._committed(conn, g)]:
                    groups.remove(g)
                    batch.groups.remove(g)  # type: ignore[union-attr]
                if not groups:
                    return []
            one = groups[0] if len(groups) == 1 else _Batch.merged(groups)
            failure = self._try(conn, one)
            if failure is None:
                for g in groups:
                    batch.groups.remove(g)  # type: ignore[union-attr]
                    batch.failed.pop(g.root_unit, None)
                return []
            if len(groups) == 1:
                batch.failed[groups[0].root_unit] = failure
                return groups
            mid = len(groups) // 2
            return store(groups[:mid]) + store(groups[mid:])

        refused = store(list(batch.groups))
        while refused:
            again = [g for g in refused if store([g])]
            if len(again) == len(refused):
                break
            refused = again
        for group in batch.groups:
            self._refuse_group(batch, group, _reason(batch.failed[group.root_unit]))
        batch.groups = []

    def _write_rows(self, conn: Connection, batch: _Batch) -> None:
        rows = 0
        with conn.begin():
            if self.fence is not None:
                self.fence(conn)  # raises Fenced: this node is no longer the active one
            for table in _ORDER:
                # updates first: an event cleared (or finished) in this batch frees its source and
                # ack code for an event inserted in the same batch (unique among open events)
                updates = batch.updates.get(table)
                if updates:
                    rows += _write_updates(conn, table, updates)
                pending = batch.inserts.get(table)
                if pending:
                    values = list(pending.values()) if isinstance(pending, dict) else pending
                    for group in _by_keys(values):
                        self._insert(conn, table, group)
                    rows += len(values)
        self.batches_written += 1
        self.rows_written += rows

    def _insert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """executemany of a statement compiled once per (table, columns), with the dialect's own
        bind processors applied here: SQLAlchemy's per-row parameter handling cost more than
        SQLite's insert itself, on the writer thread that shares the GIL with the event loop."""
        cols = tuple(rows[0])
        plan = self._plans.get((table, cols))
        if plan is None:
            dialect = self.engine.dialect
            compiled = table.insert().compile(dialect=dialect, column_keys=list(cols))
            order = list(compiled.positiontup or ()) if compiled.positional else list(cols)
            procs = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in order]
            limits = _limits(table, order)
            plan = self._plans[(table, cols)] = (compiled.string, order, procs, compiled.positional, limits)
        sql, order, procs, positional, limits = plan
        params: list[Any] = []
        for row in rows:
            for c, n in limits:
                _fits(table, c, _text(row[c]), n)
            values = [_text(row[c]) if proc is None or row[c] is None else proc(_text(row[c]))
                      for c, proc in zip(order, procs, strict=True)]
            params.append(tuple(values) if positional else dict(zip(order, values, strict=True)))
        conn.exec_driver_sql(sql, params)

    # --- reading ---------------------------------------------------------------------------

    async def read(self, fn: Callable[[Connection], T], *, fresh: bool = True,
                   timeout: float | None = None) -> T:
        """Run ``fn(connection)`` on a reader thread; pending writes are committed first, unless
        ``fresh`` is False (the caller wants only what was stored long ago, without the wait).

        Raises Unavailable when the database does not answer within ``timeout`` (default
        ``read_timeout``) or the connection fails: a reader must never hang for a whole outage.
        """
        loop = self._loop or asyncio.get_running_loop()

        async def run() -> T:
            if fresh:
                await self.commit()
            return await loop.run_in_executor(self._readers, self._run_read, fn)

        try:
            return await asyncio.wait_for(run(), self.read_timeout if timeout is None else timeout)
        except TimeoutError:
            raise Unavailable("the database is not answering; try again shortly") from None
        except sa.exc.OperationalError as exc:
            raise Unavailable(f"the database is not answering: {str(exc.orig).strip()[:200]}") from None

    async def ping(self, timeout: float = 2.0) -> str | None:
        """None when the database answers a trivial query within ``timeout``, else why not."""
        if self.outage_since is not None:
            return (f"unreachable since {self.outage_since.isoformat(timespec='seconds')}"
                    + (f": {self.outage_error}" if self.outage_error else ""))
        try:
            await self.read(lambda c: c.exec_driver_sql("select 1").scalar(), fresh=False, timeout=timeout)
        except Unavailable as exc:
            return str(exc)
        return None

    def _run_read(self, fn: Callable[[Connection], T]) -> T:
        # One snapshot per read: a reader that queries several tables (an event's story) must
        # not see a commit land between its queries, e.g. a notification failed without the
        # trace line written in the same commit.
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # the sqlite3 driver opens no transaction for a SELECT; WAL gives BEGIN a snapshot
                conn.exec_driver_sql("BEGIN")
            else:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                return fn(conn)
            finally:
                conn.rollback()

    def read_sync(self, fn: Callable[[Connection], T]) -> T:
        """For start-up and the CLI, before the loop runs."""
        return self._run_read(fn)


def _unit() -> Any:
    """Who is queueing a row: the current unit of work, or (outside any) a unit of the row alone."""
    return units.current() or object()


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _text(value: Any) -> Any:
    # PostgreSQL refuses NUL in text, SQLite keeps it: store the same string on both
    return sanitize.clean_text(value) if type(value) is str else value


def _limits(table: sa.Table, cols: Iterable[str]) -> list[tuple[str, int]]:
    return [(c, t.length) for c in cols if isinstance(t := table.c[c].type, sa.String) and t.length]


def _fits(table: sa.Table, column: str, value: Any, limit: int) -> None:
    # PostgreSQL refuses a string longer than its column, SQLite stores it: refuse it on both, so
    # a value is stored or refused the same way whatever the database
    if type(value) is str and len(value) > limit:
        raise ValueTooLong(f"{table.name}.{column}: {len(value)} characters, at most {limit} fit")


class Fenced(Exception):
    """This node no longer holds the cluster lease: its write transaction is rolled back."""


class LeaseLapsed(Exception):
    """This node still holds the cluster lease but could not renew it in time: the batch is kept
    and written once the lease is renewed (or dropped as Fenced if another node takes over)."""

    @property
    def orig(self) -> BaseException:
        return self


class ValueTooLong(ValueError):
    """A string longer than its column."""


def _refusal(exc: sa.exc.DBAPIError) -> bool:
    """Is this the database refusing the rows (a constraint, bad data, a trigger's RAISE), rather
    than not working (read-only standby 25006, internal trouble)? Only a refusal fails a group."""
    if exc.connection_invalidated:
        return False
    if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError):
        return True
    state = str(getattr(exc.orig, "sqlstate", "") or "")
    return state[:2] in ("22", "23", "P0")


class _Transient(Exception):
    """A database error that is not about the rows (a read-only standby, an internal error): the
    batch is kept and retried like a lost connection, never refused."""

    def __init__(self, exc: BaseException):
        super().__init__(str(exc))
        self.orig = getattr(exc, "orig", exc)


def _key(table: sa.Table, row: dict[str, Any]) -> Any:
    return row[table.primary_key.columns.values()[0].name]


def _by_keys(rows: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    """executemany needs rows with the same keys; group them."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return groups.values()


def _write_updates(conn: Connection, table: sa.Table, updates: dict[Any, dict[str, Any]]) -> int:
    pk = table.primary_key.columns.values()[0]
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for key, values in updates.items():
        # bind names must differ from column names in an UPDATE's SET clause
        groups.setdefault(frozenset(values), []).append(
            {"_pk": key, **{"v_" + k: _text(v) for k, v in values.items()}})
    for cols, rows in groups.items():
        for c, n in _limits(table, cols):
            for row in rows:
                _fits(table, c, row["v_" + c], n)
        stmt = table.update().where(pk == sa.bindparam("_pk")).values(
            {c: sa.bindparam("v_" + c) for c in cols})
        conn.execute(stmt, rows)
    return len(updates)
