"""The delivery workers' counters in ``relay serve``'s own ``/metrics`` (README: Metrics).

``relay serve`` starts its workers itself, so one scrape of it must count what they deliver:
each worker answers ``GET /metrics`` on a Unix socket of its own (in a private folder of the
serving process, named to it in ``RELAY_METRICS_SOCKET``), and serve's scrape reads them all
and adds their counters and histograms to its own. A worker that does not answer in time (one
being restarted) is left out of that scrape and logged; a restarted worker starts its counters
from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import aiohttp
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger("relay.metrics")

# Set by `relay serve` for each of its workers: the socket its counters are read from.
SOCKET_VARIABLE = "RELAY_METRICS_SOCKET"
# Well under a scraper's usual 10 s timeout, and a worker answers in milliseconds.
PEER_READ_SECONDS = 2.0
# Every process counts its own rules reloads of the same files: serve's count is the one.
_OWN_ONLY = frozenset({"relay_rules_reloads"})
# A gauge the workers set: a destination is paused if any process has it paused.
_LARGEST = frozenset({"relay_breaker_open"})


class PeerMetrics:
    """Reads the workers' counters, each from its socket."""

    def __init__(self, sockets: Sequence[str], within: float = PEER_READ_SECONDS) -> None:
        self.sockets = tuple(sockets)
        self._within = within

    async def read(self) -> list[str]:
        """The text of every worker that answered within the time allowed."""
        texts = await asyncio.gather(*(self._read_one(path) for path in self.sockets))
        return [text for text in texts if text is not None]

    async def _read_one(self, path: str) -> str | None:
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=path),
                    timeout=aiohttp.ClientTimeout(total=self._within),
                ) as session,
                session.get("http://worker/metrics") as response,
            ):
                if response.status == 200:
                    return await response.text()
                log.warning("metrics: worker at %s answered %d", path, response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # A worker starting or being restarted: this scrape goes without its counters.
            log.info("metrics: worker at %s not read: %s", path, str(exc) or type(exc).__name__)
        return None


def merge(own: Iterable[Metric], peers: Sequence[str]) -> list[Metric]:
    """``own`` families with the peers' counters and histograms added (same name and labels:
    summed; a series only a peer has: included), and ``relay_breaker_open`` the largest of
    all. Other gauges (the queue figures, read from the store, the build and rules info) and
    the ``_created`` samples stay this process's own."""
    families = {family.name: family for family in own}
    for text in peers:
        for peer in text_string_to_metric_families(text):
            mine = families.get(peer.name)
            if mine is None or mine.type != peer.type:
                continue
            combine: Callable[[float, float], float]
            if peer.name in _LARGEST:
                combine = max
            elif peer.type in ("counter", "histogram") and peer.name not in _OWN_ONLY:
                combine = _add
            else:
                continue
            at = {(s.name, _labels(s.labels)): i for i, s in enumerate(mine.samples)}
            for sample in peer.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, _labels(sample.labels))
                i = at.get(key)
                if i is None:
                    at[key] = len(mine.samples)
                    mine.samples.append(sample)
                else:
                    old = mine.samples[i]
                    mine.samples[i] = old._replace(value=combine(old.value, sample.value))
    return list(families.values())


class Families(Collector):
    """Already collected families, for the exposition format's writer."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _add(a: float, b: float) -> float:
    return a + b


def _labels(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))
