"""Circuit breaker transitions with an injected clock, on a real store's channel state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.breaker import STATE_KEY, BreakerPolicy, Breakers, read_views
from relay.metrics import Metrics
from relay.store.sqlite import SQLiteStore
from tests.channels.harness import Clock

POLICY = BreakerPolicy(failures=3, pause=10.0, max_pause=25.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "relay.db"))
    await s.open()
    yield s
    await s.close()


def counted(metrics: Metrics, destination: str, to: str) -> float:
    value = metrics.registry.get_sample_value(
        "relay_breaker_transitions_total", {"destination": destination, "to": to}
    )
    return value or 0.0


def paused(metrics: Metrics, destination: str) -> float | None:
    return metrics.registry.get_sample_value("relay_breaker_open", {"destination": destination})


async def test_opens_after_a_run_of_failures_then_probes_and_closes(store: SQLiteStore) -> None:
    clock, metrics = Clock(), Metrics()
    b = Breakers(store, clock=clock, metrics=metrics)
    for _ in range(2):
        await b.record("hook", POLICY, "failed")
    # A success in between starts the count again.
    await b.record("hook", POLICY, "ok")
    for _ in range(2):
        await b.record("hook", POLICY, "failed")
    assert b.state("hook") == "closed"
    assert not await b.blocked("hook", POLICY)

    await b.record("hook", POLICY, "failed")
    assert b.state("hook") == "open"
    assert await b.blocked("hook", POLICY)
    assert b.limit("hook") == 1
    assert b.wake_at() == clock.now + 10.0
    assert counted(metrics, "hook", "open") == 1
    assert paused(metrics, "hook") == 1
    saved = await store.get_state("hook", STATE_KEY)
    assert saved is not None and saved["state"] == "open"

    clock.now += 9.9
    assert await b.blocked("hook", POLICY)
    clock.now += 0.2
    # Half open: this process takes the probe; its limit stays 1 (one probe at a time).
    assert not await b.blocked("hook", POLICY)
    assert b.state("hook") == "half_open"
    assert b.limit("hook") == 1
    assert counted(metrics, "hook", "half_open") == 1

    await b.record("hook", POLICY, "ok")
    assert b.state("hook") == "closed"
    assert b.limit("hook") is None
    assert counted(metrics, "hook", "closed") == 1
    assert paused(metrics, "hook") == 0
    views = await read_views(store, ["hook"], clock.now)
    assert views["hook"].state == "closed"


async def test_a_failed_probe_reopens_for_twice_the_pause_up_to_the_cap(
    store: SQLiteStore,
) -> None:
    clock = Clock()
    b = Breakers(store, clock=clock)
    for _ in range(3):
        await b.record("hook", POLICY, "failed")
    pauses = []
    for _ in range(3):
        opened_at = clock.now
        until = b.wake_at()
        assert until is not None
        pauses.append(until - opened_at)
        clock.now += until - opened_at
        assert not await b.blocked("hook", POLICY)  # the probe
        await b.record("hook", POLICY, "failed")
        assert b.state("hook") == "open"
    assert pauses == [10.0, 20.0, 25.0]


async def test_one_probe_per_store_and_other_workers_follow(store: SQLiteStore) -> None:
    clock = Clock()
    first = Breakers(store, clock=clock)
    second = Breakers(store, clock=clock, refresh_seconds=1.0)
    await second.sync({"hook": POLICY})  # read before the trip: closed
    for _ in range(3):
        await first.record("hook", POLICY, "failed")
    # Within the refresh interval the second worker has not looked again.
    assert not await second.blocked("hook", POLICY)
    clock.now += 1.0
    await second.sync({"hook": POLICY})
    assert second.state("hook") == "open"
    assert await second.blocked("hook", POLICY)

    clock.now += 10.0
    assert not await first.blocked("hook", POLICY)  # first takes the probe...
    assert await second.blocked("hook", POLICY)  # ...so the second waits
    await first.record("hook", POLICY, "ok")
    clock.now += 1.0
    await second.sync({"hook": POLICY})
    assert second.state("hook") == "closed"
    assert not await second.blocked("hook", POLICY)


async def test_neutral_results_and_no_policy(store: SQLiteStore) -> None:
    clock = Clock()
    b = Breakers(store, clock=clock)
    for _ in range(10):
        await b.record("hook", POLICY, None)  # paced or refused for good: the peer answered
        await b.record("off", None, "failed")  # breaker: off
    assert b.state("hook") == "closed"
    assert not await b.blocked("off", None)
    assert await store.get_state("off", STATE_KEY) is None

    for _ in range(3):
        await b.record("hook", POLICY, "failed")
    clock.now += 10.0
    assert not await b.blocked("hook", POLICY)
    # A probe that proved nothing gives the probe up; the next one goes after the pause.
    await b.record("hook", POLICY, None)
    assert b.state("hook") == "half_open"
    assert await b.blocked("hook", POLICY)
    clock.now += 10.0
    assert not await b.blocked("hook", POLICY)
