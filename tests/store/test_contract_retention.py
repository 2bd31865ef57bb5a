"""The Store contract for retention: ``prune`` and ``purge_dead``, on every backend.

Deliveries are brought to their states the way the dispatcher does it (claim, then finish at
a chosen time), so ``updated_at`` is when their last attempt ended.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.store.base import Outcome, PruneCount, Store
from tests.store.conftest import T0
from tests.store.test_contract import ingest_one, make_deliveries, make_event, quarantined

CUTOFF = T0 + 1000.0


async def settle(
    store: Store, now: float, outcomes: Mapping[str, str], *, retry_at: float = T0 + 10_000
) -> None:
    """Claim every delivery due at ``now``; finish those named in ``outcomes`` as said there
    (``pending``: retry at ``retry_at``), leave the others sending."""
    for claim in await store.claim(now, 100, 60.0):
        state = outcomes.get(claim.delivery_id)
        if state == "pending":
            outcome = Outcome("pending", "try later", next_attempt_at=retry_at)
        elif state in ("delivered", "dead"):
            outcome = Outcome("delivered" if state == "delivered" else "dead", state)
        else:
            continue
        assert await store.finish(claim, outcome, now, now)


async def exists(store: Store, delivery_id: str) -> bool:
    return await store.get_delivery(delivery_id) is not None


async def test_prune_takes_only_old_events_whose_every_delivery_was_delivered(
    store: Store,
) -> None:
    [a0, a1] = await ingest_one(store, "a", n=2)  # both delivered: goes
    [b0, b1] = await ingest_one(store, "b", n=2)  # one delivered, one dead: stays whole
    [c0] = await ingest_one(store, "c")  # waiting for a retry: stays
    [g0] = await ingest_one(store, "g")  # being sent: stays
    [e0] = await ingest_one(store, "e", at=CUTOFF + 10)  # received after the cutoff: stays
    await store.ingest(make_event("f"), [])  # no deliveries at all: goes
    await store.put_state("slack-0", "task:goapi-main/task-a", {"ts": "1.2"}, T0)
    await settle(
        store,
        T0 + 10,
        {a0: "delivered", a1: "delivered", b0: "delivered", b1: "dead", c0: "pending"},
    )
    [d0] = await ingest_one(store, "d")  # delivered, but after the cutoff (a retry): stays
    # d's first try fails; its retry, after the cutoff, succeeds.
    await settle(store, T0 + 20, {d0: "pending"}, retry_at=CUTOFF)
    await settle(store, CUTOFF + 5, {d0: "delivered"})
    await settle(store, CUTOFF + 20, {e0: "delivered"})
    states = {d: (r.state if (r := await store.get_delivery(d)) else None) for d in (c0, g0)}
    assert states == {c0: "pending", g0: "sending"}

    assert await store.prune(CUTOFF, 100) == PruneCount(events=2, deliveries=2, attempts=2)

    assert await store.get_event("ev-goapi-main-a") is None
    assert await store.get_event("ev-goapi-main-f") is None
    assert not await exists(store, a0) and not await exists(store, a1)
    assert await store.attempts(a0) == []
    for key in ("b", "c", "d", "g", "e"):
        assert await store.get_event(f"ev-goapi-main-{key}") is not None, key
    for kept in (b0, b1, c0, d0, g0, e0):
        assert await exists(store, kept), kept
    assert [a.state for a in await store.attempts(b1)] == ["dead"]
    assert [a.state for a in await store.attempts(d0)] == ["pending", "delivered"]
    # Channel state is not retention's: a task's message reference outlives its events.
    assert await store.get_state("slack-0", "task:goapi-main/task-a") == {"ts": "1.2"}
    # Nothing more to take.
    assert await store.prune(CUTOFF, 100) == PruneCount()


async def test_a_pruned_event_no_longer_counts_as_seen(store: Store) -> None:
    await store.ingest(make_event("k1"), [])
    assert (await store.prune(CUTOFF, 10)).events == 1

    again = await store.ingest(make_event("k1", id="ev-again", at=CUTOFF + 1), [])
    assert not again.duplicate and again.event_id == "ev-again"


async def test_prune_takes_at_most_limit_events_oldest_first(store: Store) -> None:
    for i in range(5):
        await store.ingest(make_event(f"k{i}", at=T0 + 50 - i), [])  # k4 is the oldest

    assert await store.prune(CUTOFF, 2) == PruneCount(events=2)
    left = {e.dedupe_key for e in await store.list_events()}
    assert left == {"k0", "k1", "k2"}
    assert await store.prune(CUTOFF, 2) == PruneCount(events=2)
    assert await store.prune(CUTOFF, 2) == PruneCount(events=1)
    assert await store.list_events() == []
    assert await store.prune(CUTOFF, 0) == PruneCount()


async def test_a_dry_run_counts_every_match_and_removes_nothing(store: Store) -> None:
    ids = [d for key in ("a", "b", "c") for d in await ingest_one(store, key, n=2)]
    await settle(store, T0 + 10, {d: "delivered" for d in ids})
    await store.ingest(make_event("none"), [])

    expected = PruneCount(events=4, deliveries=6, attempts=6)
    assert await store.prune(CUTOFF, 1, dry_run=True) == expected
    assert all([await exists(store, d) for d in ids])
    assert len(await store.list_events()) == 4
    assert await store.prune(CUTOFF, 100) == expected


async def test_prune_takes_reprocessed_quarantine_rows_and_keeps_quarantined_ones(
    store: Store,
) -> None:
    for qid, at in (("q-old", T0), ("q-kept", T0), ("q-new", CUTOFF + 1)):
        await store.quarantine(quarantined(qid, at))
    await store.ingest(make_event("from-q"), [])
    for qid in ("q-old", "q-new"):
        assert await store.settle_quarantined(
            qid, event_id="ev-goapi-main-from-q", reason="r", now=T0 + 1
        )

    # Not counted: what the counts name are events, deliveries and attempts.
    assert await store.prune(CUTOFF, 100) == PruneCount(events=1)

    assert await store.get_quarantined("q-old") is None
    kept = await store.get_quarantined("q-kept")
    assert kept is not None and kept.state == "quarantined"
    assert await store.get_quarantined("q-new") is not None


async def test_purge_dead_takes_old_dead_deliveries_and_their_emptied_events(
    store: Store,
) -> None:
    [x0] = await ingest_one(store, "x")  # dead alone: goes with its event
    [y0, y1] = await ingest_one(store, "y", n=2)  # dead beside a delivered one: event stays
    [p0] = await ingest_one(store, "p")  # pending: not purge's
    await settle(store, T0 + 10, {x0: "dead", y0: "dead", y1: "delivered", p0: "pending"})
    [z0] = await ingest_one(store, "z")  # died after the cutoff: stays
    await settle(store, T0 + 20, {z0: "pending"}, retry_at=CUTOFF)
    await settle(store, CUTOFF + 5, {z0: "dead"})

    count = await store.purge_dead(CUTOFF, 100)

    assert count == PruneCount(events=1, deliveries=2, attempts=2)
    assert await store.get_event("ev-goapi-main-x") is None
    assert not await exists(store, x0) and not await exists(store, y0)
    assert await store.attempts(x0) == [] and await store.attempts(y0) == []
    assert await store.get_event("ev-goapi-main-y") is not None
    assert await exists(store, y1) and await exists(store, z0) and await exists(store, p0)
    assert len(await store.attempts(z0)) == 2
    # What is left of y is all delivered: retention's now.
    assert await store.prune(CUTOFF, 100) == PruneCount(events=1, deliveries=1, attempts=1)
    assert await store.purge_dead(CUTOFF, 100) == PruneCount()


async def test_purge_dead_in_batches_removes_an_event_with_its_last_delivery(
    store: Store,
) -> None:
    ids = await ingest_one(store, "two", n=2)
    await store.ingest(make_event("one"), make_deliveries("one", 1))
    await settle(store, T0 + 10, dict.fromkeys([*ids, "one-d0"], "dead"))

    expected = PruneCount(events=2, deliveries=3, attempts=3)
    assert await store.purge_dead(CUTOFF, 1, dry_run=True) == expected
    assert len(await store.list_deliveries("dead")) == 3

    first = await store.purge_dead(CUTOFF, 2)
    second = await store.purge_dead(CUTOFF, 2)

    assert first.deliveries == 2 and second.deliveries == 1
    assert first.events + second.events == 2
    assert first.attempts + second.attempts == 3
    assert await store.list_events() == [] and await store.list_deliveries() == []
    assert await store.purge_dead(CUTOFF, 0) == PruneCount()
