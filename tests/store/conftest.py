"""Store test fixtures: ``store`` runs a test on every backend, freshly opened; ``replicas``
is two PostgreSQL stores on one database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from relay.store.base import Store
from relay.store.memory import MemoryStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0

# name -> factory(request, tmp_path) returning an unopened store. A backend that needs a server
# asks for its fixture through the request (postgres: a fresh database from tests/pg.py).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Store]] = {
    "memory": lambda _req, _tmp: MemoryStore(),
    "sqlite": lambda _req, tmp: SQLiteStore(str(tmp / "relay.db")),
    "postgres": lambda req, _tmp: PostgresStore.from_url(req.getfixturevalue("pg_url")),
}


@pytest.fixture(params=list(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend = BACKENDS[request.param](request, tmp_path)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on one database, as two relay processes would have."""
    stores = [PostgresStore.from_url(pg_url), PostgresStore.from_url(pg_url)]
    for s in stores:
        await s.open()
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()
