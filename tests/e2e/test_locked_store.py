"""A database another process holds locked: callbacks get their 503 within RELAY_ANSWER_TIMEOUT
(not the store's own lock wait), /readyz says not ready, and both recover once it is free."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from relay.settings import Settings
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load

RULES = """
sources:
  goapi: {provider: goapi, secret: s3cr3t-relay-goapi}
"""


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RelayServer]:
    settings = Settings(
        rules=write_rules(tmp_path / "rules", RULES),
        db=f"sqlite:///{tmp_path / 'relay.db'}",
        dispatch=False,
        answer_timeout=0.5,  # well under the store's own 5 s wait for a lock
    )
    server = await RelayServer(settings).start()
    yield server
    await server.stop()


async def test_a_locked_database_answers_503_in_time_and_recovers(
    relay: RelayServer, tmp_path: Path
) -> None:
    body, headers = load("goapi/image_success_flux.json")
    async with httpx.AsyncClient(base_url=relay.url, timeout=30) as client:
        assert (await client.get("/readyz")).status_code == 200
        with closing(sqlite3.connect(tmp_path / "relay.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                refused = await client.post("/hooks/goapi", json=body, headers=headers)
                ready = await client.get("/readyz")
            finally:
                other.execute("ROLLBACK")
        assert refused.status_code == 503
        assert refused.json()["error"] == "not stored within 0.5 s, retry later"
        assert refused.headers["retry-after"] == "5"
        assert ready.status_code == 503 and ready.json()["ready"] is False

        # Free again: ready, and the provider's retry is stored once (or found stored: the
        # first write may have gone through once the lock was released).
        async with asyncio.timeout(15):
            while True:
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
        again = await client.post("/hooks/goapi", json=body, headers=headers)
        assert again.status_code == 200, again.text
        metrics = (await client.get("/metrics")).text
    with closing(sqlite3.connect(tmp_path / "relay.db")) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    assert 'relay_callbacks_total{outcome="timed_out",source="goapi"} 1.0' in metrics
