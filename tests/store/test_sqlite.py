"""What only the SQLite store has: a file, migrations, group commit, a worker thread.

Failures are made real: a second connection holds the write lock or installs a trigger,
as another process could.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store import sqlite_queries as q
from relay.store.base import NewDelivery, Outcome
from relay.store.sqlite import SQLiteStore
from relay.store.sqlite_queries import CLAIM_SQL, MIGRATIONS, NEXT_DUE_SQL, claim_sql

T0 = 1_700_000_000.0


def make_event(key: str, *, task_id: str | None = None) -> TaskEvent:
    return TaskEvent(
        id=f"ev-{key}",
        source="goapi-main",
        provider="goapi",
        task_id=task_id or f"task-{key}",
        dedupe_key=key,
        status="succeeded",
        provider_status="completed",
        final=True,
        received_at=datetime.fromtimestamp(T0, UTC),
    )


def one_delivery(key: str) -> list[NewDelivery]:
    return [NewDelivery(id=f"{key}-d0", destination="slack-ops", route=0)]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "relay.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(db_path, busy_timeout=0.05)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@contextmanager
def other_connection(path: str) -> Iterator[sqlite3.Connection]:
    """A second connection to the file, as another process would have."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


@contextmanager
def write_lock(path: str) -> Iterator[None]:
    with other_connection(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


def count(path: str, table: str) -> int:
    with other_connection(path) as conn:
        (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)


async def test_open_creates_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "relay.db"
    s = SQLiteStore(str(path))
    await s.open()
    await s.close()
    with other_connection(str(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_rejects_unknown_synchronous_mode() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore("x.db", synchronous="SOMETIMES; DROP TABLE events")


async def test_data_survives_close_and_reopen(store: SQLiteStore, db_path: str) -> None:
    await store.ingest(make_event("k1"), one_delivery("k1"))
    [claim] = await store.claim(now=T0, limit=10, lease_seconds=30)
    assert await store.finish(claim, Outcome("dead", "slack: 404"), T0, T0 + 1)
    before = (await store.list_deliveries(), await store.attempts("k1-d0"))
    await store.close()

    reopened = SQLiteStore(db_path)
    await reopened.open()
    try:
        assert await reopened.get_event("ev-k1") == make_event("k1")
        assert (await reopened.list_deliveries(), await reopened.attempts("k1-d0")) == before
    finally:
        await reopened.close()


async def test_close_waits_for_queued_ingests(store: SQLiteStore, db_path: str) -> None:
    tasks = [asyncio.create_task(store.ingest(make_event(f"k{i}"), [])) for i in range(20)]
    await asyncio.sleep(0)  # let them queue
    await store.close()

    assert all(not t.result().duplicate for t in tasks)
    assert count(db_path, "events") == 20
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.ingest(make_event("late"), [])


async def test_concurrent_ingests_share_one_commit(store: SQLiteStore) -> None:
    await asyncio.gather(
        *(store.ingest(make_event(f"k{i}"), one_delivery(f"k{i}")) for i in range(200))
    )
    assert store.ingest_batches == 1
    await store.ingest(make_event("alone"), [])
    assert store.ingest_batches == 2


async def test_concurrent_outcomes_share_one_commit_and_keep_their_own_fence(
    store: SQLiteStore, db_path: str
) -> None:
    for i in range(50):
        await store.ingest(make_event(f"k{i}"), one_delivery(f"k{i}"))
    claims = await store.claim(now=T0, limit=100, lease_seconds=30)
    stale = replace(claims[0], lease_token="not-the-lease")
    results = await asyncio.gather(
        store.finish(stale, Outcome("dead", "x"), started_at=T0, now=T0 + 1),
        *(store.finish(c, Outcome("delivered"), started_at=T0, now=T0 + 1) for c in claims),
    )
    assert store.finish_batches == 1
    assert results == [False] + [True] * 50  # the stale one changed nothing, alone
    assert count(db_path, "attempts") == 50
    record = await store.get_delivery(claims[0].delivery_id)
    assert record is not None and record.state == "delivered"


async def test_a_claim_of_hundreds_leases_every_row_with_its_own_token(
    store: SQLiteStore, db_path: str
) -> None:
    # More rows than one lease statement takes: the claim is written in several.
    await asyncio.gather(
        *(store.ingest(make_event(f"k{i}"), one_delivery(f"k{i}")) for i in range(250))
    )
    claims = await store.claim(now=T0, limit=300, lease_seconds=30)

    assert len(claims) == 250
    assert len({c.lease_token for c in claims}) == 250
    with other_connection(db_path) as conn:
        leased = dict(
            conn.execute(
                "SELECT id, lease_token FROM deliveries WHERE state = 'sending' AND attempts = 1"
                " AND lease_until = ? AND due_at = ? AND updated_at = ?",
                (T0 + 30, T0 + 30, T0),
            )
        )
    assert leased == {c.delivery_id: c.lease_token for c in claims}


async def test_locked_database_fails_every_waiter_and_stores_nothing(
    store: SQLiteStore, db_path: str
) -> None:
    with write_lock(db_path):
        results = await asyncio.gather(
            *(store.ingest(make_event(f"k{i}"), one_delivery(f"k{i}")) for i in range(10)),
            return_exceptions=True,
        )
        with pytest.raises(StoreUnavailableError, match="store: ping: database is locked"):
            await store.ping()

    assert all(isinstance(r, StoreUnavailableError) for r in results)
    assert {str(r) for r in results} == {"store: ingest: database is locked"}
    assert count(db_path, "events") == count(db_path, "deliveries") == 0
    # The lock is gone: the same store recovers without being reopened.
    assert not (await store.ingest(make_event("k0"), one_delivery("k0"))).duplicate
    await store.ping()


async def test_failure_midway_through_a_batch_stores_nothing_of_it(
    store: SQLiteStore, db_path: str
) -> None:
    await store.ingest(make_event("before"), one_delivery("before"))
    with other_connection(db_path) as conn:
        # RAISE(ROLLBACK) ends the whole transaction, after earlier items were written.
        conn.execute(
            "CREATE TRIGGER boom AFTER INSERT ON events WHEN NEW.task_id = 'boom' "
            "BEGIN SELECT RAISE(ROLLBACK, 'disk on fire'); END"
        )
    events = [make_event(f"k{i}", task_id="boom" if i == 5 else None) for i in range(10)]

    results = await asyncio.gather(
        *(store.ingest(e, one_delivery(e.dedupe_key)) for e in events), return_exceptions=True
    )

    assert all(isinstance(r, StoreUnavailableError) for r in results)
    assert {str(r) for r in results} == {"store: ingest: disk on fire"}
    assert count(db_path, "events") == count(db_path, "deliveries") == 1
    assert not (await store.ingest(make_event("after"), one_delivery("after"))).duplicate


async def test_finish_is_shielded_from_cancellation(store: SQLiteStore, db_path: str) -> None:
    await store.ingest(make_event("k1"), one_delivery("k1"))
    [claim] = await store.claim(now=T0, limit=10, lease_seconds=30)
    slow_store = SQLiteStore(db_path)  # a long busy timeout: it waits out our lock
    await slow_store.open()
    try:
        with write_lock(db_path):
            # The worker thread is stuck behind the lock on the first job, so finish is
            # still queued, not started, when its caller is cancelled.
            blocker = asyncio.create_task(slow_store.ping())
            finish = asyncio.create_task(
                slow_store.finish(claim, Outcome("delivered"), started_at=T0, now=T0 + 1)
            )
            await asyncio.sleep(0)
            finish.cancel()
            with pytest.raises(asyncio.CancelledError):
                await finish
        await blocker
        record = await slow_store.get_delivery("k1-d0")
    finally:
        await slow_store.close()
    assert record is not None and record.state == "delivered"
    assert count(db_path, "attempts") == 1


async def test_reopening_applies_migrations_once(db_path: str) -> None:
    for _ in range(3):
        s = SQLiteStore(db_path)
        await s.open()
        await s.close()
    with other_connection(db_path) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        tables = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]
    assert sorted(t for (t,) in tables) == [
        "attempts",
        "channel_state",
        "deliveries",
        "events",
        "heartbeat",
        "pacing",
        "quarantine",
        "rejected",
        "schema_version",
        "silences",
    ]


async def test_a_database_of_an_older_relay_is_upgraded_and_keeps_its_events(
    db_path: str,
) -> None:
    # A database as the relay before the quarantine left it: the first two migrations.
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    for version, script in enumerate(MIGRATIONS[:2], start=1):
        for statement in q.statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    before = make_event("k0")
    conn.execute(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            before.id,
            before.source,
            before.provider,
            before.task_id,
            before.dedupe_key,
            before.status,
            before.received_at.timestamp(),
            before.model_dump_json(),
        ),
    )
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        assert await store.list_events() == [before]
        again = make_event("k0").model_copy(update={"id": "ev-again"})
        assert (await store.ingest(again, [])).duplicate
        assert await store.list_quarantined() == []
    finally:
        await store.close()
    with other_connection(db_path) as check:
        assert check.execute("SELECT max(version) FROM schema_version").fetchone() == (
            len(MIGRATIONS),
        )


async def test_refuses_a_database_from_a_newer_relay(db_path: str) -> None:
    s = SQLiteStore(db_path)
    await s.open()
    await s.close()
    with other_connection(db_path) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS) + 1,))

    with pytest.raises(StoreUnavailableError, match="newer than this relay"):
        await s.open()
    await s.close()  # a failed open leaves nothing to close


def query_plan(path: str, sql: str, args: tuple[object, ...] = ()) -> str:
    with other_connection(path) as conn:
        return " | ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


async def test_claim_and_next_due_read_the_due_index(store: SQLiteStore, db_path: str) -> None:
    claim_plan = query_plan(db_path, CLAIM_SQL, (T0, 10))
    assert "SEARCH d USING INDEX deliveries_due (due_at<?)" in claim_plan
    assert "TEMP B-TREE" not in claim_plan  # already in due order: no sort
    # Whether an earlier delivery of the group holds one back is an index look-up.
    held_back = "SEARCH p USING INDEX deliveries_group (grp=? AND destination=? AND rowid<?)"
    assert held_back in claim_plan
    # Skipping destinations (fair claiming) keeps the same plan.
    skip_plan = query_plan(db_path, claim_sql(2), (T0, "a", "b", 10))
    assert "SEARCH d USING INDEX deliveries_due (due_at<?)" in skip_plan
    assert "TEMP B-TREE" not in skip_plan
    next_plan = query_plan(db_path, NEXT_DUE_SQL)
    assert "SCAN d USING INDEX deliveries_due" in next_plan
    assert "TEMP B-TREE" not in next_plan
    assert held_back in next_plan


async def test_an_ingest_right_after_another_is_written_too(store: SQLiteStore) -> None:
    # The second call comes in before the first batch's writer has left the set of writers.
    async with asyncio.timeout(5):  # awaited in this task, as the receiver does
        first = await store.ingest(make_event("k1"), one_delivery("k1"))
        second = await store.ingest(make_event("k2"), one_delivery("k2"))
    assert not first.duplicate and not second.duplicate


async def test_ping_writes_so_a_locked_database_is_not_ready(db_path: str) -> None:
    store = SQLiteStore(db_path, busy_timeout=0.1)
    await store.open()
    try:
        await store.ping()
        with other_connection(db_path) as conn:
            (first,) = conn.execute("SELECT at FROM heartbeat").fetchone()
        with write_lock(db_path), pytest.raises(StoreUnavailableError, match="ping"):
            await store.ping()
        await store.ping()  # the lock is gone: ready again
        with other_connection(db_path) as conn:
            (second,) = conn.execute("SELECT at FROM heartbeat").fetchone()
        assert second >= first  # each ping commits a write
    finally:
        await store.close()


async def test_a_watching_store_is_woken_by_another_process_commit(tmp_path: Path) -> None:
    """A worker on the file hears of a receiver's ingest at once (its data_version), not at
    its next idle poll; its own commits do not wake it."""
    worker, receiver = SQLiteStore(str(tmp_path / "r.db")), SQLiteStore(str(tmp_path / "r.db"))
    await worker.open()
    await receiver.open()
    woken = asyncio.Event()
    try:
        worker.watch(woken.set)
        await asyncio.sleep(0.2)  # the watcher has read the counter once at least
        await worker.ingest(make_event("own"), [NewDelivery("d-own", "down", 0)])
        await asyncio.sleep(0.2)
        assert not woken.is_set(), "woken by its own commit"
        await receiver.ingest(make_event("other"), [NewDelivery("d-other", "down", 0)])
        async with asyncio.timeout(5):
            await woken.wait()
    finally:
        await worker.close()  # stops the watcher too
        await receiver.close()
