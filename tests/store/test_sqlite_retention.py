"""Retention's disk space on SQLite: a new database gives pruned pages back to the file system;
one made before incremental auto-vacuum keeps its size and reuses them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.store.sqlite import SQLiteStore
from relay.store.sqlite_retention import VACUUM_RESERVE, VACUUM_STEP
from tests.store.conftest import T0
from tests.store.test_contract import make_event

EVENTS = 600  # a 4 KB prompt each: about a page apiece


def pragma(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        (value,) = conn.execute(f"PRAGMA {name}").fetchone()
    finally:
        conn.close()
    return int(value)


async def fill(store: SQLiteStore, prefix: str, at: float = T0) -> None:
    for n in range(EVENTS):
        await store.ingest(make_event(f"{prefix}{n}", at=at, prompt="x" * 4000), [])


async def test_a_new_database_gives_pruned_pages_back(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        await fill(store, "k")
        full = pragma(path, "page_count")
        assert (await store.prune(T0 + 1, EVENTS)).events == EVENTS
        # Each call gives back at most one step; calls with nothing to prune still do.
        for _ in range(EVENTS // VACUUM_STEP + 2):
            await store.prune(T0 + 1, EVENTS)
    finally:
        await store.close()
    assert pragma(path, "auto_vacuum") == 2  # incremental
    assert pragma(path, "freelist_count") <= VACUUM_RESERVE
    assert pragma(path, "page_count") < full - EVENTS // 2


async def test_an_older_database_keeps_its_size_and_reuses_the_pages(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    # Made before relay set auto_vacuum: a table already exists when the store first opens it.
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE made_by_hand (x)")
    conn.close()
    store = SQLiteStore(str(path))
    await store.open()
    try:
        await fill(store, "a")
        assert (await store.prune(T0 + 1, EVENTS)).events == EVENTS
        full = pragma(path, "page_count")
        assert pragma(path, "freelist_count") > EVENTS // 2
        await fill(store, "b", at=T0 + 10)
    finally:
        await store.close()
    assert pragma(path, "auto_vacuum") == 0
    # The second fill went into the pages the prune freed.
    assert pragma(path, "page_count") < full + EVENTS // 10
