"""One sick destination must not slow the healthy ones (the real app under uvicorn, real
downstream servers): a hung destination holds only its own send slots, and a failing one trips
its circuit breaker (its deliveries wait, no attempt spent), is probed, and resumes."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.settings import Settings
from relay.store.base import DeliveryRecord
from relay.store.sqlite import SQLiteStore
from tests.downstream import Downstream, Received
from tests.e2e.cli import arelay, base_env
from tests.e2e.server import RelayServer, write_rules
from tests.e2e.test_metrics import samples, value
from tests.fixtures_util import load

BURST = 10


@pytest.fixture
async def second_downstream() -> AsyncIterator[Downstream]:
    server = await Downstream().start()
    yield server
    await server.stop()


async def start(tmp_path: Path, rules: str, env: dict[str, str]) -> tuple[RelayServer, SQLiteStore]:
    store = SQLiteStore(str(tmp_path / "relay.db"))
    settings = Settings(
        rules=write_rules(tmp_path / "rules", rules),
        db=f"sqlite:///{tmp_path / 'relay.db'}",
        # Few slots: without per-destination limits the hung destination would take them all.
        concurrency=4,
        shutdown_grace=1.0,
    )
    server = await RelayServer(settings, store=store, env=env).start()
    return server, store


async def post_burst(client: httpx.AsyncClient, n: int = BURST) -> None:
    body, headers = load("goapi/image_success_flux.json")
    for i in range(n):
        one: dict[str, Any] = copy.deepcopy(body)
        one["data"]["task_id"] = f"burst-{i}"
        r = await client.post("/hooks/goapi", json=one, headers=headers)
        assert r.status_code == 200, r.text


async def deliveries(store: SQLiteStore, destination: str) -> list[DeliveryRecord]:
    return [d for d in await store.list_deliveries(limit=1000) if d.destination == destination]


async def until(check: Callable[[], Any], what: str, within: float = 15.0) -> None:
    """Poll ``check`` (bounded) until it returns true."""
    try:
        async with asyncio.timeout(within):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never {what}") from None


HUNG_RULES = """
sources:
  goapi: {provider: goapi, secret: s3cr3t-relay-goapi}
destinations:
  hung:
    type: webhook
    url: ${HUNG_URL}
    concurrency: 2
    timeout: 50s
    breaker: off
  healthy:
    type: webhook
    url: ${OK_URL}
routes:
  - to: [hung, healthy]
"""


async def test_a_hung_destination_holds_only_its_own_slots(
    tmp_path: Path, downstream: Downstream, second_downstream: Downstream
) -> None:
    hung, healthy = downstream, second_downstream
    release = asyncio.Event()

    async def never_answer(item: Received) -> None:
        await release.wait()

    hung.hold = never_answer
    server, store = await start(tmp_path, HUNG_RULES, {"HUNG_URL": hung.url, "OK_URL": healthy.url})
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await post_burst(client)

            async def all_healthy_delivered() -> bool:
                rows = await deliveries(store, "healthy")
                return len(rows) == BURST and all(d.state == "delivered" for d in rows)

            await until(all_healthy_delivered, "delivered every healthy delivery")
            assert len(healthy.received) == BURST
            # Meanwhile the hung destination has exactly its own limit in flight, still held,
            # and the rest of its deliveries wait untried: pending, no attempt spent, none dead.
            assert len(hung.received) == 2
            rows = await deliveries(store, "hung")
            states = sorted(d.state for d in rows)
            assert states == ["pending"] * (BURST - 2) + ["sending"] * 2
            assert all(d.attempts == 0 for d in rows if d.state == "pending")
    finally:
        release.set()
        await server.stop()


FAILING_RULES = """
sources:
  goapi: {provider: goapi, secret: s3cr3t-relay-goapi}
destinations:
  flaky:
    type: webhook
    url: ${DOWN_URL}
    concurrency: 1
    retry: {schedule: [100ms, 100ms, 100ms, 100ms, 100ms], jitter: 0}
    breaker: {failures: 3, pause: 500ms}
routes:
  - to: [flaky]
"""


async def test_a_failing_destination_trips_the_breaker_and_resumes(
    tmp_path: Path, downstream: Downstream
) -> None:
    # Three 503s trip the breaker; the fourth request (the probe) is held until the test has
    # looked, then answered 200 like every later one.
    downstream.responses = [(503, {})] * 3
    fixed = asyncio.Event()

    async def hold_the_probe(item: Received) -> None:
        if len(downstream.received) == 4:
            await fixed.wait()

    downstream.hold = hold_the_probe
    server, store = await start(tmp_path, FAILING_RULES, {"DOWN_URL": downstream.url})
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:

            async def breaker() -> dict[str, Any]:
                ready = await client.get("/readyz")
                assert ready.status_code == 200  # a sick destination is not relay unready
                state: dict[str, Any] = ready.json()["breakers"]["flaky"]
                return state

            assert (await breaker())["state"] == "closed"
            await post_burst(client)

            async def paused() -> bool:
                return bool((await breaker())["state"] != "closed")

            await until(paused, "saw the breaker open")
            state = await breaker()
            assert state["reason"] == "3 failures in a row"
            assert "until" in state
            # Only the tripping attempts (and at most the held probe) were spent; nothing dead.
            rows = await deliveries(store, "flaky")
            assert len(downstream.received) in (3, 4)
            assert sum(d.attempts for d in rows) == len(downstream.received)
            assert not [d for d in rows if d.state == "dead"]
            assert len([d for d in rows if d.state == "pending" and d.attempts == 0]) >= BURST - 4

            # The pause ends: one probe, held by the downstream, and nothing else goes.
            await downstream.wait_for(4)
            assert (await breaker())["state"] == "half_open"
            found = samples((await client.get("/metrics")).text)
            transitions = {
                to: value(found, "relay_breaker_transitions_total", destination="flaky", to=to)
                for to in ("open", "half_open", "closed")
            }
            assert transitions == {"open": 1, "half_open": 1, "closed": 0}
            assert value(found, "relay_breaker_open", destination="flaky") == 1
            assert len(downstream.received) == 4
            # `relay deliveries` names the paused destination above its table.
            listed = await arelay(
                tmp_path, "deliveries", env=base_env(RELAY_DB=f"sqlite:///{tmp_path / 'relay.db'}")
            )
            assert listed.code == 0, listed.err
            first_line = listed.out.splitlines()[0]
            assert (
                first_line
                == "paused by their circuit breaker: flaky (half open: 3 failures in a row)"
            )

            # The downstream is fixed: the probe succeeds, the breaker closes, the backlog goes.
            fixed.set()

            async def all_delivered() -> bool:
                rows = await deliveries(store, "flaky")
                return all(d.state == "delivered" for d in rows)

            await until(all_delivered, "delivered the backlog")
            assert (await breaker()) == {"state": "closed"}
            found = samples((await client.get("/metrics")).text)
            assert value(found, "relay_breaker_transitions_total", destination="flaky", to="closed")
            assert value(found, "relay_breaker_open", destination="flaky") == 0
            # Every attempt is a request: the 3 failures, the probe, then one per delivery left.
            assert len(downstream.received) == BURST + 3
    finally:
        fixed.set()
        await server.stop()
