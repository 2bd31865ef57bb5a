"""Under ``synchronous=FULL`` an ingest batch's log is fsynced after the write lock is given
back, and its callers are answered only once that sync has returned (relay/store/wal_sync.py).

The store is given a sync of the test's own that calls the real ``os.fdatasync`` when the
test lets it, so the moment between the commit and the sync can be looked at.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from relay.errors import StoreUnavailableError
from relay.store.base import Outcome, Silence
from relay.store.sqlite import SQLiteStore
from tests.store.test_sqlite import T0, count, make_event, one_delivery
from tests.store.test_sqlite_writer import lock_file_is_free


class HeldSync:
    """Notes each file it flushes, waits until ``release`` is set, then flushes it."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.paths: list[str] = []
        self._fail_next = fail_first

    def __call__(self, fd: int) -> None:
        self.paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        self.entered.set()
        self.release.wait(30)
        if self._fail_next:
            self._fail_next = False
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fdatasync(fd)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "relay.db")


async def test_the_write_lock_is_free_during_the_sync_and_callers_wait_for_it(
    db_path: str,
) -> None:
    sync = HeldSync()
    store = SQLiteStore(db_path, sync=sync)
    await store.open()
    try:
        ingest = asyncio.create_task(store.ingest(make_event("k1"), one_delivery("k1")))
        assert await asyncio.to_thread(sync.entered.wait, 30)

        # Committed, and both locks are free: another process's write goes at once.
        assert count(db_path, "events") == 1
        assert lock_file_is_free(db_path)
        with closing(sqlite3.connect(db_path, isolation_level=None, timeout=0)) as other:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO heartbeat (id, at) VALUES (1, 0)")
            other.execute("COMMIT")
        # But the caller is answered only once the log is on disk.
        await asyncio.sleep(0.1)
        assert not ingest.done()

        sync.release.set()
        assert not (await ingest).duplicate
        assert sync.paths == [f"{db_path}-wal"]
    finally:
        sync.release.set()
        await store.close()


async def test_a_failed_sync_answers_its_whole_batch_store_unavailable(db_path: str) -> None:
    sync = HeldSync(fail_first=True)
    sync.release.set()
    store = SQLiteStore(db_path, sync=sync)
    await store.open()
    try:
        results = await asyncio.gather(
            *(store.ingest(make_event(f"k{i}"), one_delivery(f"k{i}")) for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailableError) for r in results), results
        assert {str(r) for r in results} == {
            "store: ingest: write-ahead log not synced: Input/output error"
        }
        # Committed all the same: a provider's retry is a duplicate (answered 200), and the
        # next batch is synced and answered as usual.
        assert (await store.ingest(make_event("k0"), one_delivery("k0"))).duplicate
        assert not (await store.ingest(make_event("k9"), one_delivery("k9"))).duplicate
        assert len(sync.paths) == 3
    finally:
        await store.close()


async def test_the_log_synced_is_the_one_beside_the_file_a_symlink_names(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "relay.db"
    real.touch()
    link = tmp_path / "relay.db"
    link.symlink_to(real)
    sync = HeldSync()
    sync.release.set()
    store = SQLiteStore(str(link), sync=sync)
    await store.open()
    try:
        await store.ingest(make_event("k1"), one_delivery("k1"))
        assert sync.paths == [f"{real}-wal"]
        assert f"{link.name}-wal" not in os.listdir(tmp_path)
    finally:
        await store.close()


@pytest.mark.parametrize("synchronous", ["OFF", "NORMAL", "EXTRA"])
async def test_only_full_syncs_the_log_itself(db_path: str, synchronous: str) -> None:
    # NORMAL and OFF never wait for the disk; EXTRA keeps SQLite's own syncs, inside COMMIT.
    sync = HeldSync()
    sync.release.set()
    store = SQLiteStore(db_path, synchronous=synchronous, sync=sync)
    await store.open()
    try:
        await store.ingest(make_event("k1"), one_delivery("k1"))
        assert count(db_path, "events") == 1
        assert sync.paths == []
    finally:
        await store.close()


async def test_every_write_is_synced_but_the_dispatchers_leases_and_outcomes(
    db_path: str,
) -> None:
    sync = HeldSync()
    sync.release.set()
    store = SQLiteStore(db_path, sync=sync)
    await store.open()
    try:
        await store.ingest(make_event("k1"), one_delivery("k1"))
        assert len(sync.paths) == 1

        # The dispatcher's own writes: a power cut can only make it send again.
        [claim] = await store.claim(now=T0, limit=10, lease_seconds=30)
        assert await store.finish(claim, Outcome("delivered"), T0, T0 + 1)
        # Reads change nothing, so nothing is synced for them.
        assert await store.get_event("ev-k1") is not None
        assert len(sync.paths) == 1

        # An operator's write is answered once it is on disk, like a callback.
        silence = Silence("sil_1", ('provider="goapi"',), T0, T0 + 60, "outage", "ops", T0)
        assert await store.add_silence(silence)
        assert len(sync.paths) == 2
    finally:
        await store.close()
