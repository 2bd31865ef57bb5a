"""The process's Prometheus metrics: one registry per runtime, never a module global.

The receiver's endpoint counts every callback by source and outcome and times it; the
dispatcher counts every attempt by destination, destination type and outcome and times it.
``GET /metrics`` serves ``render()``. The README lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from relay import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Callbacks by what became of them; "refused_*" name the reason class of a 4xx or 503.
CALLBACK_OUTCOMES = (
    "accepted",
    "duplicate",
    "ignored",
    "quarantined",
    "refused_auth",
    "refused_payload",
    "refused_unknown_source",
    "refused_too_large",
    "refused_method",
    "store_unavailable",
    "crosscheck_unavailable",
)
DELIVERY_OUTCOMES = ("delivered", "retried", "deferred", "dead")
# A provider answers within seconds; an attempt may take up to its destination's timeout.
_INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Sources that are not in the rules share one label value: a scanner must not be able to
# create a time series per path it tries.
UNKNOWN_SOURCE = "(unknown)"


class RetriesConflicts(Protocol):
    """A store that retries deadlocks and serialization failures itself (PostgreSQL)."""

    @property
    def conflict_retries(self) -> int: ...


class _StoreCollector(Collector):
    """The store's own count of conflict retries, read at each scrape."""

    def __init__(self, store: RetriesConflicts) -> None:
        self._store = store

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "relay_store_conflict_retries",
            "Deadlocks and serialization failures the store retried before any caller saw them.",
        )
        family.add_metric([], float(self._store.conflict_retries))
        yield family


class Metrics:
    """Every metric of one process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.callbacks = Counter(
            "relay_callbacks",
            "Callbacks received, by source and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "relay_ingest_seconds",
            "Time from a callback's last byte to its answer, by source.",
            ["source"],
            buckets=_INGEST_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "relay_deliveries",
            "Delivery attempts, by destination, destination type and outcome.",
            ["destination", "type", "outcome"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "relay_delivery_attempt_seconds",
            "How long one delivery attempt took, by destination.",
            ["destination"],
            buckets=_ATTEMPT_BUCKETS,
            registry=r,
        )
        self.lease_losses = Counter(
            "relay_lease_losses",
            "Outcomes not recorded because another worker had taken the delivery over.",
            registry=r,
        )
        self.task_outcomes = Counter(
            "relay_task_outcomes",
            "Final task events stored, by provider, model and status (failure rate per model).",
            ["provider", "model", "status"],
            registry=r,
        )
        build = Gauge("relay_build_info", "The relay version; always 1.", ["version"], registry=r)
        build.labels(version=__version__).set(1)

    def watch_store(self, store: object) -> None:
        """Expose the store's conflict retries, where the store counts them."""
        if hasattr(store, "conflict_retries"):
            self.registry.register(_StoreCollector(store))

    def callback(self, source: str, outcome: str, seconds: float) -> None:
        self.callbacks.labels(source=source, outcome=outcome).inc()
        self.ingest_seconds.labels(source=source).observe(seconds)

    def task(self, provider: str, model: str | None, status: str) -> None:
        self.task_outcomes.labels(provider=provider, model=model or "", status=status).inc()

    def attempt(self, destination: str, kind: str, outcome: str, seconds: float) -> None:
        self.deliveries.labels(destination=destination, type=kind, outcome=outcome).inc()
        if outcome != "deferred":  # a paced delivery made no attempt
            self.attempt_seconds.labels(destination=destination).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
