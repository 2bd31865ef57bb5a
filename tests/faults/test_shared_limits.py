"""A destination's `concurrency:` and `rate:` hold across processes: two `relay worker`s (and
the `relay serve` that receives) on one store never have more sends to it in flight than its
limit together, nor send it faster than its rate; the other destination is not held back."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import httpx

from tests.downstream import Downstream, Received
from tests.faults.harness import GOAPI_SECRET, Ledger, settled
from tests.fixtures_util import load

RULES = f"""
sources:
  goapi: {{provider: goapi, secret: {GOAPI_SECRET}}}
destinations:
  slow:
    type: webhook
    url: ${{SLOW_URL}}
    timeout: 30s
    concurrency: 2
    breaker: off
  paced:
    type: webhook
    url: ${{PACED_URL}}
    rate: 5/s
  fast:
    type: webhook
    url: ${{FAST_URL}}
routes:
  - to: [slow, paced, fast]
"""
CALLBACKS = 8


async def post_all(url: str, ledger: Ledger, n: int) -> None:
    body, headers = load("goapi/image_success_flux.json")
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(n):
            one: dict[str, Any] = copy.deepcopy(body)
            one["data"]["task_id"] = f"shared-{i}"
            answer = await ledger.post(client, url + "/hooks/goapi", one, headers)
            assert answer.status_code == 200, answer.text


async def test_concurrency_and_rate_are_shared_by_every_process(make_relay: Any) -> None:
    released = asyncio.Event()
    in_flight = 0
    most = 0

    async def hold(_: Received) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await released.wait()
        finally:
            in_flight -= 1

    slow = await Downstream(hold=hold).start()
    paced, fast = await Downstream().start(), await Downstream().start()
    arrivals: list[float] = []
    paced.on_request = lambda _: arrivals.append(time.monotonic())
    try:
        relay = make_relay(RULES, SLOW_URL=slow.url, PACED_URL=paced.url, FAST_URL=fast.url)
        serve = await relay.serve()
        await relay.worker(name="worker-1")
        await relay.worker(name="worker-2")
        ledger = Ledger()
        await post_all(serve.url, ledger, CALLBACKS)

        # Every fast delivery arrives while the slow destination holds its two slots.
        await fast.wait_for(CALLBACKS, within=15)
        await slow.wait_for(2, within=15)
        # Three processes claim all along (each polls at least once a second): none may take
        # a third slot. Two seconds is two polls of each.
        await asyncio.sleep(2.0)
        assert len(slow.received) == 2 and most == 2

        released.set()
        await slow.wait_for(CALLBACKS, within=30)
        await paced.wait_for(CALLBACKS, within=30)
        await settled(serve, ledger, within=30)
    finally:
        released.set()
        for server in (slow, paced, fast):
            await server.stop()

    assert most == 2, f"{most} sends to 'slow' in flight at once"
    # Five a second over three processes: the first to the last is at least 7 intervals of
    # 0.2 s apart (a lower bound: a loaded machine only spreads them further).
    assert arrivals[-1] - arrivals[0] >= (CALLBACKS - 1) * 0.2 * 0.95
    assert len({r.headers["webhook-id"] for r in slow.received}) == CALLBACKS
