"""Delivery benchmark: webhook deliveries per second by `relay worker` processes, one worker
and two workers on PostgreSQL, and one on SQLite as the baseline, all in the same run.

    python benchmarks/delivery.py [--deliveries 4000] [--rounds 3] [--postgres URL]

Each measurement loads a fresh database with ``--deliveries`` due webhook deliveries (through
the store, before any worker starts), starts the workers as subprocesses, and times until a
local receiver (aiohttp, in this process, answering 200 at once) has every delivery id and the
database shows them all delivered, timed from the first delivery's arrival to the last (so
process start-up is not counted). Without ``--postgres`` a throwaway PostgreSQL cluster is
started with fsync on (tests/pg.py), so its commits are as durable as SQLite's
synchronous=FULL. Bounded in deliveries and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from pg_server import new_database, postgres_server  # noqa: E402

from relay.events import Output, TaskEvent  # noqa: E402
from relay.store import open_store  # noqa: E402
from relay.store.base import NewDelivery  # noqa: E402

WHSEC = "whsec_" + base64.b64encode(b"delivery-benchmark-key-0123").decode()
RULES = """
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
    timeout: 10s
routes:
  - to: [down]
"""


class Receiver:
    """The downstream: records delivery ids, answers 200."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.requests = 0
        self.first = 0.0  # when the first delivery of a measurement arrived
        self.changed = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        if not self.ids:
            self.first = time.perf_counter()
        self.ids.add(request.headers["webhook-id"])
        self.changed.set()
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def event(task: str, now: datetime, prompt: str | None = None) -> TaskEvent:
    """A finished image task with one output (benchmarks/backlog.py loads the same)."""
    return TaskEvent(
        id=f"evt_{uuid.uuid4().hex}",
        source="goapi",
        provider="goapi",
        task_id=task,
        dedupe_key=task,
        model="flux",
        prompt=prompt,
        status="succeeded",
        provider_status="completed",
        final=True,
        outputs=[Output(kind="image", url=f"https://cdn.example/{task}.png")],
        received_at=now,
    )


async def preload(db: str, n: int, tag: str) -> None:
    store = open_store(db)
    await store.open()
    try:
        now = datetime.now(UTC)
        for i in range(n):
            new = event(f"{tag}-{i:06d}", now)
            await store.ingest(new, [NewDelivery(f"dlv_{uuid.uuid4().hex}", "down", 0)])
    finally:
        await store.close()


async def delivered(db: str) -> int:
    store = open_store(db)
    await store.open()
    try:
        return len(await store.list_deliveries("delivered", limit=10**7))
    finally:
        await store.close()


async def measure(
    name: str, db: str, workers: int, rules: Path, receiver: Receiver, args: argparse.Namespace
) -> float:
    await preload(db, args.deliveries, f"{name}-{time.time_ns()}")
    receiver.ids.clear()
    env = {
        **os.environ,
        "DOWN_URL": f"http://127.0.0.1:{receiver.port}/hook",
        "DOWN_SECRET": WHSEC,
        "RELAY_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "relay", "worker", "--rules", str(rules), "--db", db]
    # Timed from the first delivery to the last, so the workers' start-up is not counted.
    procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]  # noqa: ASYNC220
    try:
        async with asyncio.timeout(args.seconds):
            while len(receiver.ids) < args.deliveries:
                receiver.changed.clear()
                await receiver.changed.wait()
        elapsed = time.perf_counter() - receiver.first
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    done = await delivered(db)
    if done != args.deliveries:
        raise SystemExit(f"{name}: the database shows {done} of {args.deliveries} delivered")
    return (args.deliveries - 1) / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--deliveries", type=int, default=4000, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=120.0, help="cap per measurement")
    ap.add_argument("--postgres", help="server URL whose role may create databases")
    args = ap.parse_args()

    receiver = Receiver()
    await receiver.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, postgres_server(args.postgres) as server:
            rules = Path(tmp) / "rules"
            rules.mkdir()
            (rules / "bench.yaml").write_text(RULES)
            setups = {
                "SQLite, 1 worker": (lambda n: f"sqlite:///{tmp}/bench-{n}.db", 1),
                "PostgreSQL, 1 worker": (lambda n: new_database(server), 1),
                "PostgreSQL, 2 workers": (lambda n: new_database(server), 2),
            }
            # Rows take turns round after round, so a shared machine's drift hits all alike.
            rates: dict[str, list[float]] = {name: [] for name in setups}
            for n in range(args.rounds):
                for name, (db_for, workers) in setups.items():
                    db = db_for(f"{n}-{workers}")
                    rates[name].append(await measure(name, db, workers, rules, receiver, args))
    finally:
        await receiver.stop()

    base = statistics.median(rates["SQLite, 1 worker"])
    one_pg = statistics.median(rates["PostgreSQL, 1 worker"])
    print(f"\n{args.deliveries} webhook deliveries per measurement, median of {args.rounds}\n")
    print("| setup | deliveries/s | vs SQLite, 1 worker | vs PostgreSQL, 1 worker | rounds |")
    print("|---|---|---|---|---|")
    for name, values in rates.items():
        mid = statistics.median(values)
        each = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {mid:,.0f} | {mid / base:.2f}x | {mid / one_pg:.2f}x | {each} |")


if __name__ == "__main__":
    asyncio.run(main())
