"""Retention (README: Retention): how long delivered events are kept, and the background loop
that prunes older ones.

The pruner removes events whose every delivery was delivered (with their deliveries and
attempts) once older than the retention, in small batches with a short pause between them, so
ingest never waits for more than one batch. Dead deliveries are never pruned: they stay until
replayed or purged by hand (``relay purge --dead``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from relay.errors import StoreUnavailableError
from relay.routing.model import DEFAULT_RETENTION, Rules
from relay.settings import Settings
from relay.store.base import PruneCount, Store

log = logging.getLogger("relay.retention")

# Events per batch (one transaction each), and the pause between two batches of a pass.
BATCH = 250
PAUSE = 0.02
# How often a long-running process prunes.
INTERVAL = 300.0
# A pass ends after this many batches even if there is more (the next pass goes on).
MAX_BATCHES = 10_000


def delivered_retention(settings: Settings, rules: Rules) -> float | None:
    """Seconds a delivered event is kept, or None: for ever. ``RELAY_RETENTION`` wins over the
    rules' ``retention.delivered``; with neither, 7 days."""
    if settings.retention is not None:
        age = settings.retention
    elif rules.retention is not None:
        age = rules.retention.delivered
    else:
        age = DEFAULT_RETENTION
    return None if math.isinf(age) else age


def add(a: PruneCount, b: PruneCount) -> PruneCount:
    return PruneCount(a.events + b.events, a.deliveries + b.deliveries, a.attempts + b.attempts)


def describe(count: PruneCount) -> str:
    """``3 events, 5 deliveries, 9 attempts``."""
    return f"{count.events} events, {count.deliveries} deliveries, {count.attempts} attempts"


Batch = Callable[[float, int], Awaitable[PruneCount]]


async def in_batches(
    batch: Batch,
    before: float,
    *,
    size: int = BATCH,
    pause: float = PAUSE,
    stop: asyncio.Event | None = None,
    max_batches: int = MAX_BATCHES,
    unit: Callable[[PruneCount], int] = lambda count: count.events,
) -> PruneCount:
    """Run ``batch(before, size)`` (``store.prune`` or ``store.purge_dead``) until a batch
    comes back short, ``stop`` is set or ``max_batches`` ran; the total removed.

    A batch is full when ``unit`` of it (events for a prune, deliveries for a purge) is
    ``size``: then there may be more. Store errors propagate; what earlier batches removed
    stays removed.
    """
    total = PruneCount()
    for n in range(max_batches):
        if n and pause > 0:
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
        if stop is not None and stop.is_set():
            break
        got = await batch(before, size)
        total = add(total, got)
        if unit(got) < size:
            break
    return total


class Pruner:
    """The retention loop of ``relay serve`` and ``relay worker`` (a ``relay.runtime.Service``).
    ``on_pruned`` hears of every batch (the metrics count them).

    Prunes at start and every ``interval`` seconds after, with the retention ``retention()``
    gives at that moment (the rules in force: a reload changes it). A store that cannot be
    reached ends the pass with a warning; the next pass tries again.
    """

    def __init__(
        self,
        store: Store,
        retention: Callable[[], float | None],
        *,
        clock: Callable[[], float] = time.time,
        interval: float = INTERVAL,
        batch: int = BATCH,
        pause: float = PAUSE,
        on_pruned: Callable[[PruneCount], None] | None = None,
    ) -> None:
        if interval <= 0 or batch < 1:
            raise ValueError("interval must be positive and batch at least 1")
        self._store = store
        self._retention = retention
        self._clock = clock
        self._interval = interval
        self._batch = batch
        self._pause = pause
        self._on_pruned = on_pruned

    async def run(self, stop: asyncio.Event) -> None:
        """Prune, then wait ``interval``, until ``stop`` is set."""
        while not stop.is_set():
            await self.prune_once(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def prune_once(self, stop: asyncio.Event | None = None) -> PruneCount:
        """One pass: every delivered event older than the retention, batch by batch."""
        age = self._retention()
        if age is None:
            return PruneCount()
        before = self._clock() - age
        removed = PruneCount()

        async def batch(cutoff: float, size: int) -> PruneCount:
            nonlocal removed
            got = await self._store.prune(cutoff, size)
            removed = add(removed, got)
            if self._on_pruned is not None:
                self._on_pruned(got)
            return got

        try:
            await in_batches(batch, before, size=self._batch, pause=self._pause, stop=stop)
        except StoreUnavailableError as exc:
            log.warning("retention: pass stopped, trying again in %.0f s: %s", self._interval, exc)
        if removed.events or removed.deliveries:
            log.info("retention: pruned %s delivered over %s ago", describe(removed), _age(age))
        return removed


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
