"""Store contract: ``claim(..., skip=...)`` leaves the deliveries of skipped destinations alone
(every backend), so a sick destination's backlog takes no claims from the healthy ones."""

from __future__ import annotations

from relay.store.base import NewDelivery, Store
from tests.store.conftest import T0
from tests.store.test_contract import make_event


async def ingest_to(store: Store, key: str, destinations: list[str], *, at: float = T0) -> None:
    deliveries = [
        NewDelivery(id=f"{key}-{dest}", destination=dest, route=i)
        for i, dest in enumerate(destinations)
    ]
    result = await store.ingest(make_event(key, at=at), deliveries)
    assert not result.duplicate


async def test_skipped_destinations_are_not_claimed(store: Store) -> None:
    # The sick destination's backlog is older: without skip it would take every claim.
    for i in range(5):
        await ingest_to(store, f"old{i}", ["sick"], at=T0 + i)
    await ingest_to(store, "new", ["healthy", "other", "sick"], at=T0 + 10)

    claims = await store.claim(T0 + 20, 3, 30, skip=["sick"])
    assert [c.delivery_id for c in claims] == ["new-healthy", "new-other"]
    # Several skipped at once; nothing else due.
    assert await store.claim(T0 + 20, 10, 30, skip=("sick", "other")) == []

    # Skipped deliveries were not touched: no attempt spent, claimed normally later, in order.
    later = await store.claim(T0 + 20, 3, 30)
    assert [c.delivery_id for c in later] == ["old0-sick", "old1-sick", "old2-sick"]
    assert [c.attempt for c in later] == [1, 1, 1]
    record = await store.get_delivery("old3-sick")
    assert record is not None
    assert (record.state, record.attempts) == ("pending", 0)


async def test_an_empty_or_unknown_skip_changes_nothing(store: Store) -> None:
    await ingest_to(store, "a", ["one", "two"])
    claims = await store.claim(T0 + 1, 10, 30, skip=["nowhere"])
    assert sorted(c.delivery_id for c in claims) == ["a-one", "a-two"]
    await ingest_to(store, "b", ["one"], at=T0 + 2)
    [claim] = await store.claim(T0 + 3, 10, 30, skip=())
    assert claim.delivery_id == "b-one"


async def test_a_destination_name_is_matched_exactly(store: Store) -> None:
    # Names are values, never SQL: quotes and wildcards match only themselves.
    await ingest_to(store, "a", ["it's", "web%", "web_hook"])
    claims = await store.claim(T0 + 1, 10, 30, skip=["it's", "web%"])
    assert [c.destination for c in claims] == ["web_hook"]
