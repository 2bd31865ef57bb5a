"""The process's Prometheus metrics: one registry per runtime, never a module global.

The receiver's endpoint counts every callback by source and outcome and times it; the
dispatcher counts every attempt by destination, destination type and outcome and times it.
``GET /metrics`` serves ``render()``. The README lists every metric.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from relay import __version__
from relay.errors import StoreUnavailableError
from relay.metrics_peers import Families, PeerMetrics, merge
from relay.store.base import QueueStats

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
    "refused_timeout",
    "store_unavailable",
    "crosscheck_unavailable",
    "timed_out",
)
DELIVERY_OUTCOMES = ("delivered", "retried", "deferred", "dead", "silenced")
# A provider answers within seconds; an attempt may take up to its destination's timeout.
_INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Sources that are not in the rules share one label value: a scanner must not be able to
# create a time series per path it tries.
UNKNOWN_SOURCE = "(unknown)"


@runtime_checkable
class RetriesConflicts(Protocol):
    """A store that retries deadlocks and serialization failures itself (PostgreSQL)."""

    @property
    def conflict_retries(self) -> int: ...


class _ReadCounter(Collector):
    """A counter kept by another object (the store, the rejected log), read at each scrape."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self._name, self._documentation, self._read = name, documentation, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation)
        family.add_metric([], float(self._read()))
        yield family


class RulesMetrics:
    """The rules in force: reloads by outcome, and which rules (their hash) since when."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "relay_rules_reloads",
            "Rules reloads (SIGHUP, a file change, POST /admin/reload), by outcome (ok, failed).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome=outcome)  # both series exist from the start
        self.info = Gauge(
            "relay_rules_info",
            "The rules in force, by hash (of the rules files' names and contents); always 1.",
            ["hash"],
            registry=registry,
        )
        self.loaded_at = Gauge(
            "relay_rules_loaded_timestamp_seconds",
            "When the rules in force were loaded (Unix time).",
            registry=registry,
        )

    def loaded(self, digest: str, at: float) -> None:
        """New rules are in force (at start-up or by a reload)."""
        self.info.clear()  # one series: the hash in force, not every hash ever loaded
        self.info.labels(hash=digest).set(1)
        self.loaded_at.set(at)

    def reload(self, ok: bool) -> None:
        self.reloads.labels(outcome="ok" if ok else "failed").inc()


# --- The delivery queue, read from the store at each scrape ---------------------------------
# The figures come from the store, not from this process's own counting, so every replica
# (serve, worker) reports the same queue. Prometheus collectors are synchronous: ``scrape``
# awaits the store first, then renders from that snapshot.

QUEUE_STATES = ("pending", "sending", "dead", "silenced")
# Under a scraper's usual 10 s timeout: a slow store costs the queue figures, not the scrape.
QUEUE_READ_SECONDS = 5.0

log = logging.getLogger("relay.metrics")


class QueueSource(Protocol):
    """What a scrape reads the queue figures from (every store)."""

    async def queue_stats(self, now: float) -> QueueStats: ...


@dataclass(frozen=True)
class QueueReading:
    """One scrape's read of the queue: ``stats`` is None if the store could not be read.
    ``destinations`` (the rules' own) are shown with 0 where the store has none of them."""

    stats: QueueStats | None
    now: float
    destinations: tuple[str, ...] = ()


class _QueueCollector(Collector):
    """Renders the reading of the scrape under way; nothing outside a scrape. A custom
    collector rather than labelled Gauges: a destination that leaves the rules (and the
    store) leaves the output too, instead of lingering at its last value."""

    def __init__(self) -> None:
        self.reading: QueueReading | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "relay_queue_stats_up",
                "1 if this scrape read the queue figures from the store, 0 if it could not.",
            ),
            GaugeMetricFamily(
                "relay_queue_depth",
                "Deliveries pending, sending, dead or silenced, by destination and state "
                "(from the store).",
                labels=["destination", "state"],
            ),
            GaugeMetricFamily(
                "relay_queue_oldest_due_age_seconds",
                "How long the most overdue pending delivery has been due; 0 if none is.",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        reading = self.reading
        if reading is None:
            return
        up, depth, age = self._families()
        stats = reading.stats
        up.add_metric([], 0.0 if stats is None else 1.0)
        yield up
        if stats is None:
            return  # no figures rather than stale or made-up ones
        counts = {(d, state): 0 for d in reading.destinations for state in QUEUE_STATES}
        counts.update(stats.depth)
        for (destination, state), n in sorted(counts.items()):
            depth.add_metric([destination, state], float(n))
        yield depth
        overdue = 0.0 if stats.oldest_due is None else max(0.0, reading.now - stats.oldest_due)
        age.add_metric([], overdue)
        yield age


async def read_queue(
    store: QueueSource,
    now: float,
    destinations: Iterable[str],
    within: float = QUEUE_READ_SECONDS,
) -> QueueReading:
    """The store's queue figures, or a reading without them if it cannot answer within
    ``within`` seconds (a scrape never fails for the store's sake: ``relay_queue_stats_up``
    says so)."""
    stats: QueueStats | None = None
    try:
        async with asyncio.timeout(within):
            stats = await store.queue_stats(now)
    except (StoreUnavailableError, TimeoutError) as exc:
        why = str(exc) or f"the store did not answer within {within:g}s"
        log.warning("metrics: queue figures unavailable: %s", why)
    except Exception:
        log.exception("metrics: reading the queue figures failed")
    return QueueReading(stats, now, tuple(destinations))


# --- end of the queue block -----------------------------------------------------------------


class Metrics:
    """Every metric of one process, in a registry of its own."""

    def __init__(self, peers: PeerMetrics | None = None) -> None:
        # ``peers``: the worker processes whose counters this process's scrape adds to its own
        # (``relay serve`` with its workers).
        self._peers = peers
        # The labelled series counted on every callback and every attempt, found once: asking
        # prometheus-client for them each time costs more than counting. Their label values
        # are bounded (sources and destinations of the rules, outcomes, types).
        self._callback_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._attempt_series: dict[tuple[str, str, str], tuple[Counter, Histogram | None]] = {}
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
        self.pruned = Counter(
            "relay_retention_pruned",
            "Rows retention removed: delivered events, their deliveries and attempts.",
            ["what"],
            registry=r,
        )
        for what in ("events", "deliveries", "attempts"):
            self.pruned.labels(what=what)
        self.breaker_transitions = Counter(
            "relay_breaker_transitions",
            "Circuit breaker state changes made by this process, by destination and new state.",
            ["destination", "to"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "relay_breaker_open",
            "1 while a destination's circuit breaker pauses it (open or half open), else 0.",
            ["destination"],
            registry=r,
        )
        self.http_refused = Counter(
            "relay_http_refused",
            "Requests refused before relay read them: 408 (head too slow), 431 (head too large),"
            " 503 (over RELAY_MAX_CONNECTIONS).",
            ["status"],
            registry=r,
        )
        for status in ("408", "431", "503"):
            self.http_refused.labels(status=status)
        build = Gauge("relay_build_info", "The relay version; always 1.", ["version"], registry=r)
        build.labels(version=__version__).set(1)
        self._queue = _QueueCollector()
        r.register(self._queue)
        self.rules = RulesMetrics(r)

    def watch_store(self, store: object) -> None:
        """Expose the store's conflict retries, where the store counts them."""
        if isinstance(store, RetriesConflicts):
            self.registry.register(
                _ReadCounter(
                    "relay_store_conflict_retries",
                    "Deadlocks and serialization failures the store retried before any caller "
                    "saw them.",
                    lambda: store.conflict_retries,
                )
            )

    def watch_rejected(self, dropped: Callable[[], int]) -> None:
        """Expose how many refused requests the rejected log could not keep."""
        self.registry.register(
            _ReadCounter(
                "relay_rejected_dropped",
                "Refused requests not kept in the rejected log (its buffer was full, or the "
                "store could not take them).",
                dropped,
            )
        )

    def callback(self, source: str, outcome: str, seconds: float) -> None:
        series = self._callback_series.get((source, outcome))
        if series is None:
            series = (
                self.callbacks.labels(source=source, outcome=outcome),
                self.ingest_seconds.labels(source=source),
            )
            self._callback_series[(source, outcome)] = series
        series[0].inc()
        series[1].observe(seconds)

    def prune(self, events: int, deliveries: int, attempts: int) -> None:
        """A retention batch removed these rows."""
        self.pruned.labels(what="events").inc(events)
        self.pruned.labels(what="deliveries").inc(deliveries)
        self.pruned.labels(what="attempts").inc(attempts)

    def task(self, provider: str, model: str | None, status: str) -> None:
        self.task_outcomes.labels(provider=provider, model=model or "", status=status).inc()

    def attempt(self, destination: str, kind: str, outcome: str, seconds: float) -> None:
        series = self._attempt_series.get((destination, kind, outcome))
        if series is None:
            series = (
                self.deliveries.labels(destination=destination, type=kind, outcome=outcome),
                # A paced delivery made no attempt: it has no time to show.
                None if outcome == "deferred" else self.attempt_seconds.labels(destination),
            )
            self._attempt_series[(destination, kind, outcome)] = series
        series[0].inc()
        if series[1] is not None:
            series[1].observe(seconds)

    def breaker_transition(self, destination: str, to: str) -> None:
        self.breaker_transitions.labels(destination=destination, to=to).inc()

    def breaker_paused(self, destination: str, paused: bool) -> None:
        self.breaker_open.labels(destination=destination).set(1 if paused else 0)

    def render(self, queue: QueueReading | None = None, peers: Sequence[str] = ()) -> bytes:
        """Every metric in the text format; the queue figures from ``queue`` if given, and the
        counters of ``peers`` (their own renderings) added in."""
        # Synchronous from here on: no other scrape can swap the reading mid-render.
        self._queue.reading = queue
        try:
            if not peers:
                return generate_latest(self.registry)
            merged = CollectorRegistry(auto_describe=False)
            merged.register(Families(merge(self.registry.collect(), peers)))
            return generate_latest(merged)
        finally:
            self._queue.reading = None

    async def scrape(self, store: QueueSource, now: float, destinations: Iterable[str]) -> bytes:
        """One ``GET /metrics`` (serve's and the worker's): read the queue (and the workers'
        counters, if any), then render."""
        if self._peers is None:
            return self.render(await read_queue(store, now, destinations))
        queue, peers = await asyncio.gather(
            read_queue(store, now, destinations), self._peers.read()
        )
        return self.render(queue, peers)
