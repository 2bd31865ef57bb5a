"""The Store contract, continued: filtered listings with cursors, replay of delivered
deliveries, re-routes, released leases, queue figures and refused callbacks.

Every test runs on every backend (the ``store`` fixture); MemoryStore is the spec.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store.base import (
    Cursor,
    DeliveryFilter,
    DeliveryRecord,
    DeliveryState,
    EventFilter,
    NewDelivery,
    Outcome,
    RejectedRequest,
    Store,
)
from tests.store.conftest import T0
from tests.store.test_contract import ingest_one, make_deliveries, make_event


def event(key: str, at: float = T0, **fields: Any) -> TaskEvent:
    """An event whose every filtered field can be chosen."""
    values: dict[str, Any] = {
        "id": f"ev-{key}",
        "source": "goapi-main",
        "provider": "goapi",
        "task_id": f"task-{key}",
        "dedupe_key": key,
        "status": "succeeded",
        "provider_status": "completed",
        "final": True,
        "received_at": datetime.fromtimestamp(at, UTC),
        **fields,
    }
    return TaskEvent(**values)


def ids(rows: list[TaskEvent] | list[DeliveryRecord]) -> list[str]:
    return [r.id for r in rows]


async def all_events(store: Store, where: EventFilter, page: int) -> list[TaskEvent]:
    """Every page of ``where``, ``page`` at a time, following the cursor to the end."""
    rows: list[TaskEvent] = []
    before: Cursor | None = None
    for _ in range(1000):  # bounded: far more pages than any test makes
        got = await store.find_events(where, limit=page, before=before)
        assert len(got) <= page
        rows += got
        if len(got) < page:
            return rows
        last = got[-1]
        before = (last.received_at.timestamp(), last.id)
    raise AssertionError("the cursor never reached the end")


async def all_deliveries(store: Store, where: DeliveryFilter, page: int) -> list[DeliveryRecord]:
    rows: list[DeliveryRecord] = []
    before: Cursor | None = None
    for _ in range(1000):
        got = await store.find_deliveries(where, limit=page, before=before)
        assert len(got) <= page
        rows += got
        if len(got) < page:
            return rows
        before = (got[-1].created_at, got[-1].id)
    raise AssertionError("the cursor never reached the end")


# --- find_events ----------------------------------------------------------------------------


async def test_find_events_by_each_filter(store: Store) -> None:
    a = event("a", T0, source="s1", task_id="t1", model='kling "v2" ✓')
    b = event("b", T0 + 1, source="s2", provider="novita", status="failed", model="flux")
    c = event("c", T0 + 2, source="s1", provider="novita", task_id="t3")  # no model
    d = event("d", T0 + 3, source="s1", status="failed", task_id="t1", model='kling "v2" ✓')
    for e in (c, a, d, b):  # not in time order: the listing orders them
        await store.ingest(e, [])

    async def find(**where: Any) -> list[str]:
        return ids(await store.find_events(EventFilter(**where)))

    assert await find() == ["ev-d", "ev-c", "ev-b", "ev-a"]
    assert await find(source="s1") == ["ev-d", "ev-c", "ev-a"]
    assert await find(source="nope") == []
    assert await find(provider="novita") == ["ev-c", "ev-b"]
    assert await find(status="failed") == ["ev-d", "ev-b"]
    assert await find(task_id="t1") == ["ev-d", "ev-a"]
    assert await find(model='kling "v2" ✓') == ["ev-d", "ev-a"]
    assert await find(model="flux") == ["ev-b"]
    assert await find(model="kling") == []  # equal, not contains
    # since is inclusive, until exclusive.
    assert await find(since=T0 + 1) == ["ev-d", "ev-c", "ev-b"]
    assert await find(until=T0 + 2) == ["ev-b", "ev-a"]
    assert await find(since=T0 + 1, until=T0 + 3) == ["ev-c", "ev-b"]
    assert await find(since=T0 + 3, until=T0 + 3) == []
    assert await find(source="s1", status="succeeded") == ["ev-c", "ev-a"]
    assert await find(source="s1", task_id="t1", since=T0 + 1) == ["ev-d"]

    # The events come back as stored, byte for byte.
    [got] = await store.find_events(EventFilter(model="flux"))
    assert got == b and got.model_dump_json() == b.model_dump_json()
    assert ids(await store.find_events(EventFilter(), limit=2)) == ["ev-d", "ev-c"]
    assert await store.find_events(EventFilter(), limit=0) == []


async def test_events_page_by_cursor_through_ties_to_the_end(store: Store) -> None:
    # 30 events in one instant, ingested in an order unlike their ids, between others.
    same = [f"ev-{(n * 7) % 30:02d}" for n in range(30)]
    for n, eid in enumerate(same):
        source = "even" if n % 2 == 0 else "odd"
        await store.ingest(event(eid, T0 + 5, id=eid, source=source), [])
    for n, at in enumerate((T0 + 9, T0 + 1, T0 + 5.5, T0)):
        await store.ingest(event(f"other-{n}", at, id=f"ev-other-{n}", source="even"), [])

    everything = await store.find_events(EventFilter(), limit=1000)
    order = [(e.received_at.timestamp(), e.id) for e in everything]
    assert order == sorted(order, reverse=True)  # (received_at, id) descending, ties by id
    assert len(everything) == 34
    assert ids(everything[:2]) == ["ev-other-0", "ev-other-2"]
    assert ids(everything[2:32]) == sorted(same, reverse=True)

    for page in (1, 7, 30, 34, 50):
        assert ids(await all_events(store, EventFilter(), page)) == ids(everything)
    evens = [e.id for e in everything if e.source == "even"]
    assert ids(await all_events(store, EventFilter(source="even"), 4)) == evens
    window = EventFilter(since=T0 + 5, until=T0 + 9)
    assert ids(await all_events(store, window, 8)) == ids(everything[1:32])

    # A cursor strictly after the last row: nothing; mid-tie: the rest of the tie.
    last = everything[-1]
    assert (
        await store.find_events(EventFilter(), before=(last.received_at.timestamp(), last.id)) == []
    )
    assert ids(await store.find_events(EventFilter(), limit=3, before=(T0 + 5, "ev-15"))) == [
        "ev-14",
        "ev-13",
        "ev-12",
    ]


async def test_list_events_is_find_events_of_everything(store: Store) -> None:
    for n in range(5):
        await store.ingest(event(f"k{n}", T0 + n % 2), [])
    assert await store.list_events(limit=3) == await store.find_events(EventFilter(), limit=3)


# --- find_deliveries, count_deliveries --------------------------------------------------------


async def scripted(store: Store) -> dict[str, str]:
    """Three events, five deliveries in every state but sending; name -> delivery id."""
    await store.ingest(make_event("a", at=T0), make_deliveries("a", 2))  # slack-0, slack-1
    await store.ingest(make_event("b", at=T0 + 5), make_deliveries("b", 1))  # slack-0
    await store.ingest(make_event("c", at=T0 + 10), [NewDelivery("c-mail", "mail", 0)])
    claims = {c.delivery_id: c for c in await store.claim(T0, 10, 30)}
    assert set(claims) == {"a-d0", "a-d1"}
    assert await store.finish(claims["a-d0"], Outcome("dead", "404"), T0, T0 + 1)
    assert await store.finish(claims["a-d1"], Outcome("delivered"), T0, T0 + 1)
    return {"dead": "a-d0", "delivered": "a-d1", "b": "b-d0", "mail": "c-mail"}


async def test_find_and_count_deliveries_by_each_filter(store: Store) -> None:
    await scripted(store)

    async def find(**where: Any) -> list[str]:
        found = ids(await store.find_deliveries(DeliveryFilter(**where)))
        assert await store.count_deliveries(DeliveryFilter(**where)) == len(found)
        return found

    assert await find() == ["c-mail", "b-d0", "a-d1", "a-d0"]
    assert await find(state="dead") == ["a-d0"]
    assert await find(state="delivered") == ["a-d1"]
    assert await find(state="pending") == ["c-mail", "b-d0"]
    assert await find(state="sending") == []
    assert await find(destination="slack-0") == ["b-d0", "a-d0"]
    assert await find(destination="mail") == ["c-mail"]
    assert await find(event_id="ev-goapi-main-a") == ["a-d1", "a-d0"]
    assert await find(event_id="nope") == []
    assert await find(since=T0 + 5) == ["c-mail", "b-d0"]
    assert await find(until=T0 + 5) == ["a-d1", "a-d0"]
    assert await find(since=T0, until=T0 + 10) == ["b-d0", "a-d1", "a-d0"]
    assert await find(state="pending", destination="slack-0") == ["b-d0"]
    assert await find(state="dead", event_id="ev-goapi-main-a", destination="slack-0") == ["a-d0"]
    assert await find(state="dead", destination="slack-1") == []

    [record] = await store.find_deliveries(DeliveryFilter(state="dead"))
    assert record == await store.get_delivery("a-d0")
    assert (record.source, record.task_id, record.status, record.last_error) == (
        "goapi-main",
        "task-a",
        "succeeded",
        "404",
    )
    assert ids(await store.find_deliveries(DeliveryFilter(), limit=1)) == ["c-mail"]
    assert await store.find_deliveries(DeliveryFilter(), limit=0) == []


async def test_deliveries_page_by_cursor_through_ties_to_the_end(store: Store) -> None:
    # 12 events in one instant with 3 deliveries each, ids in an order unlike creation.
    for n in range(12):
        key = f"e{(n * 5) % 12:02d}"
        deliveries = [NewDelivery(f"{key}-{d}", f"dest-{d}", r) for r, d in enumerate("cab")]
        await store.ingest(make_event(key, at=T0), deliveries)
    await ingest_one(store, "later", at=T0 + 1, n=2)
    await ingest_one(store, "earlier", at=T0 - 1, n=2)

    everything = await store.find_deliveries(DeliveryFilter(), limit=1000)
    assert len(everything) == 40
    order = [(r.created_at, r.id) for r in everything]
    assert order == sorted(order, reverse=True)
    assert ids(everything[:2]) == ["later-d1", "later-d0"]
    assert ids(everything[-2:]) == ["earlier-d1", "earlier-d0"]

    for page in (1, 5, 36, 40, 41):
        assert ids(await all_deliveries(store, DeliveryFilter(), page)) == ids(everything)
    dest_a = [r.id for r in everything if r.destination == "dest-a"]
    assert len(dest_a) == 12
    assert ids(await all_deliveries(store, DeliveryFilter(destination="dest-a"), 5)) == dest_a
    pending_now = DeliveryFilter(state="pending", since=T0, until=T0 + 1)
    assert ids(await all_deliveries(store, pending_now, 7)) == ids(everything[2:38])
    assert await store.count_deliveries(pending_now) == 36
    mid_tie = await store.find_deliveries(DeliveryFilter(), limit=2, before=(T0, "e05-b"))
    assert ids(mid_tie) == ["e05-a", "e04-c"]


async def test_list_deliveries_is_find_deliveries_by_state(store: Store) -> None:
    await scripted(store)
    states: tuple[DeliveryState | None, ...] = (None, "dead", "pending")
    for state in states:
        listed = await store.list_deliveries(state, limit=3)
        assert listed == await store.find_deliveries(DeliveryFilter(state=state), limit=3)


# --- replay of delivered deliveries -------------------------------------------------------------


async def test_replay_takes_the_states_asked_for_and_never_pending_or_sending(
    store: Store,
) -> None:
    names = await scripted(store)
    dead, delivered, pending = names["dead"], names["delivered"], names["mail"]
    [sending] = await store.claim(T0 + 5, 10, 30)
    assert sending.delivery_id == names["b"]
    every: tuple[DeliveryState, ...] = ("pending", "sending", "dead", "delivered")

    assert not await store.replay(delivered, T0 + 50)  # dead only, by default
    assert not await store.replay(dead, T0 + 50, states=("delivered",))
    assert not await store.replay(sending.delivery_id, T0 + 50, states=every)
    assert not await store.replay(pending, T0 + 50, states=every)
    assert not await store.replay("nope", T0 + 50, states=every)
    assert not await store.replay(dead, T0 + 50, states=())
    untouched = await store.find_deliveries(DeliveryFilter(state="pending"))
    assert ids(untouched) == [pending]
    assert untouched[0].next_attempt_at == T0 + 10
    still = await store.get_delivery(sending.delivery_id)
    assert still is not None and (still.state, still.attempts) == ("sending", 1)

    assert await store.replay(delivered, T0 + 50, states=("delivered",))
    assert await store.replay(dead, T0 + 50, states=("dead", "delivered"))
    assert not await store.replay(dead, T0 + 50, states=every)  # pending now
    for did, error in ((delivered, ""), (dead, "404")):
        record = await store.get_delivery(did)
        assert record is not None
        assert (record.state, record.attempts, record.next_attempt_at, record.updated_at) == (
            "pending",
            0,
            T0 + 50,
            T0 + 50,
        )
        assert record.last_error == error  # kept until the next attempt says otherwise
        assert len(await store.attempts(did)) == 1  # history is kept

    claimed = {c.delivery_id: c.attempt for c in await store.claim(T0 + 50, 10, 30)}
    # The replayed start again at 1; the sending one's lease ran out (its second attempt).
    assert claimed == {dead: 1, delivered: 1, pending: 1, sending.delivery_id: 2}


# --- add_deliveries -------------------------------------------------------------------------------


async def test_add_deliveries_to_a_stored_event(store: Store) -> None:
    [first] = await ingest_one(store, "k1")
    [claim] = await store.claim(T0, 10, 30)
    assert await store.finish(claim, Outcome("delivered"), T0, T0 + 1)
    added = [NewDelivery("re-1", "mail", 3), NewDelivery("re-2", "hook", 4)]

    assert not await store.add_deliveries("nope", [NewDelivery("x", "mail", 0)], T0 + 100)
    assert await store.get_delivery("x") is None
    assert await store.add_deliveries("ev-goapi-main-k1", added, T0 + 100)

    records = await store.find_deliveries(DeliveryFilter(event_id="ev-goapi-main-k1"))
    assert ids(records) == ["re-2", "re-1", first]
    for record, new in zip(records[:2], reversed(added), strict=True):
        assert (record.destination, record.route, record.state, record.attempts) == (
            new.destination,
            new.route,
            "pending",
            0,
        )
        # Created now, when the re-route made it: not when the event came in.
        assert record.created_at == record.next_attempt_at == record.updated_at == T0 + 100
        assert (record.source, record.task_id, record.status) == (
            "goapi-main",
            "task-k1",
            "succeeded",
        )
    assert await store.count_deliveries(DeliveryFilter(since=T0 + 100)) == 2
    assert await store.claim(T0 + 99, 10, 30) == []
    assert await store.next_due() == T0 + 100
    claims = await store.claim(T0 + 100, 10, 30)
    assert [c.delivery_id for c in claims] == ["re-1", "re-2"]  # due together: in order given
    assert claims[0].event == make_event("k1")
    assert await store.add_deliveries("ev-goapi-main-k1", [], T0 + 200)


async def test_added_deliveries_keep_their_group_order(store: Store) -> None:
    await store.ingest(make_event("p"), [NewDelivery("p-d", "slack", 0, group="goapi/t1")])
    await store.ingest(make_event("f", at=T0 + 1), [])
    added = NewDelivery("f-d", "slack", 0, group="goapi/t1")
    assert await store.add_deliveries("ev-goapi-main-f", [added], T0 + 2)

    [claim] = await store.claim(T0 + 5, 10, 30)
    assert claim.delivery_id == "p-d"
    assert await store.claim(T0 + 5, 10, 30) == []  # held back behind the earlier one
    assert await store.finish(claim, Outcome("delivered"), T0 + 5, T0 + 6)
    [then] = await store.claim(T0 + 6, 10, 30)
    assert then.delivery_id == "f-d"


async def test_an_added_delivery_id_clash_adds_nothing(store: Store) -> None:
    [existing] = await ingest_one(store, "k1")
    clash = [NewDelivery("fresh", "mail", 0), NewDelivery(existing, "mail", 0)]
    with pytest.raises(StoreUnavailableError):
        await store.add_deliveries("ev-goapi-main-k1", clash, T0 + 1)
    assert await store.get_delivery("fresh") is None
    assert await store.count_deliveries(DeliveryFilter()) == 1


# --- release ----------------------------------------------------------------------------------


async def test_a_released_delivery_is_due_again_with_the_same_attempt(store: Store) -> None:
    [did] = await ingest_one(store, "k1")
    [first] = await store.claim(T0, 10, 30)
    retry = Outcome("pending", "slack: 503", next_attempt_at=T0 + 10)
    assert await store.finish(first, retry, T0, T0 + 1)
    [claim] = await store.claim(T0 + 10, 10, 30)
    assert claim.attempt == 2

    assert await store.release(claim, now=T0 + 12)
    record = await store.get_delivery(did)
    assert record is not None
    assert (record.state, record.attempts, record.next_attempt_at, record.updated_at) == (
        "pending",
        1,
        T0 + 12,
        T0 + 12,
    )
    assert record.last_error == "slack: 503"  # still what the last attempt said
    assert len(await store.attempts(did)) == 1  # no attempt row for the release
    assert await store.next_due() == T0 + 12
    assert await store.claim(T0 + 11.5, 10, 30) == []
    assert not await store.release(claim, now=T0 + 12)  # given back already

    [again] = await store.claim(T0 + 12, 10, 30)
    assert (again.delivery_id, again.attempt) == (did, 2)
    assert again.lease_token != claim.lease_token
    assert await store.finish(again, Outcome("delivered"), T0 + 12, T0 + 13)
    assert [a.attempt for a in await store.attempts(did)] == [1, 2]
    assert not await store.release(again, now=T0 + 14)  # finished: nothing to give back


async def test_a_lost_lease_cannot_be_released(store: Store) -> None:
    [did] = await ingest_one(store, "k1")
    [stale] = await store.claim(T0, 10, 30)
    [current] = await store.claim(T0 + 40, 10, 30)  # the lease ran out: taken over
    before = await store.get_delivery(did)

    assert not await store.release(stale, now=T0 + 41)
    assert not await store.release(replace(current, lease_token="forged"), now=T0 + 41)
    assert await store.get_delivery(did) == before
    assert await store.release(current, now=T0 + 41)
    record = await store.get_delivery(did)
    assert record is not None and (record.state, record.attempts) == ("pending", 1)


# --- queue_stats ------------------------------------------------------------------------------


async def test_queue_stats_counts_the_backlog_and_the_dead(store: Store) -> None:
    empty = await store.queue_stats(T0)
    assert (dict(empty.depth), empty.oldest_due) == ({}, None)

    await store.ingest(make_event("1", at=T0), [NewDelivery("s1", "slack", 0)])
    await store.ingest(make_event("m", at=T0), [NewDelivery("m1", "mail", 0)])
    for n, at in ((2, T0 + 1), (3, T0 + 2), (4, T0 + 3), (5, T0 + 50)):
        await store.ingest(make_event(str(n), at=at), [NewDelivery(f"s{n}", "slack", 0)])
    claims = {c.delivery_id: c for c in await store.claim(T0 + 3, 10, 30)}
    assert set(claims) == {"s1", "m1", "s2", "s3", "s4"}
    assert await store.finish(claims["s1"], Outcome("delivered"), T0 + 3, T0 + 4)
    assert await store.finish(claims["m1"], Outcome("dead", "550"), T0 + 3, T0 + 4)
    assert await store.finish(claims["s2"], Outcome("dead", "404"), T0 + 3, T0 + 4)
    retry = Outcome("pending", "503", next_attempt_at=T0 + 40)
    assert await store.finish(claims["s3"], retry, T0 + 3, T0 + 4)
    # s4 stays sending, its lease running out at T0 + 33; s5 is due at T0 + 50.

    stats = await store.queue_stats(T0 + 10)
    assert dict(stats.depth) == {
        ("slack", "pending"): 2,
        ("slack", "sending"): 1,
        ("slack", "dead"): 1,
        ("mail", "dead"): 1,
    }
    assert stats.oldest_due is None  # nothing pending is due yet
    assert (await store.queue_stats(T0 + 40)).oldest_due == T0 + 40  # due at now counts
    # The expired lease (T0 + 33) is not a pending delivery: the most overdue is s3.
    assert (await store.queue_stats(T0 + 60)).oldest_due == T0 + 40


# --- rejected requests ------------------------------------------------------------------------


def rejected(source: str, at: float, n: int = 0, **extra: Any) -> RejectedRequest:
    fields: dict[str, Any] = {
        "source": source,
        "received_at": at,
        "client_ip": "203.0.113.7",
        "path": f"/hooks/{source}/***",
        "status": 401,
        "reason": f"bad secret #{n}",
        "excerpt": '{"data":{"task_id":"t-1","note":"café ✓"}}',
        **extra,
    }
    return RejectedRequest(**fields)


async def test_rejected_requests_are_kept_newest_first_and_bounded_per_source(
    store: Store,
) -> None:
    assert await store.list_rejected() == []
    goapi = [rejected("goapi", T0 + n, n) for n in range(5)]
    novita = [rejected("novita", T0 + 0.5, 0, client_ip=None, status=400)]
    await store.record_rejected([goapi[3], *novita, goapi[0], goapi[4], goapi[1], goapi[2]], 3)

    assert await store.list_rejected("goapi") == [goapi[4], goapi[3], goapi[2]]
    assert await store.list_rejected("novita") == novita
    assert await store.list_rejected() == [goapi[4], goapi[3], goapi[2], *novita]
    assert await store.list_rejected(limit=2) == [goapi[4], goapi[3]]
    assert await store.list_rejected("goapi", limit=0) == []
    assert await store.list_rejected("(unknown)") == []

    # Only the batch's sources are trimmed: goapi keeps its 3 under a smaller keep.
    more = [rejected("novita", T0 + 10 + n, n + 1) for n in range(3)]
    await store.record_rejected(more, 2)
    assert await store.list_rejected("novita") == [more[2], more[1]]
    assert await store.list_rejected("goapi") == [goapi[4], goapi[3], goapi[2]]

    # keep=0 keeps none of the batch's sources.
    await store.record_rejected([rejected("goapi", T0 + 99)], 0)
    assert await store.list_rejected("goapi") == []
    assert await store.list_rejected("novita") == [more[2], more[1]]
    await store.record_rejected([], 0)
    assert len(await store.list_rejected()) == 2


async def test_rejected_requests_of_one_instant_keep_their_insertion_order(store: Store) -> None:
    first = [rejected("x", T0, n) for n in range(3)]
    await store.record_rejected(first, 10)
    second = [rejected("x", T0, n) for n in range(3, 5)]
    await store.record_rejected(second, 4)
    # Newest first: the later insertion first among equal times; the first inserted went.
    assert [r.reason for r in await store.list_rejected("x")] == [
        "bad secret #4",
        "bad secret #3",
        "bad secret #2",
        "bad secret #1",
    ]
