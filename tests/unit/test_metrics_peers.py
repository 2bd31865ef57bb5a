"""`relay serve`'s scrape with its workers' counters: read from each worker's Unix socket (a
real aiohttp server here) and added to its own; a worker that does not answer is left out and
the scrape still answers; gauges other than the breaker's stay the server's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import Metrics
from relay.metrics_peers import PeerMetrics
from relay.store.memory import MemoryStore


def values(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


async def serve_unix(metrics: Metrics, path: Path) -> web.AppRunner:
    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    return runner


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[tuple[list[Metrics], list[str]]]:
    own = [Metrics(), Metrics()]
    paths = [tmp_path / "w1.sock", tmp_path / "w2.sock"]
    runners = [await serve_unix(m, p) for m, p in zip(own, paths, strict=True)]
    try:
        yield own, [str(p) for p in paths]
    finally:
        for runner in runners:
            await runner.cleanup()


def delivered(destination: str) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {("destination", destination), ("type", "webhook"), ("outcome", "delivered")}
    return ("relay_deliveries_total", frozenset(labels))


async def test_the_workers_counters_are_added_to_the_servers(
    workers: tuple[list[Metrics], list[str]], tmp_path: Path
) -> None:
    (one, two), paths = workers
    for _ in range(3):
        one.attempt("hook", "webhook", "delivered", 0.02)
    two.attempt("hook", "webhook", "delivered", 0.2)
    two.attempt("slack", "webhook", "delivered", 0.02)
    two.breaker_paused("hook", True)
    two.rules.reload(False)
    server = Metrics(PeerMetrics(paths))
    server.callback("goapi", "accepted", 0.01)
    got = values(await server.scrape(MemoryStore(), 0.0, ["hook"]))
    assert got[delivered("hook")] == 4
    assert got[delivered("slack")] == 1
    assert got[("relay_delivery_attempt_seconds_count", frozenset({("destination", "hook")}))] == 4
    bucket = frozenset({("destination", "hook"), ("le", "0.025")})
    assert got[("relay_delivery_attempt_seconds_bucket", bucket)] == 3
    assert (
        got[("relay_callbacks_total", frozenset({("source", "goapi"), ("outcome", "accepted")}))]
        == 1
    )
    assert got[("relay_breaker_open", frozenset({("destination", "hook")}))] == 1
    # Each process reloads the same rules: the server's own count is the one shown.
    assert got[("relay_rules_reloads_total", frozenset({("outcome", "failed")}))] == 0
    # The build info is one series, not one per process.
    assert len([k for k in got if k[0] == "relay_build_info"]) == 1


async def test_a_worker_that_does_not_answer_is_left_out(
    workers: tuple[list[Metrics], list[str]], tmp_path: Path
) -> None:
    (one, _), paths = workers
    one.attempt("hook", "webhook", "delivered", 0.02)
    server = Metrics(PeerMetrics([paths[0], str(tmp_path / "gone.sock")]))
    store = MemoryStore()
    await store.open()
    got = values(await server.scrape(store, 0.0, ["hook"]))
    assert got[delivered("hook")] == 1
    assert got[("relay_queue_stats_up", frozenset())] == 1
