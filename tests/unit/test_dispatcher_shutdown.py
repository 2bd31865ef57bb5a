"""The dispatcher's stop: nothing new is claimed, sends under way finish within the grace
period and are recorded, and those that do not are cancelled and their leases given back.

A real store (memory and SQLite) and a channel plug-in whose sends wait on a gate the test
opens, so "still sending when the stop came" is a fact of the test, not a race.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.channels.base import Delivery
from relay.dispatcher import Dispatcher, Routing
from relay.store.base import NewDelivery, Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SQLiteStore
from tests.channels.harness import Clock
from tests.events_factory import make_event

WITHIN = 10.0  # bound on every wait of these tests


class GatedChannel:
    """Each send waits for ``gate``; records what was started, finished and cancelled."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.changed = asyncio.Event()

    def render(self, delivery: Delivery) -> str:
        return ""

    async def send(self, delivery: Delivery) -> None:
        self.started.append(delivery.id)
        self.changed.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(delivery.id)
            raise
        self.finished.append(delivery.id)
        self.changed.set()

    async def wait_started(self, count: int) -> None:
        await self._wait(self.started, count)

    async def wait_finished(self, count: int) -> None:
        await self._wait(self.finished, count)

    async def _wait(self, seen: list[str], count: int) -> None:
        async with asyncio.timeout(WITHIN):
            while len(seen) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "r.db"))
    await s.open()
    yield s
    await s.close()


async def ingest(store: Store, clock: Clock, n: int) -> list[str]:
    ids = []
    for i in range(n):
        event = make_event(received_at=datetime.fromtimestamp(clock.now, UTC))
        await store.ingest(event, [NewDelivery(f"dlv_{i}_{event.id}", "down", 0)])
        ids.append(f"dlv_{i}_{event.id}")
    return ids


async def started(
    store: Store, channel: GatedChannel, clock: Clock, *, grace: float, concurrency: int
) -> tuple[Dispatcher, asyncio.Event, asyncio.Task[None]]:
    dispatcher = Dispatcher(
        store,
        lambda: Routing({"down": channel}, {}),
        clock=clock,
        concurrency=concurrency,
        shutdown_grace=grace,
    )
    stop = asyncio.Event()
    return dispatcher, stop, asyncio.create_task(dispatcher.run_forever(stop))


async def test_a_send_under_way_finishes_within_the_grace_and_is_recorded(store: Store) -> None:
    clock = Clock()
    [dlv] = await ingest(store, clock, 1)
    channel = GatedChannel()
    dispatcher, stop, run = await started(store, channel, clock, grace=WITHIN, concurrency=4)
    await channel.wait_started(1)

    stop.set()
    async with asyncio.timeout(WITHIN):
        await dispatcher.stopping.wait()
    # The stop has been seen and the send is still held: now let it finish.
    assert not run.done() and channel.finished == []
    channel.gate.set()
    async with asyncio.timeout(WITHIN):
        await run

    record = await store.get_delivery(dlv)
    assert record is not None and record.state == "delivered" and record.attempts == 1
    assert [a.state for a in await store.attempts(dlv)] == ["delivered"]
    assert channel.cancelled == [] and dispatcher.stats.released == 0
    assert dispatcher.stats.delivered == 1


async def test_a_send_outlasting_the_grace_is_cancelled_and_its_lease_given_back(
    store: Store,
) -> None:
    clock = Clock()
    first, second = await ingest(store, clock, 2)
    channel = GatedChannel()
    # One slot: the second delivery waits unclaimed while the first is held, and the loop
    # must notice the stop although no slot ever frees up.
    dispatcher, stop, run = await started(store, channel, clock, grace=0, concurrency=1)
    await channel.wait_started(1)
    [held] = channel.started

    stop.set()
    async with asyncio.timeout(WITHIN):
        await run

    assert channel.cancelled == [held] and channel.finished == []
    assert dispatcher.stats.released == 1 and dispatcher.stats.delivered == 0
    for dlv in (first, second):
        record = await store.get_delivery(dlv)
        assert record is not None and record.state == "pending"
        assert record.attempts == 0  # the cut-off attempt is not spent
        assert record.next_attempt_at is not None and record.next_attempt_at <= clock.now
        assert await store.attempts(dlv) == []
    # Another process takes both at once, not when the lease would have run out.
    claims = await store.claim(clock.now, 10, lease_seconds=60)
    assert sorted(c.delivery_id for c in claims) == sorted([first, second])
    assert [c.attempt for c in claims] == [1, 1]


async def test_finished_sends_are_recorded_and_only_the_held_ones_given_back(
    store: Store,
) -> None:
    clock = Clock()
    ids = await ingest(store, clock, 3)
    quick = GatedChannel()
    quick.gate.set()
    slow = GatedChannel()
    dispatcher = Dispatcher(
        store,
        # Which channel a delivery goes through is decided by its id: the first is slow.
        lambda: Routing({"down": Switch(slow, quick, ids[0])}, {}),
        clock=clock,
        shutdown_grace=0,
    )
    stop = asyncio.Event()
    run = asyncio.create_task(dispatcher.run_forever(stop))
    await slow.wait_started(1)
    # Sent but maybe not yet recorded: even with no grace, their outcomes are recorded.
    await quick.wait_finished(2)

    stop.set()
    async with asyncio.timeout(WITHIN):
        await run

    assert dispatcher.stats.released == 1 and dispatcher.stats.delivered == 2
    states = {d: (await store.get_delivery(d)).state for d in ids}  # type: ignore[union-attr]
    assert states == {ids[0]: "pending", ids[1]: "delivered", ids[2]: "delivered"}
    # Restarted, the dispatcher sends only the one given back.
    again = GatedChannel()
    again.gate.set()
    restarted = Dispatcher(store, lambda: Routing({"down": again}, {}), clock=clock)
    assert await restarted.run_once() == 1
    assert again.finished == [ids[0]]


class Switch:
    """``slow`` for one delivery, ``quick`` for the others."""

    def __init__(self, slow: GatedChannel, quick: GatedChannel, slow_id: str) -> None:
        self.slow, self.quick, self.slow_id = slow, quick, slow_id

    def render(self, delivery: Delivery) -> str:
        return ""

    async def send(self, delivery: Delivery) -> None:
        channel = self.slow if delivery.id == self.slow_id else self.quick
        await channel.send(delivery)
