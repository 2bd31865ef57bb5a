"""SIGTERM to a real ``relay serve`` (and ``relay worker``) during a delivery burst, on SQLite.

The downstream holds every request until the test opens its gate, so which sends are under
way when the stop comes is set by the test, not by timing. After the stop: every acknowledged
callback is stored and no delivery is left ``sending``. With a grace period long enough, the
sends under way finish and are recorded, and a restart sends nothing twice; with a downstream
slower than the grace, they are given back at once (pending, no attempt spent) and delivered
after the restart.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.downstream import Downstream, Received
from tests.e2e.cli import GOAPI_SECRET, Serve, Worker, base_env, write
from tests.fixtures_util import load

WITHIN = 30.0
SLOTS = 4  # RELAY_CONCURRENCY: sends under way at once; the rest of the burst waits
BURST = 120
DOWN_SECRET = "whsec_" + base64.b64encode(b"shutdown-downstream-key").decode()

RULES = f"""
sources:
  goapi: {{provider: goapi, secret: "${{GOAPI_SECRET}}"}}
destinations:
  down:
    type: webhook
    url: ${{DOWN_URL}}
    secret: {DOWN_SECRET}
    timeout: 60s
    retry: {{schedule: [100ms], jitter: 0}}
routes:
  - to: [down]
"""


class Gate:
    """A downstream ``hold``: every request waits until ``open``."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def __call__(self, item: Received) -> None:
        await self.opened.wait()

    def open(self) -> None:
        self.opened.set()


def setup(tmp_path: Path, downstream: Downstream, grace: float) -> dict[str, str]:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    return base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        DOWN_URL=downstream.url,
        RELAY_DB=f"sqlite:///{tmp_path / 'relay.db'}",
        RELAY_CONCURRENCY=str(SLOTS),
        RELAY_SHUTDOWN_GRACE=str(grace),
        RELAY_LOG_LEVEL="info",
        RELAY_LOG_FORMAT="text",
    )


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, log: Serve) -> None:
    """Wait (bounded) until ``check()`` holds."""
    deadline = time.monotonic() + WITHIN
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}:\n{log.output()}")
        await asyncio.sleep(0.05)


async def burst(url: str, acked: set[str], count: int = BURST, tag: str = "burst") -> None:
    """Post ``count`` callbacks a few at a time; collect the event ids answered 200. A post
    the stopping server no longer takes is not acknowledged (the provider would retry it)."""
    template, headers = load("goapi/image_success_flux.json")
    limits = httpx.Limits(max_connections=SLOTS)
    async with httpx.AsyncClient(base_url=url, timeout=WITHIN, limits=limits) as client:

        async def one(i: int) -> None:
            body = {**template, "data": {**template["data"], "task_id": f"{tag}-{i:04d}"}}
            try:
                r = await client.post("/hooks/goapi", json=body, headers=headers)
            except httpx.TransportError:
                return
            assert r.status_code == 200, r.text  # never a 5xx while stopping
            acked.add(r.json()["event_id"])

        await asyncio.gather(*(one(i) for i in range(count)))


class Db:
    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def events(self) -> set[str]:
        return {str(i) for (i,) in self.rows("SELECT id FROM events")}

    def deliveries(self) -> dict[str, tuple[str, str, int]]:
        """delivery id -> (event id, state, attempts)."""
        rows = self.rows("SELECT id, event_id, state, attempts FROM deliveries")
        return {str(d): (str(e), str(s), int(str(a))) for d, e, s, a in rows}

    def attempt_rows(self) -> collections.Counter[str]:
        return collections.Counter(str(d) for (d,) in self.rows("SELECT delivery_id FROM attempts"))

    def all_delivered(self) -> bool:
        states = {state for _, state, _ in self.deliveries().values()}
        return states == {"delivered"}


async def terminated(server: Serve, what: str) -> str:
    """SIGTERM ``server``; returns once its dispatcher has stopped claiming and begun to wait
    for the sends under way."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    await until(lambda: "stopping: " in server.output(), what, server)
    return server.output()


async def exited(server: Serve) -> None:
    assert server.proc is not None
    async with asyncio.timeout(WITHIN):
        await server.proc.wait()
    server.proc = None


def sent_ids(downstream: Downstream) -> collections.Counter[str]:
    return collections.Counter(r.headers["webhook-id"] for r in downstream.received)


async def test_sigterm_within_the_grace_finishes_the_sends_and_sends_nothing_twice(
    tmp_path: Path,
) -> None:
    gate = Gate()
    downstream = await Downstream(hold=gate).start()
    env = setup(tmp_path, downstream, grace=WITHIN)
    db = Db(tmp_path / "relay.db")
    serve = await Serve(tmp_path, env, "serve").start()
    acked: set[str] = set()
    try:
        posting = asyncio.create_task(burst(serve.url, acked))
        # Mid-burst: every slot holds a send, more callbacks are coming in.
        await until(lambda: len(downstream.received) >= SLOTS, "every slot is sending", serve)
        await terminated(serve, "the dispatcher drains")
        held = set(sent_ids(downstream))
        assert len(held) == SLOTS
        gate.open()  # the sends under way finish within the grace period
        await exited(serve)
        await posting

        assert acked and acked <= db.events()  # nothing acknowledged is lost
        deliveries = db.deliveries()
        assert "sending" not in {state for _, state, _ in deliveries.values()}
        assert {d: deliveries[d][1:] for d in held} == {d: ("delivered", 1) for d in held}
        assert f"{SLOTS} in-flight send(s) finished, 0 unfinished lease(s) given back" in (
            serve.output()
        )

        # Restarted on the same database: the rest is delivered, nothing a second time.
        serve = await Serve(tmp_path, env, "serve-again").start()
        await until(db.all_delivered, "every delivery is delivered", serve)
        await serve.stop()
        sent = sent_ids(downstream)
        assert set(sent) == set(db.deliveries())
        assert [d for d, n in sent.items() if n > 1] == []
        assert {e for e, _, _ in db.deliveries().values()} >= acked
    finally:
        gate.open()
        await serve.stop()
        await downstream.stop()


async def test_sigterm_past_the_grace_gives_the_leases_back_for_the_restart(
    tmp_path: Path,
) -> None:
    gate = Gate()
    downstream = await Downstream(hold=gate).start()
    # The downstream answers nothing before the process has exited: slower than any grace.
    env = setup(tmp_path, downstream, grace=0.5)
    db = Db(tmp_path / "relay.db")
    serve = await Serve(tmp_path, env, "serve").start()
    acked: set[str] = set()
    try:
        posting = asyncio.create_task(burst(serve.url, acked))
        await until(lambda: len(downstream.received) >= SLOTS, "every slot is sending", serve)
        await terminated(serve, "the dispatcher drains")
        await exited(serve)
        await posting
        cut = set(sent_ids(downstream))
        assert len(cut) == SLOTS

        assert acked and acked <= db.events()
        deliveries = db.deliveries()
        assert "sending" not in {state for _, state, _ in deliveries.values()}
        # Given back: pending, the attempt not spent, no attempt row.
        assert {d: deliveries[d][1:] for d in cut} == {d: ("pending", 0) for d in cut}
        assert not set(db.attempt_rows()) & cut
        assert f"0 in-flight send(s) finished, {SLOTS} unfinished lease(s) given back" in (
            serve.output()
        )

        gate.open()
        serve = await Serve(tmp_path, env, "serve-again").start()
        await until(db.all_delivered, "every delivery is delivered", serve)
        await serve.stop()
        deliveries = db.deliveries()
        assert {e for e, _, _ in deliveries.values()} >= acked
        # One attempt each: the cut-off one was not counted.
        assert set(db.attempt_rows()) == set(deliveries)
        assert set(db.attempt_rows().values()) == {1}
        assert {attempts for _, _, attempts in deliveries.values()} == {1}
        # Only the sends cut off at the stop reached the downstream twice.
        sent = sent_ids(downstream)
        assert set(sent) == set(deliveries)
        assert {d for d, n in sent.items() if n > 1} == cut
    finally:
        gate.open()
        await serve.stop()
        await downstream.stop()


async def test_sigterm_to_a_worker_gives_its_leases_back(tmp_path: Path) -> None:
    gate = Gate()
    downstream = await Downstream(hold=gate).start()
    env = setup(tmp_path, downstream, grace=0.5)
    db = Db(tmp_path / "relay.db")
    # A receiver alone stores the callbacks; workers deliver them.
    receiver = await Serve(tmp_path, env, "receiver", "--no-dispatch").start()
    acked: set[str] = set()
    await burst(receiver.url, acked, count=10, tag="worker")
    await receiver.stop()
    assert len(acked) == 10

    worker = await Worker(tmp_path, env, "worker").start()
    try:
        await until(lambda: len(downstream.received) >= SLOTS, "every slot is sending", worker)
        await terminated(worker, "the worker drains")
        await exited(worker)
        cut = set(sent_ids(downstream))
        deliveries = db.deliveries()
        assert "sending" not in {state for _, state, _ in deliveries.values()}
        assert {state for _, state, _ in deliveries.values()} == {"pending"}
        assert {attempts for _, _, attempts in deliveries.values()} == {0}
        assert f"{SLOTS} unfinished lease(s) given back" in worker.output()

        gate.open()
        worker = await Worker(tmp_path, env, "worker-again").start()
        await until(db.all_delivered, "every delivery is delivered", worker)
        assert {e for e, _, _ in db.deliveries().values()} == acked
        assert {d for d, n in sent_ids(downstream).items() if n > 1} == cut
    finally:
        gate.open()
        await worker.stop()
        await downstream.stop()
