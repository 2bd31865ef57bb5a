"""The dispatcher stepped by hand, with a controlled clock, a real store and real HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from relay.channels.base import ChannelDeps, Delivery
from relay.channels.webhook import WebhookChannel
from relay.dispatcher import Dispatcher, Routing
from relay.render.names import ProviderNames
from relay.retry import RetryPolicy
from relay.routing.model import WebhookDestination
from relay.store.base import NewDelivery
from relay.store.memory import MemoryStore
from relay.store.sqlite import SQLiteStore
from tests.channels.harness import Clock
from tests.downstream import Downstream
from tests.events_factory import make_event

SECRET = "whsec_" + base64.b64encode(b"s" * 24).decode()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "relay.db"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def routing(http: aiohttp.ClientSession, url: str, clock: Clock, **policy: object) -> Routing:
    dest = WebhookDestination(type="webhook", url=url, secret=SECRET)  # type: ignore[arg-type]
    channel = WebhookChannel(
        "down",
        dest,
        ChannelDeps(http=http, clock=clock, state=MemoryStore(), names=ProviderNames()),
    )
    return Routing({"down": channel}, {"down": RetryPolicy(jitter=0, **policy)})  # type: ignore[arg-type]


async def ingest(store: SQLiteStore, clock: Clock, n: int = 1) -> list[str]:
    ids = []
    for i in range(n):
        event = make_event()
        event = event.model_copy(
            update={
                "received_at": event.received_at.fromtimestamp(clock.now, event.received_at.tzinfo)
            }
        )
        await store.ingest(event, [NewDelivery(f"dlv_{i}_{event.id}", "down", 0)])
        ids.append(f"dlv_{i}_{event.id}")
    return ids


async def test_delivers_and_records(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    r = routing(http, downstream.url, clock)
    dispatcher = Dispatcher(store, lambda: r, clock=clock)
    assert await dispatcher.run_once() == 1
    assert (await store.get_delivery(dlv)).state == "delivered"  # type: ignore[union-attr]
    assert await dispatcher.run_once() == 0
    assert len(downstream.received) == 1


async def test_transient_failure_waits_for_the_schedule_then_succeeds(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    downstream.responses = [(503, {})]
    dispatcher = Dispatcher(store, lambda: routing(http, downstream.url, clock), clock=clock)
    await dispatcher.run_once()
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "pending"
    assert record.next_attempt_at == clock.now + 5
    assert "HTTP 503" in record.last_error
    clock.now += 4
    assert await dispatcher.run_once() == 0
    clock.now += 1
    assert await dispatcher.run_once() == 1
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "delivered" and record.attempts == 2
    assert [a.state for a in await store.attempts(dlv)] == ["pending", "delivered"]


async def test_retry_after_becomes_the_next_attempt_time(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    downstream.responses = [(429, {"Retry-After": "90"})]
    await Dispatcher(store, lambda: routing(http, downstream.url, clock), clock=clock).run_once()
    record = await store.get_delivery(dlv)
    assert record is not None and record.next_attempt_at == clock.now + 90


async def test_permanent_failure_is_dead_at_once_and_replayable(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    downstream.responses = [(404, {})]
    dispatcher = Dispatcher(store, lambda: routing(http, downstream.url, clock), clock=clock)
    await dispatcher.run_once()
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "dead" and "HTTP 404" in record.last_error
    assert await store.replay(dlv, clock.now)
    await dispatcher.run_once()
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "delivered"
    assert (
        downstream.received[0].headers["webhook-id"] == downstream.received[1].headers["webhook-id"]
    )


async def test_exhausted_schedule_ends_dead(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    downstream.responses = [(500, {})] * 3
    dispatcher = Dispatcher(
        store, lambda: routing(http, downstream.url, clock, schedule=(1, 1)), clock=clock
    )
    for _ in range(3):
        await dispatcher.run_once()
        clock.now += 1
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "dead"
    assert "gave up after 3 attempts" in record.last_error


async def test_an_expired_lease_is_taken_over(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    # A worker claims and "crashes": it never records anything.
    [claim] = await store.claim(clock.now, 10, lease_seconds=30)
    dispatcher = Dispatcher(
        store, lambda: routing(http, downstream.url, clock), clock=clock, lease_seconds=30
    )
    assert await dispatcher.run_once() == 0
    clock.now += 31
    assert await dispatcher.run_once() == 1
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "delivered"
    assert claim.delivery_id == dlv


async def test_a_removed_destination_is_dead_with_a_reason(
    store: SQLiteStore, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    await Dispatcher(store, lambda: Routing({}, {}), clock=clock).run_once()
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "dead"
    assert "no longer in the rules" in record.last_error


class Exploding:
    def render(self, delivery: Delivery) -> str:
        return ""

    async def send(self, delivery: Delivery) -> None:
        raise RuntimeError("bug")


async def test_a_crashing_channel_does_not_lose_the_delivery(store: SQLiteStore) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock)
    await Dispatcher(store, lambda: Routing({"down": Exploding()}, {}), clock=clock).run_once()
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "dead"
    assert "internal error: RuntimeError" in record.last_error


async def test_no_attempt_outlives_its_lease(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    # The channel would wait 10 s, but the lease is 1 s: after it, another worker may take
    # the delivery, so this attempt must give up first.
    clock = Clock()
    [dlv] = await ingest(store, clock)
    downstream.delay = 3
    await Dispatcher(
        store, lambda: routing(http, downstream.url, clock), clock=clock, lease_seconds=1
    ).run_once()
    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "pending"
    assert "outlived its lease" in record.last_error


async def test_a_rate_spaces_the_sends_without_spending_attempts(
    store: SQLiteStore, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    clock = Clock()
    first, second, third = await ingest(store, clock, 3)
    r = routing(http, downstream.url, clock)
    r.rates = {"down": 10.0}  # `rate: 6/min`
    dispatcher = Dispatcher(store, lambda: r, clock=clock)

    assert await dispatcher.run_once() == 3
    assert len(downstream.received) == 1
    states = {d: await store.get_delivery(d) for d in (first, second, third)}
    assert sorted(s.state for s in states.values() if s) == ["delivered", "pending", "pending"]
    for record in states.values():
        assert record is not None
        if record.state == "pending":
            # Deferred: no attempt spent, due when the next slot opens, nothing dead.
            assert record.attempts == 0
            assert record.next_attempt_at == clock.now + 10
            assert record.last_error == "rate limit"
    assert dispatcher.stats.deferred == 2

    clock.now += 9
    assert await dispatcher.run_once() == 0
    clock.now += 1
    assert await dispatcher.run_once() == 2  # both due again; one slot
    assert len(downstream.received) == 2
    clock.now += 10
    await dispatcher.run_once()
    assert len(downstream.received) == 3
    assert dispatcher.stats.delivered == 3
