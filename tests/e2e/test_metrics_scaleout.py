"""Metrics across processes on one PostgreSQL database: ``relay serve --no-dispatch`` counts
the callbacks, ``relay worker --metrics-port`` counts the deliveries, and both report the
same queue figures, read from the store. Real subprocesses, a real downstream receiver.

Also: a worker whose metrics port is taken stops at once with one line and exit 2.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.downstream import Downstream, Received
from tests.e2e.cli import Serve, Worker, arelay, base_env, write

SECRET = "metrics-scaleout-secret"
WHSEC = "whsec_" + base64.b64encode(b"metrics-scaleout-key-01").decode()
RULES = f"""
sources:
  goapi: {{provider: goapi, secret: {SECRET}}}
destinations:
  down:
    type: webhook
    url: ${{DOWN_URL}}
    secret: {WHSEC}
    retry: {{schedule: [50ms, 50ms, 50ms, 50ms, 50ms], jitter: 0}}
routes:
  - to: [down]
"""
HEADERS = {"x-webhook-secret": SECRET, "content-type": "application/json"}
FINALS = 6
# In the order the worker's requests arrive (one at a time): 503 is retried, 400 is dead,
# then every request is answered 200. So 2 retried, 2 dead and 4 delivered, whichever
# delivery each answer happens to meet.
ANSWERS = [200, 503, 400, 503, 200, 400]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def body(i: int) -> bytes:
    return json.dumps(
        {
            "timestamp": int(time.time()),
            "data": {
                "task_id": f"metrics-task-{i}",
                "model": "flux",
                "task_type": "txt2img",
                "status": "completed",
                "output": {"image_url": f"https://cdn.example/{i}.png"},
                "config": {"webhook_config": {"secret": SECRET}},
            },
        }
    ).encode()


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    r = await client.get(url + "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def by(found: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: n for (metric, labels), n in found.items() if metric == name}


def queue(found: Samples) -> dict[str, float]:
    """Queue depth of destination "down", by state; requires the figures to be there."""
    assert found[("relay_queue_stats_up", ())] == 1
    return {
        dict(labels)["state"]: n
        for (name, labels), n in found.items()
        if name == "relay_queue_depth" and dict(labels)["destination"] == "down"
    }


def overdue(found: Samples) -> float:
    return found[("relay_queue_oldest_due_age_seconds", ())]


async def scrape_until(
    client: httpx.AsyncClient, url: str, done: Callable[[Samples], bool], what: str
) -> Samples:
    """Scrape ``url`` until ``done`` holds, within a bounded time."""
    found: Samples = {}
    try:
        async with asyncio.timeout(20):
            while True:
                found = await scrape(client, url)
                if done(found):
                    return found
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never {what}; last scrape of {url}: {found}") from None


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    server = await Downstream(responses=[(status, {}) for status in ANSWERS]).start()
    yield server
    await server.stop()


async def test_serve_counts_callbacks_the_worker_deliveries_and_both_the_same_queue(
    tmp_path: Path, pg_url: str, downstream: Downstream
) -> None:
    release = asyncio.Event()

    async def hold_the_first(item: Received) -> None:
        if len(downstream.received) == 1:
            await release.wait()

    downstream.hold = hold_the_first
    write(tmp_path / "rules", {"rules.yaml": RULES})
    env = base_env(
        RELAY_DB=pg_url,
        DOWN_URL=downstream.url,
        RELAY_LOG_LEVEL="warning",
        RELAY_MAX_BODY="4096",
        # One send at a time, so the queue stands still while the downstream holds one.
        RELAY_CONCURRENCY="1",
    )
    web = await Serve(tmp_path, env, "serve", "--no-dispatch").start()
    worker: Worker | None = None
    try:
        async with httpx.AsyncClient(base_url=web.url, timeout=10) as client:
            for i in range(FINALS):
                r = await client.post("/hooks/goapi", content=body(i), headers=HEADERS)
                assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
            again = await client.post("/hooks/goapi", content=body(0), headers=HEADERS)
            assert again.json()["duplicate"] is True
            wrong = {**HEADERS, "x-webhook-secret": "wrong"}
            assert (
                await client.post("/hooks/goapi", content=body(9), headers=wrong)
            ).status_code == 401
            assert (
                await client.post("/hooks/goapi", content=b"{", headers=HEADERS)
            ).status_code == 400
            assert (await client.post("/hooks/nope", content=b"{}")).status_code == 404
            big = json.dumps({"pad": "x" * 5000})
            assert (
                await client.post("/hooks/goapi", content=big, headers=HEADERS)
            ).status_code == 413
            assert (await client.get("/hooks/goapi")).status_code == 405

            # No worker yet: every delivery is pending and overdue, as serve reads the store.
            await scrape_until(
                client,
                web.url,
                lambda f: (
                    queue(f) == {"pending": FINALS, "sending": 0, "dead": 0, "silenced": 0}
                    and overdue(f) > 0
                ),
                "saw every delivery pending and overdue before the worker started",
            )

            worker = await Worker(tmp_path, env, "worker").start()
            try:
                # The downstream holds the first request: one sending, the rest waiting.
                waiting = {"pending": FINALS - 1, "sending": 1, "dead": 0, "silenced": 0}
                held = await scrape_until(
                    client,
                    worker.url,
                    lambda f: queue(f) == waiting,
                    "saw the worker's first send held",
                )
                at_serve = await scrape(client, web.url)
                assert queue(at_serve) == queue(held) == waiting
                assert overdue(at_serve) > 0 and overdue(held) > 0
            finally:
                release.set()

            done = await scrape_until(
                client,
                worker.url,
                lambda f: (
                    by(f, "relay_deliveries_total", "outcome")
                    == {"delivered": 4, "retried": 2, "dead": 2}
                    and queue(f) == {"pending": 0, "sending": 0, "dead": 2, "silenced": 0}
                ),
                "saw every delivery through and the queue settled",
            )
            at_serve = await scrape(client, web.url)
            assert (
                queue(at_serve)
                == queue(done)
                == {"pending": 0, "sending": 0, "dead": 2, "silenced": 0}
            )
            assert overdue(at_serve) == overdue(done) == 0
            assert len(downstream.received) == FINALS + 2  # each retried one was sent twice

        # Each process counts what it did itself.
        assert by(at_serve, "relay_callbacks_total", "outcome") == {
            "accepted": FINALS,
            "duplicate": 1,
            "refused_auth": 1,
            "refused_payload": 1,
            "refused_unknown_source": 1,
            "refused_too_large": 1,
            "refused_method": 1,
        }
        assert by(at_serve, "relay_deliveries_total", "outcome") == {}
        assert by(done, "relay_callbacks_total", "outcome") == {}
        attempts = ("relay_delivery_attempt_seconds_count", (("destination", "down"),))
        assert done[attempts] == FINALS + 2
    finally:
        stopped = await worker.stop() if worker is not None else None
        await web.stop()
    assert stopped == 0  # the metrics server closed with the worker, cleanly


async def test_a_worker_whose_metrics_port_is_taken_says_so_and_exits_2(
    tmp_path: Path,
) -> None:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    env = base_env(RELAY_DB=f"sqlite:///{tmp_path / 'relay.db'}", DOWN_URL="http://127.0.0.1:9/")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await arelay(
            tmp_path, "worker", "--rules", "rules", "--metrics-port", str(port), env=env
        )
    assert result.code == 2, result.text
    assert "Traceback" not in result.text
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"relay: cannot serve metrics on 127.0.0.1:{port} ")
    assert "--metrics-port" in lines[0] and "in use" in lines[0]


@pytest.mark.parametrize("port", ["0", "65536", "nine"])
async def test_a_metrics_port_that_is_no_port_is_refused(tmp_path: Path, port: str) -> None:
    result = await arelay(tmp_path, "worker", "--metrics-port", port, env=base_env())
    assert result.code == 2
    assert "--metrics-port" in result.err and "Traceback" not in result.text


class EnvWorker(Worker):
    """A worker given no --metrics-port: RELAY_METRICS_PORT must set it."""

    def command(self) -> list[str]:
        return ["worker", "--rules", "rules"]


async def test_relay_metrics_port_sets_the_workers_metrics_port(tmp_path: Path) -> None:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    worker = EnvWorker(tmp_path, {}, "worker")
    worker.env = base_env(
        RELAY_DB=f"sqlite:///{tmp_path / 'relay.db'}",
        DOWN_URL="http://127.0.0.1:9/",
        RELAY_METRICS_PORT=str(worker.port),
    )
    await worker.start()
    try:
        async with httpx.AsyncClient(base_url=worker.url, timeout=5) as client:
            found = await scrape(client, worker.url)
            assert queue(found) == {"pending": 0, "sending": 0, "dead": 0, "silenced": 0}
            assert (await client.get("/healthz")).json() == {"ok": True}
            assert (await client.post("/metrics")).status_code == 405
    finally:
        assert await worker.stop() == 0
