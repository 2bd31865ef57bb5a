"""Store contract: a delivery taken over from an expired lease gets the attempt row its lost
attempt never wrote (every backend), so the attempt log has no hole where a process died."""

from __future__ import annotations

from relay.store.base import LOST_ATTEMPT, Outcome, Store
from tests.store.conftest import T0
from tests.store.test_contract_claim_skip import ingest_to

LEASE = 30.0


async def test_a_taken_over_delivery_logs_its_lost_attempt(store: Store) -> None:
    await ingest_to(store, "k", ["down"])
    [first] = await store.claim(T0 + 1, 10, LEASE)
    # Its process died: nothing recorded. Within the lease nobody takes it.
    assert await store.claim(T0 + 2, 10, LEASE) == []
    [second] = await store.claim(T0 + 1 + LEASE, 10, LEASE)
    assert (first.attempt, second.attempt) == (1, 2)
    assert await store.finish(second, Outcome("delivered"), started_at=T0 + 32, now=T0 + 33)

    log = await store.attempts("k-down")
    assert [(a.attempt, a.state, a.detail) for a in log] == [
        (1, "pending", LOST_ATTEMPT),
        (2, "delivered", ""),
    ]
    # When the lost attempt began (its lease) and when its lease ran out.
    assert (log[0].started_at, log[0].finished_at) == (T0 + 1, T0 + 1 + LEASE)


async def test_a_first_claim_writes_no_attempt(store: Store) -> None:
    await ingest_to(store, "k", ["down"])
    await store.claim(T0 + 1, 10, LEASE)
    assert await store.attempts("k-down") == []
