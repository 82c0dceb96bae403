"""The database: migrations match the tables, and writes are group-committed."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from annunciator.core import schema
from annunciator.core.alarms import utcnow
from annunciator.core.store import Store, create_engine, migrate


def test_migrations_create_exactly_the_declared_tables(annunciator_database_url):
    engine = create_engine(annunciator_database_url)
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    engine.dispose()
    assert diff == [], f"schema.py and the Alembic migrations disagree: {diff}"


def test_migrate_twice_is_harmless(annunciator_database_url):
    engine = create_engine(annunciator_database_url)
    migrate(engine)
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select version_num from alembic_version")).scalar() == "0008"
    engine.dispose()


def test_group_commit_writes_every_row_and_folds_updates(annunciator_database_url):
    async def main() -> tuple[int, list[tuple[str, str]]]:
        store = Store(annunciator_database_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store.open, loop)
        now = utcnow()
        committed = []
        for i in range(300):
            store.insert(schema.shelves, {"source": f"s{i}", "expires_at": now, "user": "u",
                                          "notes": "", "created": now})
            store.update(schema.shelves, f"s{i}", {"notes": f"n{i}"})
        store.after_commit(lambda: committed.append(True))
        await store.commit()
        assert committed == [True]
        rows = await store.read(lambda c: [tuple(r) for r in c.execute(
            sa.select(schema.shelves.c.source, schema.shelves.c.notes).order_by(schema.shelves.c.source))])
        batches = store.batches_written
        await store.close()
        return batches, rows

    batches, rows = asyncio.run(main())
    assert len(rows) == 300
    assert ("s7", "n7") in rows
    assert batches <= 2  # 600 operations, one or two transactions


def test_upgrade_from_0001_keeps_trace_lines(annunciator_database_url):
    engine = create_engine(annunciator_database_url)
    migrate(engine, "0001")
    ts = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO traces (instance_id, event_id, ts, branch, block, action, why) "
            "VALUES ('i1', 'e1', :ts, 0, 'delay-1', 'wait', 'delay 30s')"), {"ts": ts})
    migrate(engine)
    with engine.connect() as conn:
        [row] = conn.execute(sa.select(schema.trace_runs)).all()
        tables = sa.inspect(conn).get_table_names()
    engine.dispose()
    assert "traces" not in tables
    assert row.instance_id == "i1" and row.event_id == "e1"
    [[line_ts, branch, block, action, why]] = row.lines
    assert (branch, block, action, why) == (0, "delay-1", "wait", "delay 30s")
    assert line_ts.startswith(ts.date().isoformat())


def test_commit_waits_for_a_batch_already_being_written(annunciator_database_url):
    # commit() may start a loop iteration after the caller queued its rows (asyncio.wait_for runs
    # it as a task); if the flush loop took those rows meanwhile, commit() must still wait for them.
    import threading

    async def main() -> tuple[bool, int]:
        store = Store(annunciator_database_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store.open, loop)
        hold = threading.Event()
        store._writer.submit(hold.wait)  # keep the writer thread busy: the next write waits
        now = utcnow()
        store.insert(schema.shelves, {"source": "s", "expires_at": now, "user": None, "notes": None,
                                      "created": now})
        for _ in range(5):  # let the flush loop take the batch: it is now in flight
            await asyncio.sleep(0)
        waiting = asyncio.ensure_future(store.commit())
        await asyncio.sleep(0.2)
        returned_early = waiting.done()
        hold.set()
        await waiting
        count = await store.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(schema.shelves)).scalar())
        await store.close()
        return returned_early, count

    returned_early, count = asyncio.run(main())
    assert not returned_early, "commit() returned while the caller's rows were still being written"
    assert count == 1


def test_one_refused_unit_in_a_flood_costs_a_few_commits_and_only_its_own_rows(annunciator_database_url):
    """2,000 requests in one group commit, one with a value too long for its column: the other
    1,999 are stored, only the bad one is told, and finding it takes a few dozen transactions
    (halving), not one per request."""
    from annunciator.core import units
    from annunciator.core.errors import Refused

    async def main() -> tuple[int, list[str], list[str]]:
        store = Store(annunciator_database_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store.open, loop)
        now = utcnow()
        refused: list[str] = []

        async def request(i: int) -> None:
            with units.fresh(f"request {i}"):
                user = "u" * 300 if i == 1234 else "u"  # shelves.user is String(200)
                store.insert(schema.shelves, {"source": f"s{i}", "expires_at": now, "user": user,
                                              "notes": "", "created": now})
                try:
                    await store.commit()
                except Refused as exc:
                    refused.append(f"s{i}: {exc}")

        before = store.batches_written
        await asyncio.gather(*(request(i) for i in range(2000)))
        commits = store.batches_written - before
        rows = await store.read(lambda c: [r[0] for r in c.execute(sa.select(schema.shelves.c.source))])
        await store.close()
        return commits, rows, refused

    commits, rows, refused = asyncio.run(main())
    assert len(rows) == 1999 and "s1234" not in rows
    assert len(refused) == 1 and refused[0].startswith("s1234: the database refused this change: shelves.user")
    assert commits <= 30, commits


def test_a_batch_whose_commit_was_cut_off_is_not_written_twice(annunciator_database_url):
    """The connection drops after the server committed (the answer to COMMIT is lost): writing
    the batch again must see it is stored, not fail on its own keys and refuse it."""
    from annunciator.core.store import _Batch

    async def main() -> list[tuple[str, str]]:
        store = Store(annunciator_database_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store.open, loop)
        now = utcnow()

        def batch() -> _Batch:
            b = _Batch(loop)
            b.inserts[schema.shelves] = {f"s{i}": {"source": f"s{i}", "expires_at": now, "user": "u",
                                                   "notes": "first", "created": now} for i in range(3)}
            for i in range(3):
                b.own(schema.shelves, f"s{i}", object())
            return b

        await loop.run_in_executor(store._writer, store._write, batch())
        again = batch()
        again.retried = True  # as the flush loop marks a batch after a lost connection
        await loop.run_in_executor(store._writer, store._write, again)
        rows = await store.read(lambda c: [tuple(r) for r in c.execute(
            sa.select(schema.shelves.c.source, schema.shelves.c.notes))])
        refused = store.rows_refused
        await store.close()
        assert refused == 0
        return rows

    assert sorted(asyncio.run(main())) == [("s0", "first"), ("s1", "first"), ("s2", "first")]


def test_a_read_sees_one_snapshot_even_when_a_commit_lands_between_its_queries(annunciator_database_url):
    """An event's story reads several tables; a commit landing between two of its queries must
    not show a notification as failed without the trace line written with it."""
    async def main() -> tuple[int, int]:
        store = Store(annunciator_database_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store.open, loop)
        now = utcnow()
        other = create_engine(annunciator_database_url)
        shelves = schema.shelves

        def count(conn: sa.Connection) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(shelves)).scalar_one()

        def read(conn: sa.Connection) -> tuple[int, int]:
            before = count(conn)
            with other.begin() as writer:  # another gateway's commit, between our two queries
                writer.execute(shelves.insert().values(source="late", expires_at=now, user="u",
                                                       notes="", created=now))
            return before, count(conn)

        result = await store.read(read)
        other.dispose()
        await store.close()
        return result

    before, after = asyncio.run(main())
    assert before == after == 0
