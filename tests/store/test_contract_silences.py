"""Store contract (every backend): the ``silenced`` state and what holds it, silences kept and
ended, held deliveries counted and released, and a digest's fold of its group's followers."""

from __future__ import annotations

from relay.store.base import DeliveryFilter, NewDelivery, Outcome, Silence, Store
from tests.store.conftest import T0
from tests.store.test_contract import ingest_grouped, ingest_one, make_event


def silence(sid: str, *, ends: float, starts: float = T0, by: str = "ops") -> Silence:
    return Silence(sid, ('provider="goapi"', 'status="failed"'), starts, ends, "outage", by, T0)


async def test_a_silenced_outcome_holds_the_delivery_and_is_not_an_attempt(store: Store) -> None:
    [did] = await ingest_one(store, "a")
    [claim] = await store.claim(T0, 10, 30)
    assert await store.finish(claim, Outcome.silenced("sil_1", "silenced by sil_1"), T0, T0 + 1)
    record = await store.get_delivery(did)
    assert record is not None
    assert (record.state, record.attempts, record.last_error) == (
        "silenced",
        0,
        "silenced by sil_1",
    )
    assert await store.attempts(did) == []
    # Held: never claimed, not due, counted in the queue's depth and listed by state.
    assert await store.claim(T0 + 999, 10, 30) == []
    assert await store.next_due() is None
    assert dict((await store.queue_stats(T0 + 999)).depth) == {("slack-0", "silenced"): 1}
    assert [d.id for d in await store.find_deliveries(DeliveryFilter(state="silenced"))] == [did]
    assert await store.held_counts() == {"sil_1": 1}
    # A replay sends it (and it is no longer counted as held).
    assert await store.replay(did, T0 + 5, states=("silenced",))
    assert await store.held_counts() == {}
    [again] = await store.claim(T0 + 5, 10, 30)
    assert (again.delivery_id, again.attempt) == (did, 1)


async def test_release_held_makes_every_delivery_of_its_holder_due(store: Store) -> None:
    held = [*(await ingest_one(store, "a", n=2)), *(await ingest_one(store, "b", n=1))]
    for claim in await store.claim(T0, 10, 30):
        holder = "sil_1" if claim.delivery_id != held[2] else "mute:0"
        assert await store.finish(claim, Outcome.silenced(holder, "held"), T0, T0)
    assert await store.held_counts() == {"sil_1": 2, "mute:0": 1}
    assert await store.release_held("sil_1", T0 + 10) == 2
    assert await store.release_held("sil_1", T0 + 10) == 0
    assert await store.held_counts() == {"mute:0": 1}
    claims = await store.claim(T0 + 10, 10, 30)
    assert sorted(c.delivery_id for c in claims) == sorted(held[:2])


async def test_silences_are_kept_listed_and_ended(store: Store) -> None:
    assert await store.add_silence(silence("sil_a", ends=T0 + 100))
    assert await store.add_silence(silence("sil_b", ends=T0 + 200, starts=T0 + 50))
    assert not await store.add_silence(silence("sil_a", ends=T0 + 999))  # kept once
    assert [s.id for s in await store.list_silences(T0)] == ["sil_b", "sil_a"]
    found = await store.get_silence("sil_a")
    assert found == silence("sil_a", ends=T0 + 100)
    assert found is not None and found.active(T0) and not found.active(T0 + 100)
    assert await store.get_silence("sil_x") is None
    assert await store.expire_silence("sil_a", T0 + 10)
    assert not await store.expire_silence("sil_a", T0 + 20)  # already ended
    assert not await store.expire_silence("sil_x", T0 + 20)
    assert [s.id for s in await store.list_silences(T0 + 20)] == ["sil_b"]
    every = await store.list_silences(T0 + 20, include_ended=True)
    assert [(s.id, s.ends_at) for s in every] == [("sil_b", T0 + 200), ("sil_a", T0 + 10)]


async def test_group_pending_lists_the_followers_and_fold_settles_them(store: Store) -> None:
    ids = [
        await ingest_grouped(store, key, "digest:0:b42", at=T0 + i) for i, key in enumerate("abcd")
    ]
    # Another group and another destination are not followers.
    await ingest_grouped(store, "x", "digest:0:b43", at=T0)
    other = make_event("y", at=T0)
    await store.ingest(other, [NewDelivery("y-d", "elsewhere", 0, group="digest:0:b42")])
    [head] = [c for c in await store.claim(T0 + 10, 10, 30) if c.delivery_id == ids[0]]
    followers = await store.group_pending("slack", "digest:0:b42", after=head.delivery_id, limit=10)
    assert [d for d, _ in followers] == ids[1:]
    assert [e.dedupe_key for _, e in followers] == ["b", "c", "d"]
    assert [
        d for d, _ in await store.group_pending("slack", "digest:0:b42", after=ids[0], limit=2)
    ] == ids[1:3]
    assert await store.fold(ids[1:3], Outcome("delivered", "in digest"), T0 + 11) == 2
    assert await store.fold([ids[3]], Outcome.silenced("sil_1", "held"), T0 + 11) == 1
    assert await store.fold(ids[1:], Outcome("delivered", "again"), T0 + 12) == 0  # not pending
    states = [(r.state, r.last_error) for i in ids[1:] if (r := await store.get_delivery(i))]
    assert states == [("delivered", "in digest"), ("delivered", "in digest"), ("silenced", "held")]
    assert await store.held_counts() == {"sil_1": 1}
    for i in ids[1:]:
        assert await store.attempts(i) == []
    assert await store.group_pending("slack", "digest:0:b42", after=ids[0], limit=10) == []
