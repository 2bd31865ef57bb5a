"""Backlog benchmark: a `relay worker` drains a large backlog of due webhook deliveries while
its memory is sampled, to show that memory stays flat however long the queue (issue 14: a
100,000-delivery backlog drains with flat memory, under 100 MB per process).

    python benchmarks/backlog.py [--deliveries 100000] [--seconds 900] [--db URL]

A fresh SQLite file (``synchronous=FULL``, the default; or ``--db``) is loaded with
``--deliveries`` due deliveries through the store (callbacks ingested side by side, so they are
group-committed) before the worker starts; the worker (benchmarks/delivery.py's rules: one
signed webhook destination, a local aiohttp receiver in this process answering 200 at once)
then drains it. Every 0.5 s the worker's VmRSS (/proc) and the count of distinct delivery ids
that arrived are sampled. The report gives the drain rate, the RSS once the first delivery has
arrived, at each quarter of the backlog, and its peak, and the growth over the second half of
the drain (MB per 10,000 deliveries: about 0 when memory is flat). The database is checked to
show every delivery delivered. Bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from delivery import RULES, WHSEC, Receiver, delivered, event  # noqa: E402

from relay.store import open_store  # noqa: E402
from relay.store.base import NewDelivery  # noqa: E402

SAMPLE_EVERY = 0.5
# Ingests in flight while loading: the store group-commits them (one fsync per batch).
LOAD_IN_FLIGHT = 500


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


PROMPT = "a lighthouse at dusk, volumetric light, 35 mm, " * 4


async def load(db: str, n: int) -> float:
    """Ingest ``n`` events with one delivery each; returns the seconds it took."""
    store = open_store(db)
    await store.open()
    started = time.perf_counter()
    try:
        now = datetime.now(UTC)
        for first in range(0, n, LOAD_IN_FLIGHT):
            await asyncio.gather(
                *(
                    store.ingest(
                        event(f"backlog-{i:07d}", now, PROMPT),
                        [NewDelivery(f"dlv_{uuid.uuid4().hex}", "down", 0)],
                    )
                    for i in range(first, min(n, first + LOAD_IN_FLIGHT))
                )
            )
    finally:
        await store.close()
    return time.perf_counter() - started


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--deliveries", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=900.0, help="cap on the drain")
    ap.add_argument("--db", help="a database URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    n = args.deliveries
    with tempfile.TemporaryDirectory(prefix="relay-backlog-") as tmp:
        db = args.db or f"sqlite:///{tmp}/relay.db"
        rules = Path(tmp) / "rules"
        rules.mkdir()
        (rules / "bench.yaml").write_text(RULES)
        print(f"loading {n:,} deliveries into {db} ...", file=sys.stderr)
        loaded = await load(db, n)
        print(f"loaded in {loaded:.1f} s", file=sys.stderr)
        receiver = Receiver()
        await receiver.start()
        env = {
            **os.environ,
            "DOWN_URL": f"http://127.0.0.1:{receiver.port}/hook",
            "DOWN_SECRET": WHSEC,
            "RELAY_LOG_LEVEL": "warning",
        }
        cmd = [sys.executable, "-m", "relay", "worker", "--rules", str(rules), "--db", db]
        proc = subprocess.Popen(cmd, env=env)  # noqa: ASYNC220
        samples: list[tuple[float, int, float]] = []  # (time, arrived, RSS MB)
        try:
            deadline = time.monotonic() + args.seconds
            while len(receiver.ids) < n and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"the worker exited with {proc.returncode}")
                samples.append((time.perf_counter(), len(receiver.ids), rss_mb(proc.pid)))
                await asyncio.sleep(SAMPLE_EVERY)
            samples.append((time.perf_counter(), len(receiver.ids), rss_mb(proc.pid)))
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
            await receiver.stop()
        arrived = len(receiver.ids)
        done = await delivered(db)
    report(n, arrived, done, receiver.first, samples, loaded)


def report(
    n: int,
    arrived: int,
    done: int,
    first: float,
    samples: list[tuple[float, int, float]],
    loaded: float,
) -> None:
    draining = [s for s in samples if s[1] > 0]
    if not draining:
        raise SystemExit("nothing was delivered")
    end = draining[-1][0]
    rate = (arrived - 1) / (end - first) if end > first else 0.0

    def at(share: float) -> float:
        return next((rss for _, count, rss in draining if count >= share * n), draining[-1][2])

    half = [s for s in draining if s[1] >= n / 2]
    growth = 0.0
    if len(half) >= 2 and half[-1][1] > half[0][1]:
        growth = (half[-1][2] - half[0][2]) / (half[-1][1] - half[0][1]) * 10_000
    print(f"{n:,} due webhook deliveries (loaded in {loaded:.0f} s), one `relay worker`, SQLite")
    print()
    print(
        "| drained | deliveries/s | RSS MB: first delivery / 25 % / 50 % / 75 % / 100 % "
        "| peak RSS MB | growth, 2nd half (MB per 10k) |"
    )
    print("|---|---|---|---|---|")
    quarters = " / ".join(f"{at(q):.0f}" for q in (0.0, 0.25, 0.5, 0.75, 1.0))
    peak = max(rss for _, _, rss in draining)
    print(f"| {arrived:,} of {n:,} | {rate:,.0f} | {quarters} | {peak:.0f} | {growth:+.2f} |")
    if done != n or arrived != n:
        raise SystemExit(f"incomplete: {arrived:,} arrived, the database shows {done:,} delivered")


if __name__ == "__main__":
    asyncio.run(main())
