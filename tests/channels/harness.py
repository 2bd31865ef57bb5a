"""The dispatcher stepped by hand over real channels, a SQLite store and a controlled clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from relay.channels import default_channel_types
from relay.channels.base import Channel, ChannelDeps
from relay.dispatcher import Dispatcher, Routing
from relay.events import TaskEvent
from relay.providers import default_providers
from relay.retry import RetryPolicy
from relay.routing.model import Destination, MentionConfig
from relay.runtime import provider_names
from relay.store.base import DeliveryRecord, NewDelivery
from relay.store.sqlite import SQLiteStore

DESTINATION: TypeAdapter[Destination] = TypeAdapter(Destination)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


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


class Harness:
    """A store, a clock, Slack destinations and a dispatcher over them."""

    def __init__(self, store: SQLiteStore, http: aiohttp.ClientSession) -> None:
        self.store = store
        self.http = http
        self.clock = Clock()
        self.channels: dict[str, Channel] = {}
        # Route 0's `mention:` (every delivery the harness makes is of route 0).
        self.mentions: dict[int, MentionConfig] = {}
        self.dispatcher = Dispatcher(store, self.routing, clock=self.clock)

    def add(self, name: str, **config: Any) -> Channel:
        """A destination from its rules keys (``type`` included), with a fixed retry policy."""
        dest = DESTINATION.validate_python(config)
        deps = ChannelDeps(
            http=self.http,
            clock=self.clock,
            state=self.store,
            names=provider_names(default_providers()),
        )
        self.channels[name] = default_channel_types()[dest.type](name, dest, deps)
        return self.channels[name]

    def routing(self) -> Routing:
        return Routing(
            dict(self.channels),
            {n: RetryPolicy(jitter=0) for n in self.channels},
            mentions=dict(self.mentions),
        )

    async def ingest(self, event: TaskEvent, *destinations: str) -> list[str]:
        """Store the event with one delivery per destination (grouped by task, as the
        receiver does); the delivery ids."""
        # Received now by the harness clock, so its deliveries are due now.
        at = datetime.fromtimestamp(self.clock.now, UTC)
        event = event.model_copy(update={"received_at": at})
        names = destinations or tuple(self.channels)
        ids = [f"dlv_{uuid.uuid4().hex}" for _ in names]
        deliveries = [
            NewDelivery(i, name, 0, f"{event.source}/{event.task_id}")
            for i, name in zip(ids, names, strict=True)
        ]
        result = await self.store.ingest(event, deliveries)
        assert not result.duplicate
        return ids

    async def run(self) -> int:
        """Dispatch until nothing is due now; how many attempts were made."""
        total = 0
        while n := await self.dispatcher.run_once():
            total += n
        return total

    async def record(self, delivery_id: str) -> DeliveryRecord:
        record = await self.store.get_delivery(delivery_id)
        assert record is not None
        return record


@pytest.fixture
async def harness(store: SQLiteStore, http: aiohttp.ClientSession) -> Harness:
    return Harness(store, http)
