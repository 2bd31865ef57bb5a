"""The metrics registry on its own: a store's conflict retries are read at each scrape."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import Metrics
from relay.store.memory import MemoryStore


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
