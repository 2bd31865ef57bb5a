"""Retention through the real app: ``relay serve`` prunes a database of 100,000 old delivered
deliveries (20,000 on PostgreSQL) while callbacks keep coming, each answered 200 and stored;
``relay prune`` and ``relay purge`` as the real command line.

Old rows are put in with bulk SQL into the schema the store itself created (as if written
long ago); everything after that goes through relay.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from relay.events import TaskEvent
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from relay.store.sqlite_retention import VACUUM_RESERVE, VACUUM_STEP
from tests.downstream import Downstream
from tests.e2e.cli import DOWN_SECRET, GOAPI_SECRET, Serve, arelay, base_env, relay, write
from tests.fixtures_util import load

DAY = 86400.0
RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
routes:
  - to: [down]
"""

# --- old rows, in bulk ----------------------------------------------------------------------

# One statement per table for ``count`` rows :prefix-numbered from 0, received at :at (a
# millisecond apart), each event with one delivery in :state and one attempt.
_SQLITE_NUMBERS = (
    "WITH RECURSIVE n (i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :count)"
)
_SQLITE_SEED = (
    f"""{_SQLITE_NUMBERS}
    INSERT INTO events (id, source, provider, task_id, dedupe_key, status, received_at, event_json)
    SELECT :prefix || 'ev' || i, 'goapi', 'goapi', :prefix || 'task' || i,
        :prefix || 'key' || i, 'succeeded', :at + i * 0.001,
        replace(replace(replace(:json, '@ID@', :prefix || 'ev' || i),
            '@TASK@', :prefix || 'task' || i), '@KEY@', :prefix || 'key' || i)
    FROM n""",
    f"""{_SQLITE_NUMBERS}
    INSERT INTO deliveries (id, event_id, destination, route, state, attempts, last_error,
        created_at, updated_at)
    SELECT :prefix || 'dlv' || i, :prefix || 'ev' || i, 'down', 0, :state, 1, '',
        :at + i * 0.001, :at + i * 0.001 + 1
    FROM n""",
    f"""{_SQLITE_NUMBERS}
    INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, state, detail)
    SELECT :prefix || 'dlv' || i, 1, :at + i * 0.001, :at + i * 0.001 + 1, :state, 'seeded'
    FROM n""",
)
_PG_SEED = (
    """
    INSERT INTO events (id, source, provider, task_id, dedupe_key, status, received_at, event_json)
    SELECT %(prefix)s || 'ev' || i, 'goapi', 'goapi', %(prefix)s || 'task' || i,
        %(prefix)s || 'key' || i, 'succeeded', %(at)s + i * 0.001,
        replace(replace(replace(%(json)s, '@ID@', %(prefix)s || 'ev' || i),
            '@TASK@', %(prefix)s || 'task' || i), '@KEY@', %(prefix)s || 'key' || i)
    FROM generate_series(0, %(count)s - 1) AS i""",
    """
    INSERT INTO deliveries (id, event_id, destination, route, state, attempts, last_error,
        created_at, updated_at)
    SELECT %(prefix)s || 'dlv' || i, %(prefix)s || 'ev' || i, 'down', 0, %(state)s, 1, '',
        %(at)s + i * 0.001, %(at)s + i * 0.001 + 1
    FROM generate_series(0, %(count)s - 1) AS i""",
    """
    INSERT INTO attempts (delivery_id, attempt, started_at, finished_at, state, detail)
    SELECT %(prefix)s || 'dlv' || i, 1, %(at)s + i * 0.001, %(at)s + i * 0.001 + 1,
        %(state)s, 'seeded'
    FROM generate_series(0, %(count)s - 1) AS i""",
)


def _args(prefix: str, count: int, at: float, state: str) -> dict[str, object]:
    template = TaskEvent(
        id="@ID@",
        source="goapi",
        provider="goapi",
        task_id="@TASK@",
        dedupe_key="@KEY@",
        status="succeeded",
        provider_status="completed",
        final=True,
        received_at=datetime.fromtimestamp(at, UTC),
    )
    json = template.model_dump_json()
    return {"prefix": prefix, "count": count, "at": at, "state": state, "json": json}


class Database:
    """The test's own view of relay's database: bulk inserts and counts."""

    def __init__(self, url: str, path: Path | None) -> None:
        self.url, self.path = url, path

    @classmethod
    async def create(cls, url: str) -> Database:
        """The schema the store creates, in a new database."""
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            store: SQLiteStore | PostgresStore = SQLiteStore(str(path))
        else:
            path, store = None, PostgresStore.from_url(url)
        await store.open()
        await store.close()
        return cls(url, path)

    def seed(self, prefix: str, count: int, *, at: float, state: str = "delivered") -> None:
        args = _args(prefix, count, at, state)
        if self.path is not None:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute("BEGIN")
                for sql in _SQLITE_SEED:
                    conn.execute(sql, args)
                conn.execute("COMMIT")
            finally:
                conn.close()
            return
        with psycopg.connect(self.url) as pg:
            for sql in _PG_SEED:
                pg.execute(sql, args)

    def scalar(self, sql: str, *args: object) -> int:
        """One number; ``sql`` with ? placeholders."""
        if self.path is not None:
            conn = sqlite3.connect(self.path)
            try:
                (value,) = conn.execute(sql, args).fetchone()
            finally:
                conn.close()
            return int(value)
        with psycopg.connect(self.url) as pg:
            row = pg.execute(sql.replace("?", "%s"), args).fetchone()
        assert row is not None
        return int(row[0])

    def count(self, table: str, like: str) -> int:
        column = {"events": "id", "deliveries": "id", "attempts": "delivery_id"}[table]
        return self.scalar(f"SELECT count(*) FROM {table} WHERE {column} LIKE ?", like)

    def rows_of(self, prefix: str) -> tuple[int, int, int]:
        """(events, deliveries, attempts) seeded under ``prefix`` still there."""
        return (
            self.count("events", f"{prefix}ev%"),
            self.count("deliveries", f"{prefix}dlv%"),
            self.count("attempts", f"{prefix}dlv%"),
        )


# --- serve prunes while callbacks keep being acknowledged -----------------------------------

# Old delivered deliveries per backend: PostgreSQL's bulk seeding and its deletes (several
# indexes each) cost several times SQLite's on a loaded machine, so it gets fewer.
OLD = {"sqlite": 100_000, "postgres": 20_000}


@pytest.fixture(params=list(OLD))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    """(database URL, old rows to seed)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}", OLD["sqlite"]
    url: str = request.getfixturevalue("pg_url")
    return url, OLD["postgres"]


async def test_serve_prunes_100000_old_deliveries_while_callbacks_are_acknowledged(
    tmp_path: Path, backend: tuple[str, int], downstream: Downstream
) -> None:
    database_url, old = backend
    db = await Database.create(database_url)
    now = time.time()
    await asyncio.to_thread(db.seed, "old-", old, at=now - 30 * DAY)
    # Dead deliveries are kept however old, with their events, until replayed or purged.
    await asyncio.to_thread(db.seed, "dead-", 10, at=now - 30 * DAY, state="dead")
    pages = db.scalar("PRAGMA page_count") if db.path else 0
    cwd = write(tmp_path / "rules", {"rules.yaml": RULES}).parent
    env = base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        DOWN_URL=downstream.url,
        DOWN_SECRET=DOWN_SECRET,
        RELAY_DB=database_url,
    )

    server = await Serve(cwd, env, "serve").start()
    try:
        pruned = asyncio.Event()
        posters = [post_until(server.url, f"new-{n}-", pruned) for n in range(4)]
        watcher = wait_until(lambda: db.rows_of("old-") == (0, 0, 0), pruned, server)
        *answers, _ = await asyncio.gather(*posters, watcher)
        acknowledged = [task for tasks in answers for task in tasks]
        await downstream.wait_for(len(acknowledged), within=60)
        delivered = "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        await wait_until(lambda: db.scalar(delivered) == len(acknowledged), None, server, 60)
    finally:
        code = await server.stop()
    log = server.output()
    assert code in (0, -signal.SIGTERM), log
    assert "Traceback" not in log

    # The old delivered rows are gone, the dead ones and every new callback stay.
    assert db.rows_of("old-") == (0, 0, 0)
    assert db.rows_of("dead-") == (10, 10, 10)
    stored = db.scalar("SELECT count(*) FROM events WHERE task_id LIKE ?", "new-%")
    assert stored == len(acknowledged) > 0
    assert db.scalar(delivered) == stored
    assert f"retention: pruned {old} events, {old} deliveries, {old} attempts" in log
    if db.path is not None:
        # Space given back: the store made the file in incremental auto-vacuum mode.
        assert db.scalar("PRAGMA auto_vacuum") == 2
        assert db.scalar("PRAGMA freelist_count") < VACUUM_RESERVE + VACUUM_STEP
        assert db.scalar("PRAGMA page_count") < pages / 2


async def post_until(url: str, prefix: str, done: asyncio.Event) -> list[str]:
    """Post GoAPI callbacks, each a new task, one after another until ``done`` (then a few
    more); every one must be answered 200. The task ids acknowledged."""
    acknowledged: list[str] = []
    after = 0
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        for n in itertools.count():
            if done.is_set():
                after += 1
                if after > 5:
                    break
            assert n < 100_000, "the prune never finished"
            body, headers = load("goapi/image_success_flux.json")
            body["data"]["task_id"] = task = f"{prefix}{n}"
            answer = await client.post("/hooks/goapi", json=body, headers=headers)
            assert answer.status_code == 200, (answer.status_code, answer.text)
            assert answer.json().get("deliveries") == 1, answer.text
            acknowledged.append(task)
    return acknowledged


async def wait_until(
    condition: Callable[[], bool],
    done: asyncio.Event | None,
    server: Serve,
    within: float = 300,
) -> None:
    """Poll ``condition`` (blocking, so in a thread) until it holds, while the server runs;
    then set ``done``."""
    deadline = time.monotonic() + within
    try:
        while not await asyncio.to_thread(condition):
            assert time.monotonic() < deadline, f"never came true:\n{server.output()[-3000:]}"
            assert server.proc is not None and server.proc.returncode is None, server.output()
            await asyncio.sleep(0.2)
    finally:
        if done is not None:
            done.set()


# --- relay prune and relay purge ------------------------------------------------------------


@pytest.fixture
async def small(tmp_path: Path) -> Database:
    """Delivered events 30 and 15 days old, dead deliveries 40 and 5 days old, new events."""
    db = await Database.create(f"sqlite:///{tmp_path / 'relay.db'}")
    now = time.time()
    db.seed("d30-", 4, at=now - 30 * DAY)
    db.seed("d15-", 3, at=now - 15 * DAY)
    db.seed("dead40-", 2, at=now - 40 * DAY, state="dead")
    db.seed("dead5-", 1, at=now - 5 * DAY, state="dead")
    db.seed("new-", 2, at=now - 3600)
    write(tmp_path / "rules", {"rules.yaml": RULES + "retention: {delivered: 20d}\n"})
    return db


def cli_env(**extra: str) -> dict[str, str]:
    return base_env(
        GOAPI_SECRET=GOAPI_SECRET, DOWN_URL="http://127.0.0.1:9/", DOWN_SECRET=DOWN_SECRET, **extra
    )


async def test_prune_says_what_would_go_then_prunes_with_the_retention_in_force(
    tmp_path: Path, small: Database
) -> None:
    dry = await arelay(tmp_path, "prune", "--dry-run", env=cli_env())
    assert dry.code == 0, dry.err
    assert dry.out.startswith("would prune 4 events, 4 deliveries, 4 attempts (delivered, ")
    assert small.rows_of("d30-") == (4, 4, 4)

    # The rules say 20 days: the 30-day-old go.
    done = await arelay(tmp_path, "prune", env=cli_env())
    assert done.code == 0, done.err
    assert done.out.startswith("pruned 4 events, 4 deliveries, 4 attempts (delivered, ")
    assert small.rows_of("d30-") == (0, 0, 0)
    assert small.rows_of("d15-") == (3, 3, 3)

    # RELAY_RETENTION over the rules; --before over both.
    week = await arelay(tmp_path, "prune", env=cli_env(RELAY_RETENTION="10d"))
    assert week.out.startswith("pruned 3 events, 3 deliveries, 3 attempts"), week.text
    hour = await arelay(tmp_path, "prune", "--before", "30m", env=cli_env(RELAY_RETENTION="10d"))
    assert hour.out.startswith("pruned 2 events, 2 deliveries, 2 attempts"), hour.text
    # Dead deliveries are never pruned, however old.
    assert small.rows_of("dead40-") == (2, 2, 2) and small.rows_of("dead5-") == (1, 1, 1)

    off = await arelay(tmp_path, "prune", env=cli_env(RELAY_RETENTION="off"))
    assert off.code == 0 and off.out.startswith("retention is off"), off.text


async def test_purge_removes_dead_deliveries_older_than_asked(
    tmp_path: Path, small: Database
) -> None:
    dry = await arelay(tmp_path, "purge", "--dead", "--before", "30d", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.startswith("would purge 2 events, 2 deliveries, 2 attempts (dead deliveries")
    assert small.rows_of("dead40-") == (2, 2, 2)

    done = await arelay(tmp_path, "purge", "--dead", "--before", "30d")
    assert done.code == 0, done.err
    assert done.out.startswith("purged 2 events, 2 deliveries, 2 attempts (dead deliveries")
    assert small.rows_of("dead40-") == (0, 0, 0)
    assert small.rows_of("dead5-") == (1, 1, 1)
    assert small.rows_of("d30-") == (4, 4, 4)  # delivered ones are prune's


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["purge", "--before", "30d"], "the following arguments are required: --dead"),
        (["purge", "--dead"], "the following arguments are required: --before"),
        (["purge", "--dead", "--before", "soon"], "argument --before: bad duration 'soon'"),
    ],
)
def test_bad_arguments_are_exit_2(tmp_path: Path, args: list[str], problem: str) -> None:
    r = relay(tmp_path, *args)
    assert r.code == 2 and problem in r.err, r.text


def test_prune_with_broken_rules_names_the_file_and_key(tmp_path: Path) -> None:
    write(tmp_path / "rules", {"rules.yaml": RULES + "retention: {delivered: 10m}\n"})
    r = relay(tmp_path, "prune", env=cli_env())
    assert r.code == 2
    assert "rules/rules.yaml: retention.delivered: must be at least 1h" in r.err


def test_prune_and_purge_need_an_existing_database(tmp_path: Path) -> None:
    for args in (["prune", "--before", "7d"], ["purge", "--dead", "--before", "7d"]):
        r = relay(tmp_path, *args, "--db", "sqlite:///missing.db")
        assert r.code == 1 and "no database at missing.db" in r.err, r.text
    assert not (tmp_path / "missing.db").exists()
