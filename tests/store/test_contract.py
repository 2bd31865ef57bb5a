"""The Store contract: every backend must pass every test here.

MemoryStore is the executable spec; add a backend by adding a factory to BACKENDS
(tests/store/conftest.py, whose ``store`` fixture runs each test on every backend).
Times are fixed unix seconds, never the wall clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store.base import LOST_ATTEMPT, NewDelivery, Outcome, QuarantinedCallback, Store
from tests.store.conftest import T0


def make_event(
    key: str, *, source: str = "goapi-main", at: float = T0, id: str | None = None, **extra: Any
) -> TaskEvent:
    return TaskEvent(
        id=id or f"ev-{source}-{key}",
        source=source,
        provider="goapi",
        task_id=f"task-{key}",
        dedupe_key=key,
        status="succeeded",
        provider_status="completed",
        final=True,
        received_at=datetime.fromtimestamp(at, UTC),
        **extra,
    )


def make_deliveries(prefix: str, n: int = 2) -> list[NewDelivery]:
    return [NewDelivery(id=f"{prefix}-d{i}", destination=f"slack-{i}", route=i) for i in range(n)]


async def ingest_one(store: Store, key: str, *, at: float = T0, n: int = 1) -> list[str]:
    """Ingest an event with ``n`` deliveries; return the delivery ids."""
    deliveries = make_deliveries(key, n)
    result = await store.ingest(make_event(key, at=at), deliveries)
    assert not result.duplicate
    return [d.id for d in deliveries]


# --- ingest ---------------------------------------------------------------------------------


async def test_ingest_stores_event_and_deliveries(store: Store) -> None:
    event = make_event(
        "k1",
        model="kling-v2",
        task_type="video",
        prompt="a cat, ünïcode ✓",
        outputs=[{"kind": "video", "url": "https://cdn.example/v.mp4", "width": 1280}],
        created_at=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        duration_s=12.5,
        usage={"credits": 3, "nested": {"a": [1, 2.5, None]}},
        raw={"data": {"status": "completed"}, "list": [1, "x"]},
    )
    result = await store.ingest(event, make_deliveries("k1"))

    assert result.event_id == event.id
    assert not result.duplicate
    loaded = await store.get_event(event.id)
    assert loaded == event
    assert loaded is not None and loaded.model_dump_json() == event.model_dump_json()

    records = sorted(await store.list_deliveries(), key=lambda r: r.id)
    assert [(r.id, r.destination, r.route) for r in records] == [
        ("k1-d0", "slack-0", 0),
        ("k1-d1", "slack-1", 1),
    ]
    for r in records:
        assert (r.event_id, r.source, r.task_id, r.status) == (
            event.id,
            "goapi-main",
            "task-k1",
            "succeeded",
        )
        assert (r.state, r.attempts, r.last_error) == ("pending", 0, "")
        assert r.next_attempt_at == r.created_at == r.updated_at == T0
        assert await store.get_delivery(r.id) == r


async def test_unknown_ids_are_none(store: Store) -> None:
    assert await store.get_event("nope") is None
    assert await store.get_delivery("nope") is None
    assert await store.attempts("nope") == []


async def test_duplicate_dedupe_key_returns_first_event(store: Store) -> None:
    first = await store.ingest(make_event("k1"), make_deliveries("first"))
    again = await store.ingest(make_event("k1", id="ev-retry"), make_deliveries("again"))

    assert again.duplicate
    assert again.event_id == first.event_id
    assert await store.get_event("ev-retry") is None
    assert sorted(r.id for r in await store.list_deliveries()) == ["first-d0", "first-d1"]


async def test_same_key_in_another_source_is_not_a_duplicate(store: Store) -> None:
    a = await store.ingest(make_event("k1", source="a"), make_deliveries("a"))
    b = await store.ingest(make_event("k1", source="b"), make_deliveries("b"))

    assert not a.duplicate and not b.duplicate
    assert a.event_id != b.event_id
    assert len(await store.list_deliveries()) == 4


async def test_concurrent_ingests_store_one_event_per_key(store: Store) -> None:
    # 200 callbacks over 150 keys: 50 are retries of an earlier key, each with its own event id.
    calls = [(f"k{i % 150}", f"ev-{i}") for i in range(200)]
    results = await asyncio.gather(
        *(store.ingest(make_event(key, id=eid), make_deliveries(eid)) for key, eid in calls)
    )

    winners: dict[str, str] = {}
    for (key, eid), result in zip(calls, results, strict=True):
        if not result.duplicate:
            assert result.event_id == eid
            assert key not in winners
            winners[key] = eid
    assert len(winners) == 150
    for (key, _), result in zip(calls, results, strict=True):
        assert result.event_id == winners[key]

    records = await store.list_deliveries(limit=1000)
    assert sorted(r.id for r in records) == sorted(
        f"{eid}-d{i}" for eid in winners.values() for i in range(2)
    )
    assert {r.event_id for r in records} == set(winners.values())


async def test_event_id_clash_is_refused_alone(store: Store) -> None:
    await ingest_one(store, "k1")
    clash = make_event("k2", id="ev-goapi-main-k1")  # new key, but an existing event id

    results = await asyncio.gather(
        store.ingest(clash, make_deliveries("clash")),
        store.ingest(make_event("k3"), make_deliveries("k3")),
        return_exceptions=True,
    )

    assert isinstance(results[0], StoreUnavailableError)
    assert not isinstance(results[1], BaseException) and not results[1].duplicate
    ids = sorted(r.id for r in await store.list_deliveries())
    assert ids == ["k1-d0", "k3-d0", "k3-d1"]
    stored = await store.get_event("ev-goapi-main-k1")
    assert stored is not None and stored.dedupe_key == "k1"


# --- claim ------------------------------------------------------------------------------------


async def test_claim_takes_due_deliveries_oldest_first_up_to_limit(store: Store) -> None:
    late = await ingest_one(store, "late", at=T0 + 10)
    first = await ingest_one(store, "first", at=T0, n=2)
    middle = await ingest_one(store, "middle", at=T0 + 5)

    claims = await store.claim(now=T0 + 5, limit=10, lease_seconds=30)
    # Same due time: creation order.
    assert [c.delivery_id for c in claims] == [*first, *middle]
    assert [c.attempt for c in claims] == [1, 1, 1]
    assert all(c.lease_until == T0 + 35 for c in claims)
    assert len({c.lease_token for c in claims}) == 3
    assert claims[0].event == make_event("first", at=T0)
    assert (claims[1].destination, claims[1].route) == ("slack-1", 1)

    assert await store.claim(now=T0 + 5, limit=10, lease_seconds=30) == []
    assert await store.claim(now=T0 + 100, limit=0, lease_seconds=30) == []
    limited = await store.claim(now=T0 + 100, limit=1, lease_seconds=30)
    assert [c.delivery_id for c in limited] == late


async def test_claimed_delivery_is_taken_over_only_after_lease_expires(store: Store) -> None:
    [did] = await ingest_one(store, "k1")
    [first] = await store.claim(now=T0, limit=10, lease_seconds=30)

    assert await store.claim(now=T0 + 29.9, limit=10, lease_seconds=30) == []
    [second] = await store.claim(now=T0 + 30, limit=10, lease_seconds=30)

    assert second.delivery_id == did
    assert second.attempt == 2
    assert second.lease_token != first.lease_token
    assert second.lease_until == T0 + 60
    record = await store.get_delivery(did)
    assert record is not None
    assert (record.state, record.attempts, record.updated_at) == ("sending", 2, T0 + 30)


async def test_finish_with_stale_lease_changes_nothing(store: Store) -> None:
    [did] = await ingest_one(store, "k1")
    [stale] = await store.claim(now=T0, limit=10, lease_seconds=30)
    [current] = await store.claim(now=T0 + 40, limit=10, lease_seconds=30)
    before = await store.get_delivery(did)

    assert not await store.finish(stale, Outcome("delivered"), started_at=T0, now=T0 + 41)
    assert not await store.finish(
        replace(current, lease_token="forged"), Outcome("dead"), started_at=T0, now=T0 + 41
    )

    assert await store.get_delivery(did) == before
    # Only the row the take-over wrote for the lost attempt: the refused finishes wrote none.
    assert [(a.attempt, a.detail) for a in await store.attempts(did)] == [(1, LOST_ATTEMPT)]
    assert await store.finish(current, Outcome("delivered"), started_at=T0 + 40, now=T0 + 41)


async def test_finish_whose_caller_is_cancelled_is_still_recorded(store: Store) -> None:
    # The dispatcher awaits finish without a shield of its own (a shutdown may cancel it
    # there): the outcome of a message that went out must be kept all the same.
    cancelled_id, later_id = await ingest_one(store, "k1", n=2)
    claims = {c.delivery_id: c for c in await store.claim(now=T0, limit=10, lease_seconds=30)}

    caller = asyncio.ensure_future(
        store.finish(claims[cancelled_id], Outcome("delivered"), T0, T0 + 1)
    )
    await asyncio.sleep(0)  # the caller has begun and waits for the write (if the store waits)
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    # Outcomes are written in the order they came: once a later one is in, so is the first.
    assert await store.finish(claims[later_id], Outcome("delivered"), T0, T0 + 2)

    for did in (cancelled_id, later_id):
        record = await store.get_delivery(did)
        assert record is not None and record.state == "delivered", did
        assert [a.state for a in await store.attempts(did)] == ["delivered"]


async def test_outcomes_and_attempt_rows(store: Store) -> None:
    [did] = await ingest_one(store, "k1")

    [c1] = await store.claim(now=T0, limit=10, lease_seconds=30)
    retry = Outcome("pending", detail="slack: 503", next_attempt_at=T0 + 60)
    assert await store.finish(c1, retry, started_at=T0, now=T0 + 1)
    record = await store.get_delivery(did)
    assert record is not None
    assert (record.state, record.next_attempt_at, record.last_error) == (
        "pending",
        T0 + 60,
        "slack: 503",
    )
    assert record.updated_at == T0 + 1
    assert not await store.finish(c1, Outcome("delivered"), started_at=T0, now=T0 + 2)

    assert await store.claim(now=T0 + 59, limit=10, lease_seconds=30) == []
    [c2] = await store.claim(now=T0 + 60, limit=10, lease_seconds=30)
    assert c2.attempt == 2
    assert await store.finish(c2, Outcome("dead", detail="slack: 404"), T0 + 60, T0 + 61)
    record = await store.get_delivery(did)
    assert record is not None
    assert (record.state, record.next_attempt_at, record.last_error, record.attempts) == (
        "dead",
        None,
        "slack: 404",
        2,
    )
    assert await store.claim(now=T0 + 1000, limit=10, lease_seconds=30) == []

    [other] = await ingest_one(store, "k2")
    [c3] = await store.claim(now=T0 + 100, limit=10, lease_seconds=30)
    assert await store.finish(c3, Outcome("delivered"), started_at=T0 + 100, now=T0 + 100.5)
    record = await store.get_delivery(other)
    assert record is not None
    assert (record.state, record.next_attempt_at, record.last_error) == ("delivered", None, "")

    attempts = await store.attempts(did)
    assert [(a.attempt, a.started_at, a.finished_at, a.state, a.detail) for a in attempts] == [
        (1, T0, T0 + 1, "pending", "slack: 503"),
        (2, T0 + 60, T0 + 61, "dead", "slack: 404"),
    ]
    assert {a.delivery_id for a in attempts} == {did}
    assert len(await store.attempts(other)) == 1


async def test_pending_outcome_needs_a_time(store: Store) -> None:
    await ingest_one(store, "k1")
    [claim] = await store.claim(now=T0, limit=10, lease_seconds=30)
    with pytest.raises(ValueError, match="next_attempt_at"):
        await store.finish(claim, Outcome("pending"), started_at=T0, now=T0)
    assert await store.finish(claim, Outcome("delivered"), started_at=T0, now=T0)


# --- listing, replay, next_due ----------------------------------------------------------------


async def test_list_deliveries_by_state_newest_first(store: Store) -> None:
    old = await ingest_one(store, "old", at=T0, n=2)
    new = await ingest_one(store, "new", at=T0 + 10)
    mid = await ingest_one(store, "mid", at=T0 + 5)

    everything = await store.list_deliveries()
    assert [r.id for r in everything] == [*new, *mid, old[1], old[0]]
    assert [r.id for r in await store.list_deliveries(limit=2)] == [*new, *mid]
    assert await store.list_deliveries(limit=0) == []

    claims = await store.claim(now=T0, limit=1, lease_seconds=30)
    assert await store.finish(claims[0], Outcome("dead", "gone"), T0, T0)
    assert [r.id for r in await store.list_deliveries("dead")] == [old[0]]
    assert [r.id for r in await store.list_deliveries("pending")] == [*new, *mid, old[1]]
    assert await store.list_deliveries("sending") == []
    assert await store.list_deliveries("delivered") == []


async def test_replay_makes_only_dead_deliveries_pending(store: Store) -> None:
    dead, delivered, pending = [(await ingest_one(store, k))[0] for k in ("a", "b", "c")]
    claims = {c.delivery_id: c for c in await store.claim(now=T0, limit=2, lease_seconds=30)}
    assert await store.finish(claims[dead], Outcome("dead", "404"), T0, T0 + 1)
    assert await store.finish(claims[delivered], Outcome("delivered"), T0, T0 + 1)

    assert not await store.replay(delivered, now=T0 + 50)
    assert not await store.replay(pending, now=T0 + 50)
    assert not await store.replay("nope", now=T0 + 50)
    assert await store.replay(dead, now=T0 + 50)
    assert not await store.replay(dead, now=T0 + 50)  # already pending

    record = await store.get_delivery(dead)
    assert record is not None
    assert (record.state, record.attempts, record.next_attempt_at, record.updated_at) == (
        "pending",
        0,
        T0 + 50,
        T0 + 50,
    )
    assert (await store.get_delivery(delivered)) is not None
    assert [c.delivery_id for c in await store.claim(T0 + 49, 10, 30)] == [pending]
    [again] = await store.claim(now=T0 + 50, limit=10, lease_seconds=30)
    assert (again.delivery_id, again.attempt) == (dead, 1)
    assert len(await store.attempts(dead)) == 1  # history is kept


async def test_next_due(store: Store) -> None:
    assert await store.next_due() is None
    [a] = await ingest_one(store, "a", at=T0 + 20)
    [b] = await ingest_one(store, "b", at=T0 + 10)
    assert await store.next_due() == T0 + 10

    [claim] = await store.claim(now=T0 + 10, limit=1, lease_seconds=5)
    assert claim.delivery_id == b
    assert await store.next_due() == T0 + 15  # the lease runs out before a falls due
    assert await store.finish(claim, Outcome("delivered"), T0 + 10, T0 + 11)
    assert await store.next_due() == T0 + 20

    [claim] = await store.claim(now=T0 + 20, limit=1, lease_seconds=60)
    assert await store.finish(claim, Outcome("dead"), T0 + 20, T0 + 21)
    assert claim.delivery_id == a
    assert await store.next_due() is None


async def test_ping_and_closed_store(store: Store) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.ping()
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.ingest(make_event("k1"), [])
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.get_event("x")


# --- ordered groups ---------------------------------------------------------------------------


async def ingest_grouped(store: Store, key: str, group: str | None, *, at: float = T0) -> str:
    """One event of task ``group`` with one delivery to "slack"; the delivery id."""
    delivery = NewDelivery(id=f"{key}-d", destination="slack", route=0, group=group)
    await store.ingest(make_event(key, at=at), [delivery])
    return delivery.id


async def test_a_group_is_claimed_one_delivery_at_a_time_in_order(store: Store) -> None:
    first = await ingest_grouped(store, "progress", "goapi/t1")
    second = await ingest_grouped(store, "final", "goapi/t1", at=T0 + 1)
    other_task = await ingest_grouped(store, "other", "goapi/t2", at=T0 + 1)
    unordered = await ingest_grouped(store, "webhook", None, at=T0 + 1)

    claims = await store.claim(now=T0 + 5, limit=10, lease_seconds=30)
    assert [c.delivery_id for c in claims] == [first, other_task, unordered]
    # While the first is sending (or pending a retry), the second waits and is not due.
    assert await store.claim(now=T0 + 6, limit=10, lease_seconds=30) == []
    assert await store.next_due() == T0 + 5 + 30  # the leases, not the held-back delivery
    retry = Outcome("pending", detail="ratelimited", next_attempt_at=T0 + 20)
    assert await store.finish(claims[0], retry, started_at=T0 + 5, now=T0 + 6)
    assert await store.claim(now=T0 + 10, limit=10, lease_seconds=30) == []

    [again] = await store.claim(now=T0 + 20, limit=10, lease_seconds=30)
    assert again.delivery_id == first
    assert await store.finish(again, Outcome("delivered"), started_at=T0 + 20, now=T0 + 21)
    [then] = await store.claim(now=T0 + 21, limit=10, lease_seconds=30)
    assert then.delivery_id == second


async def test_a_dead_delivery_does_not_hold_its_group_back(store: Store) -> None:
    first = await ingest_grouped(store, "progress", "goapi/t1")
    second = await ingest_grouped(store, "final", "goapi/t1", at=T0 + 1)
    [claim] = await store.claim(now=T0 + 1, limit=10, lease_seconds=30)
    assert claim.delivery_id == first
    assert await store.finish(claim, Outcome("dead", "channel_not_found"), T0 + 1, T0 + 2)
    assert await store.next_due() == T0 + 1
    [then] = await store.claim(now=T0 + 2, limit=10, lease_seconds=30)
    assert then.delivery_id == second


async def test_groups_are_per_destination(store: Store) -> None:
    deliveries = [
        NewDelivery(id="a-slack", destination="slack", route=0, group="goapi/t1"),
        NewDelivery(id="a-mail", destination="mail", route=0, group="goapi/t1"),
    ]
    await store.ingest(make_event("a"), deliveries)
    await store.ingest(
        make_event("b", at=T0 + 1),
        [NewDelivery(id="b-mail", destination="mail", route=0, group="goapi/t1")],
    )
    claims = await store.claim(now=T0 + 1, limit=10, lease_seconds=30)
    assert sorted(c.delivery_id for c in claims) == ["a-mail", "a-slack"]


# --- deferred outcomes, channel state, pacing ---------------------------------------------------


async def test_a_deferred_outcome_is_not_an_attempt(store: Store) -> None:
    [did] = await ingest_one(store, "k1")
    [claim] = await store.claim(now=T0, limit=10, lease_seconds=30)
    wait = Outcome("pending", "paced", next_attempt_at=T0 + 0.8, deferred=True)
    assert await store.finish(claim, wait, started_at=T0, now=T0)
    record = await store.get_delivery(did)
    assert record is not None
    assert (record.state, record.attempts, record.next_attempt_at) == ("pending", 0, T0 + 0.8)
    assert await store.attempts(did) == []
    assert await store.claim(now=T0 + 0.5, limit=10, lease_seconds=30) == []
    [again] = await store.claim(now=T0 + 0.8, limit=10, lease_seconds=30)
    assert again.attempt == 1


async def test_channel_state_round_trips_and_is_replaced(store: Store) -> None:
    assert await store.get_state("slack", "goapi/t1") is None
    ref = {"channel": "C1", "ts": "1700000000.000100", "final": False, "n": [1, "two"]}
    await store.put_state("slack", "goapi/t1", ref, now=T0)
    assert await store.get_state("slack", "goapi/t1") == ref
    assert await store.get_state("other", "goapi/t1") is None
    await store.put_state("slack", "goapi/t1", {"channel": "C1", "final": True}, now=T0 + 1)
    assert await store.get_state("slack", "goapi/t1") == {"channel": "C1", "final": True}
    # What the caller holds is a copy: changing it changes nothing stored.
    got = await store.get_state("slack", "goapi/t1")
    assert got is not None
    got["final"] = False
    assert await store.get_state("slack", "goapi/t1") == {"channel": "C1", "final": True}


async def test_pace_hands_out_one_slot_per_interval(store: Store) -> None:
    assert await store.pace("slack:C1", 1.0, now=T0) == 0.0
    assert await store.pace("slack:C1", 1.0, now=T0 + 0.25) == pytest.approx(0.75)
    assert await store.pace("slack:C2", 1.0, now=T0 + 0.25) == 0.0  # another channel
    assert await store.pace("slack:C1", 1.0, now=T0 + 1.0) == 0.0
    assert await store.pace("slack:C1", 1.0, now=T0 + 1.5) == pytest.approx(0.5)


# --- events, newest first -----------------------------------------------------------------------


async def test_list_events_newest_received_first(store: Store) -> None:
    assert await store.list_events() == []
    for n, at in enumerate([T0 + 5, T0 + 1, T0 + 9, T0 + 9]):
        await store.ingest(make_event(f"k{n}", at=at), [])
    listed = await store.list_events()
    # Same instant: the larger id first (ours are time-ordered: the later ingest).
    assert [e.id for e in listed] == [
        "ev-goapi-main-k3",
        "ev-goapi-main-k2",
        "ev-goapi-main-k0",
        "ev-goapi-main-k1",
    ]
    assert listed[0] == make_event("k3", at=T0 + 9)
    assert [e.id for e in await store.list_events(limit=2)] == [e.id for e in listed[:2]]
    assert await store.list_events(limit=0) == []


# --- quarantine ---------------------------------------------------------------------------------


def quarantined(qid: str, at: float = T0, **extra: Any) -> QuarantinedCallback:
    fields: dict[str, Any] = {
        "id": qid,
        "source": "goapi-main",
        "provider": "goapi",
        "received_at": at,
        "reason": "KeyError: 'image_url'",
        "body": b'{"data":{"task_id":"t-1","note":"caf\\u00e9"}}',
        "headers": {"content-type": "application/json", "user-agent": "GoAPI/1"},
        "query": {"page": "2"},
        "client_ip": "203.0.113.9",
        "updated_at": at,
        **extra,
    }
    return QuarantinedCallback(**fields)


async def test_a_quarantined_callback_is_kept_exactly_and_listed_newest_first(
    store: Store,
) -> None:
    assert await store.list_quarantined() == []
    first, second = quarantined("qcb-1", T0), quarantined("qcb-2", T0 + 1, client_ip=None)
    await store.quarantine(first)
    await store.quarantine(second)
    assert await store.get_quarantined("qcb-1") == first
    assert await store.get_quarantined("qcb-nope") is None
    assert await store.list_quarantined() == [second, first]
    assert await store.list_quarantined(limit=1) == [second]
    # Ids are ours and unique: a clash is refused like a primary key would refuse it.
    with pytest.raises(StoreUnavailableError):
        await store.quarantine(quarantined("qcb-1", T0 + 2))
    assert await store.get_quarantined("qcb-1") == first


async def test_settling_a_quarantined_callback(store: Store) -> None:
    await store.quarantine(quarantined("qcb-1"))
    # Still unreadable: it stays, under the new reason.
    assert await store.settle_quarantined(
        "qcb-1", event_id=None, reason="now refused (400): data.task_id", now=T0 + 5
    )
    kept = await store.get_quarantined("qcb-1")
    assert kept == quarantined("qcb-1", reason="now refused (400): data.task_id", updated_at=T0 + 5)
    # Read at last: reprocessed into an event, and listed only when asked.
    assert await store.settle_quarantined("qcb-1", event_id="ev-9", reason="r", now=T0 + 9)
    done = await store.get_quarantined("qcb-1")
    assert done is not None and (done.state, done.event_id) == ("reprocessed", "ev-9")
    assert await store.list_quarantined() == []
    assert await store.list_quarantined(include_reprocessed=True) == [done]
    # Once only, and never an unknown one.
    assert not await store.settle_quarantined("qcb-1", event_id="ev-10", reason="r", now=T0)
    assert not await store.settle_quarantined("qcb-2", event_id=None, reason="r", now=T0)
    assert await store.get_quarantined("qcb-1") == done
