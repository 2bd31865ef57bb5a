"""A slow commit of one delivery's outcome does not hold its destination's send slot.

The slot a destination gives the dispatcher is for a send; once the destination has answered,
the next delivery may go while the outcome is still being written. Here the write is held up
for real: another PostgreSQL session locks the delivery's row (``SELECT ... FOR UPDATE``) as
soon as its request arrives, so recording the outcome waits on that lock, while the claim of
the next delivery skips locked rows and goes ahead. With a limit of one send at a time, the
second request arrives only if the first one's slot was freed before its outcome committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import psycopg
import pytest

from relay.channels.base import ChannelDeps
from relay.channels.webhook import WebhookChannel
from relay.dispatcher import Dispatcher, Routing
from relay.render.names import ProviderNames
from relay.retry import RetryPolicy
from relay.routing.model import WebhookDestination
from relay.store import open_store
from relay.store.base import NewDelivery, Store
from relay.store.memory import MemoryStore
from tests.downstream import Downstream, Received
from tests.events_factory import make_event


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    s = open_store(pg_url)
    await s.open()
    yield s
    await s.close()


async def test_the_next_send_goes_while_an_outcome_waits_on_a_row_lock(
    store: Store, pg_url: str
) -> None:
    for n in range(2):
        await store.ingest(make_event(), [NewDelivery(f"dlv_{n}", "down", 0)])
    locker = await psycopg.AsyncConnection.connect(pg_url)
    locked: list[str] = []

    async def lock_its_row(request: Received) -> None:
        # The first request's row is locked before it is answered: its outcome must wait.
        if not locked:
            delivery_id = request.headers["webhook-id"]
            await locker.execute(
                "SELECT id FROM deliveries WHERE id = %s FOR UPDATE", (delivery_id,)
            )
            locked.append(delivery_id)

    downstream = await Downstream(hold=lock_its_row).start()
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:
            dest = WebhookDestination(type="webhook", url=downstream.url)  # type: ignore[arg-type]
            deps = ChannelDeps(
                http=http, clock=time.time, state=MemoryStore(), names=ProviderNames()
            )
            routing = Routing(
                {"down": WebhookChannel("down", dest, deps)},  # type: ignore[dict-item]
                {"down": RetryPolicy(jitter=0)},
            )
            dispatcher = Dispatcher(
                store,
                lambda: routing,
                clock=time.time,
                destination_concurrency=1,
                idle_seconds=0.05,
            )
            running = asyncio.create_task(dispatcher.run_forever(stop))
            # The second request comes while the first one's outcome is still unwritten.
            await downstream.wait_for(2, within=10)
            first = await store.get_delivery(locked[0])
            assert first is not None and first.state == "sending"
            await locker.rollback()  # the lock goes: the outcome is written
            for _ in range(200):
                records = [await store.get_delivery(f"dlv_{n}") for n in range(2)]
                if all(r is not None and r.state == "delivered" for r in records):
                    break
                await asyncio.sleep(0.05)
            assert [r.state for r in records if r is not None] == ["delivered", "delivered"]
            stop.set()
            await running
    finally:
        stop.set()
        await locker.close()
        await downstream.stop()
    assert sorted(r.headers["webhook-id"] for r in downstream.received) == ["dlv_0", "dlv_1"]
