"""Store contract: ``claim(..., caps=...)`` never leases more deliveries of a capped destination
than its cap, counting the leases every process on the store holds (a destination's
`concurrency:` shared by all workers), while the other destinations are claimed as usual."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.store.base import Outcome, Store
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from tests.store.conftest import T0
from tests.store.test_contract_claim_skip import ingest_to

LEASE = 30.0


async def test_a_cap_bounds_one_claim_and_the_window_refills(store: Store) -> None:
    # The slow destination's backlog is older and larger than the claim: without the cap it
    # would take every claim; with it, two, and the window is filled from the others.
    for i in range(6):
        await ingest_to(store, f"old{i}", ["slow"], at=T0 + i)
    for i in range(3):
        await ingest_to(store, f"new{i}", ["fast"], at=T0 + 10 + i)

    claims = await store.claim(T0 + 20, 4, LEASE, caps={"slow": 2})
    assert [c.delivery_id for c in claims] == ["old0-slow", "old1-slow", "new0-fast", "new1-fast"]
    # At its cap: the next claim has none of it, whatever the limit.
    claims = await store.claim(T0 + 21, 10, LEASE, caps={"slow": 2})
    assert [c.delivery_id for c in claims] == ["new2-fast"]


async def test_leases_in_force_count_and_finished_or_expired_ones_do_not(store: Store) -> None:
    for i in range(4):
        await ingest_to(store, f"k{i}", ["slow"], at=T0 + i)
    first = await store.claim(T0 + 10, 10, LEASE, caps={"slow": 2})
    assert [c.delivery_id for c in first] == ["k0-slow", "k1-slow"]
    assert await store.claim(T0 + 11, 10, LEASE, caps={"slow": 2}) == []

    # One finished: one slot free.
    assert await store.finish(first[0], Outcome("delivered"), started_at=T0 + 10, now=T0 + 12)
    [third] = await store.claim(T0 + 12, 10, LEASE, caps={"slow": 2})
    assert third.delivery_id == "k2-slow"

    # A lease that expired (its worker died) holds no slot: its delivery is due again and
    # is claimed with the one still waiting.
    later = T0 + 11 + LEASE + 1
    again = await store.claim(later, 10, LEASE, caps={"slow": 2})
    assert sorted(c.delivery_id for c in again) == ["k1-slow", "k3-slow"]
    # Without caps nothing is bounded (the dispatcher's own per-process limit applies): k2's
    # lease has expired too by now, and with k4 that is four slow leases at once.
    await ingest_to(store, "k4", ["slow"], at=T0 + 50)
    unbounded = await store.claim(T0 + 50, 10, LEASE)
    assert sorted(c.delivery_id for c in unbounded) == ["k2-slow", "k4-slow"]


async def test_caps_and_skip_together(store: Store) -> None:
    await ingest_to(store, "a", ["slow", "paused", "fast"])
    await ingest_to(store, "b", ["slow", "paused", "fast"], at=T0 + 1)
    claims = await store.claim(T0 + 5, 10, LEASE, skip=["paused"], caps={"slow": 1, "fast": 5})
    assert sorted(c.delivery_id for c in claims) == ["a-fast", "a-slow", "b-fast"]


async def test_a_cap_of_a_destination_with_nothing_due_changes_nothing(store: Store) -> None:
    await ingest_to(store, "a", ["one", "two"])
    claims = await store.claim(T0 + 1, 10, LEASE, caps={"nowhere": 1, "it's": 2})
    assert sorted(c.delivery_id for c in claims) == ["a-one", "a-two"]


# Two stores on one database, as two relay processes have: SQLite (one file) and PostgreSQL.
@pytest.fixture(params=["sqlite", "postgres"])
async def sharers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Store]]:
    stores: list[Store]
    if request.param == "sqlite":
        stores = [SQLiteStore(str(tmp_path / "relay.db")), SQLiteStore(str(tmp_path / "relay.db"))]
    else:
        url = request.getfixturevalue("pg_url")
        stores = [PostgresStore.from_url(url), PostgresStore.from_url(url)]
    for s in stores:
        await s.open()
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def test_a_cap_is_shared_by_every_process_on_the_store(sharers: list[Store]) -> None:
    one, two = sharers
    for i in range(20):
        await ingest_to(one, f"k{i:02d}", ["slow", "fast"], at=T0 + i)
    caps = {"slow": 3}

    # Both claim at once, many times: together they never hold more than 3 slow leases.
    async def claims_of(store: Store) -> list[str]:
        taken: list[str] = []
        for _ in range(10):
            taken += [c.delivery_id for c in await store.claim(T0 + 30, 2, LEASE, caps=caps)]
            await asyncio.sleep(0)
        return taken

    first, second = await asyncio.gather(claims_of(one), claims_of(two))
    slow = [d for d in first + second if d.endswith("-slow")]
    fast = [d for d in first + second if d.endswith("-fast")]
    assert len(slow) == 3, slow
    assert len(set(first + second)) == len(first + second)  # nobody got a row twice
    assert len(fast) == 20  # the others were not held back by the cap


async def test_a_quota_bounds_one_claim_only_and_takes_the_lower_of_cap_and_quota(
    store: Store,
) -> None:
    # A quota is the caller's own free slots: it bounds this claim, not the leases held, and
    # the window is filled from the other destinations.
    for i in range(6):
        await ingest_to(store, f"old{i}", ["slow"], at=T0 + i)
    for i in range(3):
        await ingest_to(store, f"new{i}", ["fast"], at=T0 + 10 + i)
    claims = await store.claim(T0 + 20, 4, LEASE, quota={"slow": 1})
    assert [c.delivery_id for c in claims] == ["old0-slow", "new0-fast", "new1-fast", "new2-fast"]
    # Leases held do not count against a quota: another claim takes one more.
    claims = await store.claim(T0 + 21, 10, LEASE, quota={"slow": 1})
    assert [c.delivery_id for c in claims] == ["old1-slow"]
    # With a cap as well, the lower bound wins: the cap (3) leaves one slot, the quota two.
    claims = await store.claim(T0 + 22, 10, LEASE, caps={"slow": 3}, quota={"slow": 2})
    assert [c.delivery_id for c in claims] == ["old2-slow"]
    # A quota of 0 claims none of it.
    assert await store.claim(T0 + 23, 10, LEASE, quota={"slow": 0}) == []
