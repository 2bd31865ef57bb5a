"""What the listing, queue and rejected-request operations need of each database: the
migration from the schema before them, index scans for the common filters, NOTIFY on
PostgreSQL, and id order that does not depend on the database's collation.

The behaviour itself is the contract (test_contract_ops.py); these are the backends' own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import psycopg

from relay.store import postgres_queries as pq
from relay.store import sqlite_queries as sq
from relay.store.base import DeliveryFilter, EventFilter, NewDelivery, Outcome, RejectedRequest
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from tests.store.conftest import T0
from tests.store.test_contract import make_event

# The indexes migration 4 (SQLite) / 3 (PostgreSQL) replaces, and those it makes.
REPLACED = {"deliveries_created", "deliveries_state_created", "events_received"}
LISTING_INDEXES = {
    "deliveries_created_id",
    "deliveries_state_created_id",
    "deliveries_destination_created_id",
    "deliveries_event",
    "deliveries_queue",
    "events_received_id",
    "events_source_received_id",
    "events_task",
    "rejected_source_received",
}


def a_rejected(source: str, at: float) -> RejectedRequest:
    return RejectedRequest(source, at, "203.0.113.7", f"/hooks/{source}", 401, "bad secret", "{}")


# --- SQLite -----------------------------------------------------------------------------------


def sqlite_rows(path: str, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        return conn.execute(sql, args).fetchall()


async def test_a_version_3_sqlite_database_is_upgraded_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "relay.db")
    # The database as the relay before these operations left it: the first three migrations,
    # with an event, deliveries in three states and an attempt.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    for version, script in enumerate(sq.MIGRATIONS[:3], start=1):
        for statement in sq.statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    old = make_event("k0")
    conn.execute(
        "INSERT INTO events (id, source, provider, task_id, dedupe_key, status, received_at,"
        " event_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (old.id, old.source, old.provider, old.task_id, old.dedupe_key, old.status, T0,
         old.model_dump_json()),
    )  # fmt: skip
    for did, state, due in (("d-dead", "dead", None), ("d-done", "delivered", None),
                            ("d-wait", "pending", T0 + 5)):  # fmt: skip
        conn.execute(
            "INSERT INTO deliveries (id, event_id, destination, route, state, attempts,"
            " next_attempt_at, last_error, created_at, updated_at, due_at)"
            " VALUES (?, ?, 'slack', 0, ?, 1, ?, '', ?, ?, ?)",
            (did, old.id, state, due, T0, T0 + 1, due),
        )
    conn.execute("INSERT INTO attempts VALUES ('d-dead', 1, ?, ?, 'dead', '404')", (T0, T0 + 1))
    conn.execute("COMMIT")
    conn.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.find_events(EventFilter(source="goapi-main")) == [old]
        assert [r.id for r in await store.find_deliveries(DeliveryFilter())] == [
            "d-wait",
            "d-done",
            "d-dead",
        ]
        stats = await store.queue_stats(T0 + 10)
        assert (dict(stats.depth), stats.oldest_due) == (
            {("slack", "dead"): 1, ("slack", "pending"): 1},
            T0 + 5,
        )
        assert [a.detail for a in await store.attempts("d-dead")] == ["404"]
        assert await store.replay("d-done", T0 + 20, states=("delivered",))
        assert await store.list_rejected() == []
        await store.record_rejected([a_rejected("goapi", T0)], keep=5)
        assert await store.list_rejected("goapi") == [a_rejected("goapi", T0)]
    finally:
        await store.close()
    again = SQLiteStore(path)  # opening an up-to-date database applies nothing
    await again.open()
    await again.close()
    assert sqlite_rows(path, "SELECT max(version) FROM schema_version") == [(len(sq.MIGRATIONS),)]
    indexes = {n for (n,) in sqlite_rows(path, "SELECT name FROM sqlite_schema WHERE type='index'")}
    assert indexes >= LISTING_INDEXES
    assert not REPLACED & indexes


def sqlite_plan(path: str, sql: str, args: list[object]) -> str:
    rows = sqlite_rows(path, f"EXPLAIN QUERY PLAN {sql}", tuple(args))
    return " | ".join(str(row[-1]) for row in rows)


async def test_sqlite_listings_read_their_indexes_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.db")
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    cursor = (T0, "dlv_x")
    ordered = {
        "deliveries_created_id": DeliveryFilter(),
        "deliveries_state_created_id": DeliveryFilter(state="dead"),
        "deliveries_destination_created_id": DeliveryFilter(destination="slack"),
    }
    for index, where in ordered.items():
        for before in (None, cursor):
            plan = sqlite_plan(path, *sq.find_deliveries_query(where, 100, before))
            assert f"d USING INDEX {index}" in plan, (where, plan)
            assert "TEMP B-TREE" not in plan, (where, plan)  # already in page order
            if before is not None:
                assert "(created_at,id)<(?,?)" in plan, plan  # the cursor is a range
    events = {
        "events_received_id": EventFilter(),
        "events_source_received_id": EventFilter(source="goapi"),
    }
    for index, filter_ in events.items():
        for before in (None, cursor):
            plan = sqlite_plan(path, *sq.find_events_query(filter_, 100, before))
            assert f"e USING INDEX {index}" in plan, (filter_, plan)
            assert "TEMP B-TREE" not in plan, (filter_, plan)
    # An event's deliveries and a task's events are few: looked up, then sorted.
    one_event = DeliveryFilter(event_id="evt_1", state="dead", destination="slack")
    plan = sqlite_plan(path, *sq.find_deliveries_query(one_event, 100, None))
    assert "d USING INDEX deliveries_event (event_id=?)" in plan, plan
    plan = sqlite_plan(path, *sq.find_events_query(EventFilter(source="s", task_id="t"), 9, None))
    assert "e USING INDEX events_task (task_id=?)" in plan, plan
    # queue_stats, at every scrape: an index-only read of the backlog and the dead.
    plan = sqlite_plan(path, sq.QUEUE_DEPTH_SQL, [])
    assert "USING COVERING INDEX deliveries_queue" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    plan = sqlite_plan(path, sq.OLDEST_DUE_SQL, [T0])
    assert "USING INDEX deliveries_due (due_at<?)" in plan, plan


# --- PostgreSQL -------------------------------------------------------------------------------


async def pg_sql(
    url: str, query: str, args: Sequence[object] | None = None
) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query, args)
        return await cur.fetchall() if cur.description else []


async def test_a_version_2_postgres_database_is_upgraded_and_keeps_its_data(
    pg_url: str,
) -> None:
    old = make_event("k0")
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        await conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        for version, script in enumerate(pq.MIGRATIONS[:2], start=1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        await conn.execute(
            "INSERT INTO events (id, source, provider, task_id, dedupe_key, status, received_at,"
            " event_json) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (old.id, old.source, old.provider, old.task_id, old.dedupe_key, old.status, T0,
             old.model_dump_json()),
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO deliveries (id, event_id, destination, route, state, attempts,"
            " next_attempt_at, created_at, updated_at, due_at) VALUES"
            " ('d-dead', %(e)s, 'slack', 0, 'dead', 1, NULL, %(t)s, %(t)s, NULL),"
            " ('d-wait', %(e)s, 'mail', 0, 'pending', 0, %(t)s, %(t)s, %(t)s, %(t)s)",
            {"e": old.id, "t": T0},
        )
        await conn.commit()

    store = PostgresStore.from_url(pg_url)
    await store.open()
    try:
        assert await store.find_events(EventFilter(task_id=old.task_id)) == [old]
        assert [r.id for r in await store.find_deliveries(DeliveryFilter())] == [
            "d-wait",
            "d-dead",
        ]
        stats = await store.queue_stats(T0)
        assert dict(stats.depth) == {("slack", "dead"): 1, ("mail", "pending"): 1}
        assert stats.oldest_due == T0
        await store.record_rejected([a_rejected("goapi", T0)], keep=5)
        assert await store.list_rejected() == [a_rejected("goapi", T0)]
    finally:
        await store.close()
    assert await pg_sql(pg_url, "SELECT max(version) FROM schema_version") == [
        (len(pq.MIGRATIONS),)
    ]
    names = {n for (n,) in await pg_sql(pg_url, "SELECT indexname FROM pg_indexes")}
    assert names >= LISTING_INDEXES
    assert not REPLACED & names


async def test_postgres_listings_read_their_indexes(pg_url: str) -> None:
    store = PostgresStore.from_url(pg_url)
    await store.open()
    await store.close()
    # A history of 20,000 deliveries over 8 destinations, a thousand dead, 200 waiting.
    await pg_sql(
        pg_url,
        """
        INSERT INTO events (id, source, provider, task_id, dedupe_key, status, received_at,
            event_json)
        SELECT 'ev' || i, 's' || i % 5, 'goapi', 't' || i, 'k' || i, 'succeeded', i / 10, '{}'
        FROM generate_series(1, 20200) AS i;
        INSERT INTO deliveries (id, event_id, destination, route, state, created_at,
            updated_at, next_attempt_at, due_at)
        SELECT 'd' || i, 'ev' || i, 'dest' || i % 8, 0,
            CASE WHEN i <= 19000 THEN 'delivered' WHEN i <= 20000 THEN 'dead' ELSE 'pending' END,
            i / 10, i, CASE WHEN i > 20000 THEN i END, CASE WHEN i > 20000 THEN i END
        FROM generate_series(1, 20200) AS i;
        """,
    )
    # The visibility map, for index-only scans. Twice: a VACUUM right after the insert can
    # find its transaction not yet older than every snapshot, and leave the pages unmarked.
    for _ in range(2):
        await pg_sql(pg_url, "VACUUM ANALYZE")
    cursor = (1000.0, "d10000")
    cases = [
        ("deliveries_created_id", pq.find_deliveries_query(DeliveryFilter(), 100, cursor)),
        (
            "deliveries_state_created_id",
            pq.find_deliveries_query(DeliveryFilter(state="dead"), 100, None),
        ),
        (
            "deliveries_destination_created_id",
            pq.find_deliveries_query(DeliveryFilter(destination="dest3"), 100, None),
        ),
        ("events_received_id", pq.find_events_query(EventFilter(), 100, cursor)),
        ("events_source_received_id", pq.find_events_query(EventFilter(source="s1"), 100, None)),
        ("events_task", pq.find_events_query(EventFilter(task_id="t5"), 100, None)),
        ("deliveries_event", pq.find_deliveries_query(DeliveryFilter(event_id="ev5"), 100, None)),
        # Index-only once the visibility map is set, which VACUUM cannot promise while any
        # other session of the cluster holds an old snapshot: the index is what is certain.
        ("deliveries_queue", (pq.QUEUE_DEPTH_SQL, None)),
        ("Index Scan using deliveries_due", (pq.OLDEST_DUE_SQL, [1e12])),
    ]
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        for expected, (query, args) in cases:
            cur = await conn.execute(f"EXPLAIN (COSTS OFF) {query}", args)
            plan = "\n".join(str(row[0]) for row in await cur.fetchall())
            assert expected in plan, (expected, plan)
            assert "Seq Scan" not in plan, (expected, plan)
            if expected.endswith("_created_id") or expected.endswith("_received_id"):
                assert "Sort" not in plan, (expected, plan)  # read in page order
            if expected == "deliveries_created_id":
                assert "Index Cond: (ROW(created_at" in plan, plan  # the cursor is a range


async def test_ids_order_bytewise_whatever_the_database_collation(pg_url: str) -> None:
    store = PostgresStore.from_url(pg_url)
    await store.open()
    try:
        # As in a database created with a linguistic collation: there "ev-a" sorts before
        # "ev-B"; bytewise (SQLite, Python, the memory store) "ev-B" comes first.
        for table in ("events", "deliveries"):
            await pg_sql(
                pg_url, f'ALTER TABLE {table} ALTER COLUMN id TYPE text COLLATE "en-US-x-icu"'
            )
        assert await pg_sql(pg_url, "SELECT 'ev-a' < 'ev-B' COLLATE \"en-US-x-icu\"") == [(True,)]
        for eid in ("ev-a", "ev-B", "ev-c"):
            await store.ingest(make_event(eid, id=eid), [NewDelivery(f"d{eid[2:]}", "s", 0)])
        events = await store.find_events(EventFilter())
        assert [e.id for e in events] == ["ev-c", "ev-a", "ev-B"]
        after = await store.find_events(EventFilter(), before=(T0, "ev-a"))
        assert [e.id for e in after] == ["ev-B"]
        deliveries = await store.find_deliveries(DeliveryFilter(), limit=2)
        assert [d.id for d in deliveries] == ["d-c", "d-a"]
        rest = await store.find_deliveries(DeliveryFilter(), before=(T0, "d-a"))
        assert [d.id for d in rest] == ["d-B"]
    finally:
        await store.close()


async def test_re_routes_releases_and_replays_wake_the_other_replicas(
    replicas: list[PostgresStore],
) -> None:
    operator, worker = replicas
    woken = asyncio.Event()
    worker.watch(woken.set)
    await asyncio.wait_for(woken.wait(), 10)  # once on listening
    woken.clear()

    await operator.ingest(make_event("k1"), [])
    assert await operator.add_deliveries("ev-goapi-main-k1", [NewDelivery("d1", "s", 0)], T0)
    await asyncio.wait_for(woken.wait(), 10)
    woken.clear()

    [claim] = await worker.claim(T0, 10, 30)
    assert await worker.release(claim, T0 + 1)
    await asyncio.wait_for(woken.wait(), 10)
    woken.clear()

    [claim] = await worker.claim(T0 + 1, 10, 30)
    assert await worker.finish(claim, Outcome("delivered"), T0 + 1, T0 + 2)
    assert await operator.replay("d1", T0 + 3, states=("delivered",))
    await asyncio.wait_for(woken.wait(), 10)


async def test_replicas_recording_rejected_requests_at_once_keep_the_bound(
    replicas: list[PostgresStore],
) -> None:
    # Each batch names both sources, in opposite orders on the two replicas.
    batches = [
        [a_rejected(source, T0 + n) for source in (("a", "b") if n % 2 else ("b", "a"))]
        for n in range(40)
    ]
    await asyncio.gather(
        *(replicas[n % 2].record_rejected(batch, keep=5) for n, batch in enumerate(batches))
    )
    for source in ("a", "b"):
        kept = await replicas[0].list_rejected(source)
        assert [r.received_at for r in kept] == [T0 + n for n in range(39, 34, -1)]
    assert replicas[0].conflict_retries == replicas[1].conflict_retries == 0
