"""The metrics registry on its own: the store's conflict retries and queue figures are read at
each scrape."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import Metrics, read_queue
from relay.store.base import NewDelivery, Outcome, QueueStats
from relay.store.memory import MemoryStore
from tests.events_factory import make_event


@dataclass
class CountingStore:
    conflict_retries: int = 0


def scraped(metrics: Metrics) -> dict[str, float]:
    text = metrics.render().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_a_stores_conflict_retries_are_read_at_each_scrape() -> None:
    store = CountingStore()
    metrics = Metrics()
    metrics.watch_store(store)
    assert scraped(metrics)["relay_store_conflict_retries_total"] == 0
    store.conflict_retries = 3
    assert scraped(metrics)["relay_store_conflict_retries_total"] == 3


def test_a_store_that_does_not_retry_has_no_such_metric() -> None:
    metrics = Metrics()
    metrics.watch_store(MemoryStore())
    assert "relay_store_conflict_retries_total" not in scraped(metrics)


# --- The queue figures: read from the store at each scrape -----------------------------------

QueueSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def queue_samples(text: bytes) -> QueueSamples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name.startswith("relay_queue_")
    }


def depth(found: QueueSamples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["destination"], dict(labels)["state"]): n
        for (name, labels), n in found.items()
        if name == "relay_queue_depth"
    }


async def ingest(store: MemoryStore, received_at: float, *destinations: str) -> None:
    event = make_event(received_at=datetime.fromtimestamp(received_at, UTC))
    deliveries = [NewDelivery(f"dlv_{uuid.uuid4().hex}", d, 0) for d in destinations]
    await store.ingest(event, deliveries)


async def test_queue_depth_and_oldest_due_age_come_from_the_store() -> None:
    store = MemoryStore()
    await store.open()
    await ingest(store, 1000.0, "hook")
    await ingest(store, 1010.0, "slack")
    await ingest(store, 1030.0, "hook")
    # Oldest due first: the first to hook is being sent; then slack's dies and the second
    # to hook is to be retried at 1050.
    (sending,) = await store.claim(1040.0, 1, 60.0)
    dying, retried = await store.claim(1040.0, 2, 60.0)
    assert (sending.destination, dying.destination, retried.destination) == (
        "hook",
        "slack",
        "hook",
    )
    await store.finish(dying, Outcome("dead", "410 gone"), 1040.0, 1040.0)
    await store.finish(retried, Outcome("pending", "503", next_attempt_at=1050.0), 1040, 1040)
    metrics = Metrics()

    found = queue_samples(await metrics.scrape(store, 1100.0, ["hook", "slack", "email"]))

    assert found[("relay_queue_stats_up", ())] == 1
    assert depth(found) == {
        ("hook", "pending"): 1,
        ("hook", "sending"): 1,
        ("hook", "dead"): 0,
        ("hook", "silenced"): 0,
        ("slack", "pending"): 0,
        ("slack", "sending"): 0,
        ("slack", "dead"): 1,
        ("slack", "silenced"): 0,
        # In the rules, nothing queued: shown as 0, not missing.
        ("email", "pending"): 0,
        ("email", "sending"): 0,
        ("email", "dead"): 0,
        ("email", "silenced"): 0,
    }
    # The retry due at 1050 is the most overdue pending delivery at 1100.
    assert found[("relay_queue_oldest_due_age_seconds", ())] == 50


async def test_each_scrape_reads_the_store_again() -> None:
    store = MemoryStore()
    await store.open()
    metrics = Metrics()
    first = queue_samples(await metrics.scrape(store, 2000.0, ["hook"]))
    assert depth(first) == {
        ("hook", "pending"): 0,
        ("hook", "sending"): 0,
        ("hook", "dead"): 0,
        ("hook", "silenced"): 0,
    }
    assert first[("relay_queue_oldest_due_age_seconds", ())] == 0
    await ingest(store, 2000.0, "hook", "gone")
    # "gone" has left the rules but still has a delivery: it is shown.
    second = queue_samples(await metrics.scrape(store, 2003.5, ["hook"]))
    assert depth(second)[("hook", "pending")] == 1
    assert depth(second)[("gone", "pending")] == 1
    assert second[("relay_queue_oldest_due_age_seconds", ())] == 3.5
    # Not yet due: nothing is overdue, whatever waits.
    assert (
        queue_samples(await metrics.scrape(store, 1999.0, ["hook"]))[
            ("relay_queue_oldest_due_age_seconds", ())
        ]
        == 0
    )


async def test_a_store_that_cannot_be_read_does_not_fail_the_scrape() -> None:
    store = MemoryStore()
    await store.open()
    await ingest(store, 3000.0, "hook")
    await store.close()  # every read now raises StoreUnavailableError
    metrics = Metrics()
    metrics.callback("goapi", "accepted", 0.01)

    text = await metrics.scrape(store, 3010.0, ["hook"])

    found = queue_samples(text)
    assert found == {("relay_queue_stats_up", ()): 0}  # no stale or made-up figures
    assert "relay_callbacks_total{" in text.decode()  # the rest of the scrape is there


class SilentStore:
    """A store that never answers (a database behind a dead network link)."""

    async def queue_stats(self, now: float) -> QueueStats:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_store_that_does_not_answer_in_time_costs_only_the_queue_figures() -> None:
    reading = await read_queue(SilentStore(), 4000.0, ["hook"], within=0.05)
    assert reading.stats is None
    assert queue_samples(Metrics().render(reading)) == {("relay_queue_stats_up", ()): 0}


def test_a_render_outside_a_scrape_has_no_queue_figures() -> None:
    assert queue_samples(Metrics().render()) == {}
