"""relay's writers on one SQLite file take turns through its ``-writer.lock`` file.

The test holds the lock file itself, with its own open file description, as another relay
process would (flock locks belong to an open file, not to a process).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from relay.errors import StoreUnavailableError
from relay.store.sqlite import SQLiteStore
from tests.store.test_sqlite import count, make_event, one_delivery


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "relay.db")


@contextmanager
def lock_file_held(db_path: str) -> Iterator[None]:
    fd = os.open(f"{db_path}-writer.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # closing the description gives the lock back


def lock_file_is_free(db_path: str) -> bool:
    fd = os.open(f"{db_path}-writer.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


async def test_a_write_waits_for_the_lock_file_and_goes_once_it_is_free(db_path: str) -> None:
    store = SQLiteStore(db_path, busy_timeout=30)
    await store.open()
    try:
        with lock_file_held(db_path):
            ingest = asyncio.create_task(store.ingest(make_event("k1"), one_delivery("k1")))
            # SQLite's own lock is free all along: only the lock file holds the write back.
            await asyncio.sleep(0.2)
            assert not ingest.done()
            assert count(db_path, "events") == 0
        result = await ingest
        assert not result.duplicate and count(db_path, "events") == 1
        assert lock_file_is_free(db_path)
    finally:
        await store.close()


async def test_the_wait_for_the_lock_file_ends_as_a_locked_database_would(
    db_path: str,
) -> None:
    store = SQLiteStore(db_path, busy_timeout=0.1)
    await store.open()
    try:
        with lock_file_held(db_path):
            with pytest.raises(StoreUnavailableError, match="database is locked"):
                await store.ingest(make_event("k1"), one_delivery("k1"))
            assert count(db_path, "events") == 0
        # Given back: the same store writes again without being reopened.
        assert not (await store.ingest(make_event("k1"), one_delivery("k1"))).duplicate
    finally:
        await store.close()


async def test_a_transaction_that_failed_gives_the_lock_file_back(db_path: str) -> None:
    store = SQLiteStore(db_path, busy_timeout=0.1)
    await store.open()
    try:
        with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            # RAISE(ROLLBACK) ends the transaction from inside a statement: no ROLLBACK is
            # sent, and the lock file must be given back all the same.
            conn.execute(
                "CREATE TRIGGER boom AFTER INSERT ON events WHEN NEW.task_id = 'boom' "
                "BEGIN SELECT RAISE(ROLLBACK, 'disk on fire'); END"
            )
        with pytest.raises(StoreUnavailableError, match="disk on fire"):
            await store.ingest(make_event("k1", task_id="boom"), one_delivery("k1"))
        assert lock_file_is_free(db_path)
        await store.ingest(make_event("k2"), one_delivery("k2"))
        assert lock_file_is_free(db_path)
    finally:
        await store.close()


async def test_writes_go_without_a_lock_file_that_cannot_be_opened(db_path: str) -> None:
    os.mkdir(f"{db_path}-writer.lock")  # a folder where the lock file would be
    store = SQLiteStore(db_path, busy_timeout=0.1)
    await store.open()
    try:
        assert not (await store.ingest(make_event("k1"), one_delivery("k1"))).duplicate
        assert count(db_path, "events") == 1
    finally:
        await store.close()
