"""What only the PostgreSQL store has: a server, a pool, several replicas on one database.

The replicas are real: separate store instances, each with its own pool and connections, as
separate processes would have. The contract suite (test_contract.py) covers everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store import open_store
from relay.store.base import Claim, NewDelivery, Outcome
from relay.store.postgres import CONFLICT_RETRIES, PostgresStore
from relay.store.postgres_queries import CLAIM_SQL, MIGRATIONS, NEXT_DUE_SQL, Conn
from tests.pg import Cluster, new_cluster, with_database

T0 = 1_700_000_000.0


def make_event(key: str, *, id: str | None = None) -> TaskEvent:
    return TaskEvent(
        id=id or f"ev-{key}",
        source="goapi-main",
        provider="goapi",
        task_id=f"task-{key}",
        dedupe_key=key,
        status="succeeded",
        provider_status="completed",
        final=True,
        received_at=datetime.fromtimestamp(T0, UTC),
    )


async def sql(url: str, query: str) -> list[tuple[object, ...]]:
    """Rows of ``query`` on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query)
        return await cur.fetchall() if cur.description else []


# --- several replicas at once -------------------------------------------------------------------


async def test_two_replicas_never_claim_the_same_delivery(replicas: list[PostgresStore]) -> None:
    a, b = replicas
    ids: list[str] = []
    for i in range(50):
        deliveries = [
            NewDelivery(id=f"e{i}-d{j}", destination=f"dest-{j}", route=j) for j in range(10)
        ]
        await a.ingest(make_event(f"k{i}"), deliveries)
        ids += [d.id for d in deliveries]

    async def worker(store: PostgresStore) -> list[str]:
        got: list[str] = []
        while claims := await store.claim(now=T0, limit=7, lease_seconds=600):
            got += [c.delivery_id for c in claims]
        return got

    # Three workers per replica, all claiming at once until nothing is left.
    results = await asyncio.gather(*(worker(s) for s in (a, b, a, b, a, b)))
    claimed = [d for got in results for d in got]
    assert sorted(claimed) == sorted(ids)  # every delivery, and none twice
    assert all(results[i] for i in (0, 1))  # both replicas took part
    records = await b.list_deliveries("sending", limit=1000)
    assert len(records) == 500 and all(r.attempts == 1 for r in records)


async def test_concurrent_workers_keep_a_group_in_order(replicas: list[PostgresStore]) -> None:
    # 10 tasks x 8 events each, every event one delivery to "slack" in its task's group.
    order: dict[str, list[str]] = {}
    for n in range(8):
        for task in range(10):
            d = NewDelivery(id=f"t{task}-n{n}", destination="slack", route=0, group=f"t{task}")
            await replicas[n % 2].ingest(make_event(f"t{task}-n{n}"), [d])
            order.setdefault(f"t{task}", []).append(d.id)
    sent: dict[str, list[str]] = {}
    released: set[str] = set()  # marked just before its finish is sent

    async def worker(store: PostgresStore) -> None:
        while sum(map(len, sent.values())) < 80:
            claims = await store.claim(now=T0, limit=3, lease_seconds=600)
            for c in claims:
                group = c.delivery_id.split("-")[0]
                n = order[group].index(c.delivery_id)
                # The one before it in its group is finished (or being finished) already.
                assert n == 0 or order[group][n - 1] in released, c.delivery_id
                sent.setdefault(group, []).append(c.delivery_id)
            await asyncio.sleep(0 if claims else 0.005)
            for c in claims:
                released.add(c.delivery_id)
                assert await store.finish(c, Outcome("delivered"), T0, T0)

    async with asyncio.timeout(60):
        await asyncio.gather(*(worker(s) for s in (*replicas, *replicas)))
    assert sent == order


async def test_the_same_callback_at_two_replicas_stores_one_event(
    replicas: list[PostgresStore],
) -> None:
    a, b = replicas
    keys = [f"k{i}" for i in range(100)]

    async def receive(store: PostgresStore, name: str, key: str) -> tuple[str, bool]:
        # Half the keys carry a group, so both ingest paths race.
        group = key if int(key[1:]) % 2 else None
        deliveries = [NewDelivery(id=f"{name}-{key}-d", destination="slack", route=0, group=group)]
        result = await store.ingest(make_event(key, id=f"ev-{name}-{key}"), deliveries)
        return result.event_id, result.duplicate

    results = await asyncio.gather(
        *(receive(s, name, key) for key in keys for s, name in ((a, "a"), (b, "b")))
    )
    for i, key in enumerate(keys):
        (first, first_dup), (second, second_dup) = results[2 * i], results[2 * i + 1]
        assert first == second  # both answers name the one stored event
        assert first_dup != second_dup  # exactly one of them stored it
        assert first in (f"ev-a-{key}", f"ev-b-{key}")
    records = await a.list_deliveries(limit=1000)
    assert len(records) == 100
    assert {r.event_id for r in records} == {results[2 * i][0] for i in range(100)}


async def test_two_replicas_pacing_one_channel_get_one_slot(
    replicas: list[PostgresStore],
) -> None:
    for step in range(5):
        now = T0 + step * 1.0
        waits = await asyncio.gather(
            *(replicas[i % 2].pace("slack:C1", 1.0, now=now) for i in range(20))
        )
        assert waits.count(0.0) == 1, waits
        assert all(w == pytest.approx(1.0) for w in waits if w != 0.0)


async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore.from_url(pg_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await sql(pg_url, "SELECT version FROM schema_version ORDER BY version") == [
            (v,) for v in range(1, len(MIGRATIONS) + 1)
        ]
        await stores[0].ingest(make_event("k1"), [NewDelivery("d1", "slack", 0)])
        assert [c.delivery_id for c in await stores[2].claim(T0, 10, 30)] == ["d1"]
    finally:
        for s in stores:
            await s.close()
    again = PostgresStore.from_url(pg_url)
    await again.open()  # an up-to-date database: nothing to apply
    await again.close()
    assert len(await sql(pg_url, "SELECT version FROM schema_version")) == len(MIGRATIONS)


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = PostgresStore.from_url(pg_url)
    await store.open()
    await store.close()
    await sql(pg_url, f"INSERT INTO schema_version VALUES ({len(MIGRATIONS) + 1})")
    with pytest.raises(StoreUnavailableError, match="newer than this relay"):
        await store.open()


async def test_ingests_of_one_group_take_turns(pg_url: str) -> None:
    """The group lock: while another transaction holds it, a grouped ingest waits (so commit
    order is creation order); callbacks arriving meanwhile are not held back behind it."""
    store = PostgresStore.from_url(pg_url)
    await store.open()
    try:
        async with await psycopg.AsyncConnection.connect(pg_url) as other:
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('t1' || chr(31) || 'slack', 0))"
            )
            grouped = asyncio.ensure_future(
                store.ingest(make_event("g"), [NewDelivery("g-d", "slack", 0, group="t1")])
            )
            await asyncio.sleep(0.2)  # its transaction now waits for the lock
            await asyncio.wait_for(
                store.ingest(make_event("u"), [NewDelivery("u-d", "slack", 0)]), 10
            )
            await asyncio.sleep(0.2)
            assert not grouped.done()
            await other.rollback()
            assert not (await asyncio.wait_for(grouped, 10)).duplicate
    finally:
        await store.close()


async def test_a_cancelled_finish_is_still_recorded(pg_url: str) -> None:
    store = PostgresStore.from_url(pg_url)
    await store.open()
    try:
        await store.ingest(make_event("k1"), [NewDelivery("d1", "slack", 0)])
        [claim] = await store.claim(T0, 10, 30)
        task = asyncio.ensure_future(store.finish(claim, Outcome("delivered"), T0, T0 + 1))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await store.close()  # waits for the write
    await store.open()
    try:
        record = await store.get_delivery("d1")
        assert record is not None and record.state == "delivered"
    finally:
        await store.close()


async def test_claim_and_next_due_read_the_indexes(pg_url: str) -> None:
    store = PostgresStore.from_url(pg_url)
    await store.open()
    await store.close()
    # A history of 20,000 finished deliveries and a backlog of 200, half of them grouped.
    await sql(
        pg_url,
        """
        INSERT INTO events (id, source, provider, task_id, dedupe_key, status, received_at,
            event_json)
        SELECT 'ev' || i, 's', 'goapi', 't' || i, 'k' || i, 'succeeded', i, '{}'
        FROM generate_series(1, 20200) AS i;
        INSERT INTO deliveries (id, event_id, destination, route, grp, state, created_at,
            updated_at, next_attempt_at, due_at)
        SELECT 'd' || i, 'ev' || i, 'slack', 0, CASE WHEN i % 2 = 0 THEN 'g' || i % 50 END,
            CASE WHEN i <= 20000 THEN 'delivered' ELSE 'pending' END, i, i,
            CASE WHEN i > 20000 THEN i END, CASE WHEN i > 20000 THEN i END
        FROM generate_series(1, 20200) AS i;
        ANALYZE;
        """,
    )
    params = {"now": 1e12, "limit": 10, "until": 1e12 + 30, "skip": ["webhook"], "lost": "x"}
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        plans = {}
        for name, query, args in (("claim", CLAIM_SQL, params), ("next due", NEXT_DUE_SQL, None)):
            cur = await conn.execute(f"EXPLAIN (COSTS OFF) {query}", args)
            plans[name] = "\n".join(row[0] for row in await cur.fetchall())
        await conn.rollback()
    for name, plan in plans.items():
        assert "Index Scan using deliveries_due on deliveries d" in plan, (name, plan)
        # Whether an earlier delivery of the group holds one back is an index look-up.
        assert "Index Only Scan using deliveries_group on deliveries p" in plan, (name, plan)
        assert "Seq Scan" not in plan, (name, plan)


# --- failures -------------------------------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A server of this test's own, to stop, start and reconfigure (needs the server binaries
    on this machine even when RELAY_TEST_POSTGRES_URL names a server)."""
    with new_cluster() as cluster:
        yield cluster


async def test_a_stopped_server_is_store_unavailable(own_cluster: Cluster) -> None:
    url = own_cluster.url.replace("postgres@", "postgres:hunter2@") + "?pool_timeout=0.5"
    store = PostgresStore.from_url(url)
    await store.open()
    try:
        await store.ingest(make_event("k1"), [NewDelivery("d1", "slack", 0)])
        own_cluster.stop()
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "ping": store.ping,
            "ingest": lambda: store.ingest(make_event("k2"), [NewDelivery("d2", "slack", 0)]),
            "claim": lambda: store.claim(T0, 10, 30),
            "finish": lambda: store.finish(
                Claim("d1", make_event("k1"), "slack", 0, 1, "token", T0), Outcome("dead"), T0, T0
            ),
            "pace": lambda: store.pace("slack:C1", 1.0, T0),
            "get state": lambda: store.get_state("slack", "t1"),
        }
        for what, call in calls.items():
            with pytest.raises(StoreUnavailableError) as info:
                await call()
            message = str(info.value)
            assert message.startswith(f"store: {what}: "), message
            assert "hunter2" not in message
        # Back up: the pool replaces its broken connections and the store works again.
        own_cluster.restart()
        async with asyncio.timeout(30):
            while True:
                try:
                    await store.ping()
                    break
                except StoreUnavailableError:
                    await asyncio.sleep(0.1)
        assert await store.get_event("ev-k1") is not None
    finally:
        await store.close()
    own_cluster.stop()
    with pytest.raises(StoreUnavailableError, match=r"^store: open: .*refused") as info:
        await store.open()
    assert "hunter2" not in str(info.value)


async def test_a_refused_password_is_not_echoed(own_cluster: Cluster) -> None:
    await sql(own_cluster.url, "CREATE ROLE relay_app LOGIN PASSWORD 'the-right-one'")
    await sql(own_cluster.url, "CREATE DATABASE relay_app OWNER relay_app")
    own_cluster.require_password("relay_app")
    url = with_database(own_cluster.url.replace("postgres@", "relay_app:hunter2@"), "relay_app")
    with pytest.raises(StoreUnavailableError, match="password authentication failed") as info:
        await open_store(url).open()
    assert "hunter2" not in str(info.value)
    # And the right one opens.
    store = open_store(url.replace("hunter2", "the-right-one"))
    await store.open()
    await store.ping()
    await store.close()


async def test_nothing_listening_is_store_unavailable_without_the_password() -> None:
    store = open_store("postgresql://relay:hunter2@127.0.0.1:1/relay?connect_timeout=2")
    with pytest.raises(StoreUnavailableError, match=r"^store: open: .*refused") as info:
        await store.open()
    assert "hunter2" not in str(info.value)
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.claim(T0, 10, 30)


# --- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_urls(scheme: str) -> None:
    store = open_store(f"{scheme}://relay:hunter2@db.example:5433/relay")
    assert isinstance(store, PostgresStore)
    assert (store.pool_size, store.pool_min, store.pool_timeout) == (10, 1, 5.0)


def test_pool_options_are_ours_and_the_rest_go_to_libpq() -> None:
    store = open_store(
        "postgresql://relay@db/relay?pool_size=3&sslmode=require&pool_timeout=0.5&pool_min=0"
    )
    assert isinstance(store, PostgresStore)
    assert (store.pool_size, store.pool_min, store.pool_timeout) == (3, 0, 0.5)
    params = conninfo_to_dict(store._conninfo)
    assert params["sslmode"] == "require"
    assert not {"pool_size", "pool_min", "pool_timeout"} & set(params)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("postgresql://relay:hunter2@db/relay?pool_size=many", "pool_size"),
        ("postgresql://relay:hunter2@db/relay?pool_size=0", "pool_size"),
        ("postgresql://relay:hunter2@db/relay?pool_min=20", "pool_min"),
        ("postgresql://relay:hunter2@db/relay?pool_timeout=-1", "pool_timeout"),
        ("postgresql://relay:hunter2@db/relay?pool_timeout=nan", "pool_timeout"),
        ("postgresql://relay:hunter2@db/relay?bogus=1", "bogus"),
        ("postgresql://relay@db/relay?password=hunter2&bogus=1", "bogus"),
    ],
)
def test_bad_postgres_urls_are_refused_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as info:
        open_store(url)
    assert "hunter2" not in str(info.value)


def test_with_database_keeps_the_rest_of_the_url() -> None:
    assert (
        with_database("postgresql://u:p@h:1/postgres?sslmode=disable", "x")
        == "postgresql://u:p@h:1/x?sslmode=disable"
    )


async def test_concurrent_outcomes_share_one_statement_and_keep_their_own_fence(
    replicas: list[PostgresStore], pg_url: str
) -> None:
    store = replicas[0]
    for i in range(50):
        await store.ingest(make_event(f"k{i}"), [NewDelivery(f"k{i}-d", "dest", 0)])
    claims = await store.claim(now=T0, limit=100, lease_seconds=30)
    stale = Claim(
        delivery_id=claims[0].delivery_id,
        event_data=claims[0].event_data,
        destination=claims[0].destination,
        route=claims[0].route,
        attempt=claims[0].attempt,
        lease_token="not-the-lease",
        lease_until=claims[0].lease_until,
    )
    wait = Outcome("pending", "paced", next_attempt_at=T0 + 1, deferred=True)
    results = await asyncio.gather(
        store.finish(stale, Outcome("dead", "x"), started_at=T0, now=T0 + 1),
        store.finish(claims[1], wait, started_at=T0, now=T0 + 1),
        *(store.finish(c, Outcome("delivered"), T0, T0 + 1) for c in claims[:1] + claims[2:]),
    )
    assert store.finish_batches == 1
    assert results == [False] + [True] * 50  # the stale one changed nothing, alone
    assert await sql(pg_url, "SELECT count(*) FROM attempts") == [(49,)]  # deferred: no row
    rows = await sql(pg_url, "SELECT state, attempts FROM deliveries ORDER BY seq LIMIT 2")
    assert rows == [("delivered", 1), ("pending", 0)]


async def test_concurrent_ingests_share_a_transaction(replicas: list[PostgresStore]) -> None:
    store = replicas[0]
    results = await asyncio.gather(
        *(store.ingest(make_event(f"k{i}"), [NewDelivery(f"k{i}-d", "d", 0)]) for i in range(200)),
        store.ingest(make_event("k7", id="ev-again"), []),  # a duplicate inside the batch
    )
    assert store.ingest_batches <= store._max_ingesters
    assert [r.duplicate for r in results] == [False] * 200 + [True]
    assert results[-1].event_id == "ev-k7"
    assert len(await store.list_deliveries(limit=1000)) == 200


async def test_a_watching_replica_is_woken_by_another_replicas_ingest_and_replay(
    replicas: list[PostgresStore],
) -> None:
    receiver, worker = replicas
    woken = asyncio.Event()
    worker.watch(woken.set)
    await asyncio.wait_for(woken.wait(), 10)  # once on listening: whatever was already due
    woken.clear()

    await receiver.ingest(make_event("k1"), [NewDelivery("k1-d", "d", 0)])
    await asyncio.wait_for(woken.wait(), 10)
    woken.clear()

    [claim] = await worker.claim(now=T0, limit=10, lease_seconds=30)
    await worker.finish(claim, Outcome("dead", "404"), started_at=T0, now=T0)
    await asyncio.sleep(0.2)
    assert not woken.is_set()  # an outcome makes nothing newly due elsewhere
    assert await receiver.replay("k1-d", T0 + 1)
    await asyncio.wait_for(woken.wait(), 10)


async def test_a_duplicate_ingest_does_not_wake_anyone(replicas: list[PostgresStore]) -> None:
    receiver, worker = replicas
    await receiver.ingest(make_event("k1"), [NewDelivery("k1-d", "d", 0)])
    woken = asyncio.Event()
    worker.watch(woken.set)
    await asyncio.wait_for(woken.wait(), 10)
    woken.clear()
    result = await receiver.ingest(make_event("k1", id="ev-again"), [NewDelivery("x-d", "d", 0)])
    assert result.duplicate
    await asyncio.sleep(0.3)
    assert not woken.is_set()


async def test_replicas_ingesting_the_same_keys_in_opposite_orders_never_deadlock(
    replicas: list[PostgresStore], pg_url: str
) -> None:
    """Issue 16: each replica's batch inserts its rows in the one global order of their unique
    key, whatever order the callbacks came in, so two overlapping batches wait on each other
    but never in a cycle (a deadlock failed every callback of the victim's batch)."""
    a, b = replicas
    rounds, per_batch = 30, 200

    async def receive(store: PostgresStore, name: str, key: str) -> tuple[str, bool]:
        delivery = NewDelivery(f"{name}-{key}-d", "slack", 0)
        result = await store.ingest(make_event(key, id=f"ev-{name}-{key}"), [delivery])
        return result.event_id, result.duplicate

    stored: set[str] = set()
    for r in range(rounds):
        keys = [f"r{r:02d}-k{i:03d}" for i in range(per_batch)]
        # One gather: both replicas' writers start together, each with one batch of
        # per_batch callbacks, a's in key order and b's in the reverse order.
        results = await asyncio.gather(
            *(receive(a, "a", key) for key in keys),
            *(receive(b, "b", key) for key in reversed(keys)),
        )
        by_a = dict(zip(keys, results[:per_batch], strict=True))
        by_b = dict(zip(reversed(keys), results[per_batch:], strict=True))
        for key in keys:
            (a_id, a_dup), (b_id, b_dup) = by_a[key], by_b[key]
            assert a_id == b_id  # both answers name the one stored event
            assert a_dup != b_dup, key  # exactly one caller stored it
            assert a_id == (f"ev-b-{key}" if a_dup else f"ev-a-{key}")  # and it was that one
            stored.add(a_id)
    assert a.ingest_batches >= rounds and b.ingest_batches >= rounds
    # Sorted, the batches never deadlock at all: no retry was needed either.
    assert a.conflict_retries == b.conflict_retries == 0
    rows = await sql(pg_url, "SELECT count(*), count(DISTINCT (source, dedupe_key)) FROM events")
    assert rows == [(rounds * per_batch, rounds * per_batch)]  # every key once
    assert {row[0] for row in await sql(pg_url, "SELECT id FROM events")} == stored
    assert await sql(pg_url, "SELECT count(*) FROM deliveries") == [(rounds * per_batch,)]


# --- conflicts the server resolves by rolling back: retried ---------------------------------


async def test_a_deadlock_between_two_writes_is_retried_and_counted(pg_url: str) -> None:
    """Two writes through the store lock two rows in opposite orders: a real deadlock. The
    server rolls one of them back (whichever); the store runs that one again, and both land."""
    store = PostgresStore.from_url(pg_url)
    await store.open()
    try:
        await sql(pg_url, "INSERT INTO pacing (key, free_at) VALUES ('x', 0), ('y', 0)")
        held = {"x": asyncio.Event(), "y": asyncio.Event()}
        runs: list[str] = []

        def write(first: str, then: str) -> Callable[[Conn], Awaitable[str]]:
            async def fn(conn: Conn) -> str:
                runs.append(first)
                async with conn.transaction():
                    bump = "UPDATE pacing SET free_at = free_at + 10 WHERE key = %s"
                    await conn.execute(bump, (first,))
                    # Neither takes its second row before both hold their first: a cycle.
                    # (Set already when the loser runs again.)
                    held[first].set()
                    await held[then].wait()
                    await conn.execute(bump, (then,))
                return first

            return fn

        async with asyncio.timeout(60):
            done = await asyncio.gather(
                store._run("test", write("x", "y")), store._run("test", write("y", "x"))
            )
        assert list(done) == ["x", "y"]
        assert store.conflict_retries == 1
        assert len(runs) == 3 and set(runs) == {"x", "y"}  # the victim ran twice
        # The victim's first try left nothing behind; its second did all of its work.
        assert await sql(pg_url, "SELECT key, free_at FROM pacing ORDER BY key") == [
            ("x", 20.0),
            ("y", 20.0),
        ]
    finally:
        await store.close()


async def test_a_serialization_failure_is_retried_and_counted(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A password the server (trust) never asks for, to show the warning leaves it out.
    store = PostgresStore.from_url(pg_url.replace("postgres@", "postgres:hunter2@"))
    await store.open()
    try:
        await sql(pg_url, "INSERT INTO pacing (key, free_at) VALUES ('slot', 0)")
        tries = 0

        async def write(conn: Conn) -> float:
            nonlocal tries
            tries += 1
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await conn.execute("SELECT free_at FROM pacing")  # the snapshot is taken
                if tries == 1:
                    # Another session changes the row after it: this transaction cannot
                    # update it any more (40001), but a new one can.
                    await sql(pg_url, "UPDATE pacing SET free_at = 1 WHERE key = 'slot'")
                cur = await conn.execute(
                    "UPDATE pacing SET free_at = free_at + 10 WHERE key = 'slot' RETURNING free_at"
                )
                row = await cur.fetchone()
                assert row is not None
                return float(row[0])

        with caplog.at_level(logging.WARNING, logger="relay.store"):
            assert await store._run("test", write) == 11.0
        assert tries == 2
        assert store.conflict_retries == 1
        [warning] = [r for r in caplog.records if r.name == "relay.store"]
        assert warning.levelno == logging.WARNING
        message = warning.getMessage()
        assert message.startswith("store: test: could not serialize access"), message
        assert f"retry 1 of {CONFLICT_RETRIES}" in message and "hunter2" not in message
    finally:
        await store.close()


async def test_conflicts_are_retried_a_bounded_number_of_times(pg_url: str) -> None:
    store = PostgresStore.from_url(pg_url)
    await store.open()
    try:
        tries = 0

        async def always_conflicts(conn: Conn) -> None:
            nonlocal tries
            tries += 1
            await conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure';"
                " END $$"
            )

        with pytest.raises(StoreUnavailableError, match=r"^store: test: conflict") as info:
            await store._run("test", always_conflicts)
        assert isinstance(info.value.__cause__, psycopg.errors.SerializationFailure)
        assert tries == CONFLICT_RETRIES + 1
        assert store.conflict_retries == CONFLICT_RETRIES
    finally:
        await store.close()


async def test_other_errors_are_not_retried(pg_url: str) -> None:
    store = PostgresStore.from_url(pg_url)
    await store.open()
    try:
        tries = 0

        async def fails(conn: Conn) -> None:
            nonlocal tries
            tries += 1
            await conn.execute("SELECT 1 / 0")

        with pytest.raises(StoreUnavailableError, match="division by zero"):
            await store._run("test", fails)
        assert tries == 1
        # An id clash in an ingest (a constraint, not a conflict) is not retried either.
        await store.ingest(make_event("k1"), [NewDelivery("d1", "slack", 0)])
        with pytest.raises(StoreUnavailableError, match="duplicate key"):
            await store.ingest(make_event("k2", id="ev-k1"), [])
        assert store.conflict_retries == 0
    finally:
        await store.close()
