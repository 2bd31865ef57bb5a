"""`relay serve` as a real process: by default it only receives and one `relay worker` child
delivers (N with `--workers N`), and its /metrics counts what the workers deliver; a worker
that dies is started again; stopping the server stops them; a worker whose server was killed
stops by itself; `--workers 0`, `--no-dispatch` and memory:// start none; contradictory options
are refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.downstream import Downstream
from tests.e2e.cli import GOAPI_SECRET, arelay, base_env
from tests.faults.harness import Ledger, Relay, alive, children, settled
from tests.fixtures_util import load


def rules(down: str) -> str:
    return f"""
sources:
  goapi:
    provider: goapi
    secret: {GOAPI_SECRET}
destinations:
  down:
    type: webhook
    url: {down}
routes:
  - to: [down]
"""


async def eventually(condition: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def post(client: httpx.AsyncClient, url: str, ledger: Ledger, tasks: range) -> None:
    for n in tasks:
        body, headers = load("goapi/image_success_flux.json")
        body["data"]["task_id"] = f"task-{n}"
        answer = await ledger.post(client, f"{url}/hooks/goapi", json.dumps(body).encode(), headers)
        assert answer.status_code == 200, answer.text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(
    client: httpx.AsyncClient, url: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = await client.get(f"{url}/metrics")
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


DELIVERED = (
    "relay_deliveries_total",
    frozenset({("destination", "down"), ("type", "webhook"), ("outcome", "delivered")}),
)
ATTEMPTS = ("relay_delivery_attempt_seconds_count", frozenset({("destination", "down")}))


@pytest.mark.parametrize(("args", "workers"), [((), 1), (("--workers", "2"), 2)])
async def test_serve_delivers_from_its_workers_and_its_metrics_count_what_they_deliver(
    make_relay: Callable[..., Relay], downstream: Downstream, args: tuple[str, ...], workers: int
) -> None:
    relay = make_relay(rules(downstream.url))
    ledger = Ledger()
    server = await relay.serve(*args)
    assert server.proc is not None
    serve_pid = server.proc.pid
    await eventually(lambda: len(children(serve_pid)) == workers)
    async with httpx.AsyncClient(timeout=10) as client:
        before = await scrape(client, server.url)
        # Nothing delivered yet: the series may not exist at all.
        assert before.get(DELIVERED, 0.0) == 0.0
        await post(client, server.url, ledger, range(25))
        found = await settled(server, ledger, within=30)
        assert {d["state"] for ds in found.values() for d in ds} == {"delivered"}
        # A worker counts a delivery right after recording it: the scrape catches up at once.
        deadline = time.monotonic() + 10
        while (now := await scrape(client, server.url)).get(DELIVERED, 0.0) < 25:
            assert time.monotonic() < deadline, f"counted {now.get(DELIVERED)} of 25"
            await asyncio.sleep(0.05)
    # Exactly the deliveries made, whichever worker made them, and every attempt timed.
    assert now[DELIVERED] == 25
    assert now[ATTEMPTS] == 25
    accepted = ("relay_callbacks_total", frozenset({("source", "goapi"), ("outcome", "accepted")}))
    assert now[accepted] == 25
    # The queue figures are read once, from the store, not once per process.
    pending = ("relay_queue_depth", frozenset({("destination", "down"), ("state", "pending")}))
    assert now[pending] == 0
    assert '"logger":"relay.worker"' in relay.logs()
    assert len({json.loads(r.body)["data"]["task_id"] for r in downstream.received}) == 25


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--workers", "0"), {}),
        ((), {"RELAY_WORKERS": "0"}),
        (("--no-dispatch",), {}),
        (("--db", "memory://"), {}),
    ],
)
async def test_serve_starts_no_worker_when_told_or_when_nothing_can_be_shared(
    make_relay: Callable[..., Relay],
    downstream: Downstream,
    args: tuple[str, ...],
    env: dict[str, str],
) -> None:
    relay = make_relay(rules(downstream.url))
    server = await relay.serve(*args, **env)
    assert server.proc is not None
    async with httpx.AsyncClient(timeout=10) as client:
        await post(client, server.url, Ledger(), range(1))
        if "--no-dispatch" not in args:
            # The serving process delivers itself.
            await eventually(lambda: len(downstream.received) == 1)
    assert children(server.proc.pid) == []
    assert "worker 1 started" not in relay.logs()


async def test_workers_deliver_are_restarted_and_stop_with_the_server(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    relay = make_relay(rules(downstream.url))
    ledger = Ledger()
    server = await relay.serve("--workers", "2")
    assert server.proc is not None
    serve_pid = server.proc.pid
    await eventually(lambda: len(children(serve_pid)) == 2)
    first = children(serve_pid)
    async with httpx.AsyncClient(timeout=10) as client:
        await post(client, server.url, ledger, range(30))
        await settled(server, ledger, within=30)
        # A worker killed outright is started again; deliveries go on.
        os.kill(first[0], signal.SIGKILL)
        await eventually(
            lambda: len(children(serve_pid)) == 2 and first[0] not in children(serve_pid)
        )
        await post(client, server.url, ledger, range(30, 40))
        found = await settled(server, ledger, within=30)
    later = children(serve_pid)
    # SIGTERM: the workers are stopped first, then the server ends as SIGTERM ends it.
    assert await server.stop() == -signal.SIGTERM
    # Stopping the server stopped every worker it started.
    await eventually(lambda: not any(alive(pid) for pid in later), within=20)
    assert {d["state"] for ds in found.values() for d in ds} == {"delivered"}
    tasks = {json.loads(r.body)["data"]["task_id"] for r in downstream.received}
    assert tasks == {f"task-{n}" for n in range(40)}
    logs = relay.logs()
    assert "exited with signal SIGKILL" in logs and "starting it again in 1 s" in logs
    # The server itself delivered nothing: its workers did.
    assert '"logger":"relay.worker"' in logs


async def test_a_worker_whose_server_was_killed_stops_by_itself(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    relay = make_relay(rules(downstream.url))
    server = await relay.serve("--workers", "1")
    assert server.proc is not None
    serve_pid = server.proc.pid
    await eventually(lambda: len(children(serve_pid)) == 1)
    [worker] = children(serve_pid)
    server.proc.kill()
    await server.proc.wait()
    await eventually(lambda: not alive(worker), within=20)
    assert "relay serve (pid" in relay.logs() and "is gone: stopping" in relay.logs()


async def test_contradictory_or_impossible_worker_options_are_refused(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(rules("http://127.0.0.1:9/x"))
    env = base_env()
    both = await arelay(tmp_path, "serve", "--workers", "2", "--no-dispatch", env=env)
    memory = await arelay(tmp_path, "serve", "--workers", "1", "--db", "memory://", env=env)
    many = await arelay(tmp_path, "serve", "--workers", "65", env=env)
    assert both.code == 2 and "--workers and --no-dispatch: choose one" in both.err
    assert memory.code == 2 and "--workers needs a shared database" in memory.err
    assert many.code == 2 and "must be 0 to 64" in many.err


async def test_the_rules_notes_are_logged_once_not_again_by_each_worker(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    # A default in use is worth one line; serve's workers read the same rules and stay quiet.
    port = downstream.url.split(":")[2].split("/")[0]
    relay = make_relay(
        rules(f"${{RELAY_TEST_DOWN_URL:-http://127.0.0.1:{port}/hook}}"),
    )
    server = await relay.serve("--workers", "2")
    assert server.proc is not None
    serve_pid = server.proc.pid
    await eventually(lambda: len(children(serve_pid)) == 2)
    await eventually(lambda: relay.logs().count("dispatching from") == 2)
    note = "uses the default of ${RELAY_TEST_DOWN_URL}"
    assert relay.logs().count(note) == 1, relay.logs()
    # And the default is the one in force: a callback is delivered to it.
    ledger = Ledger()
    async with httpx.AsyncClient(timeout=10) as client:
        await post(client, server.url, ledger, range(1))
        found = await settled(server, ledger, within=30)
    assert {d["state"] for ds in found.values() for d in ds} == {"delivered"}
