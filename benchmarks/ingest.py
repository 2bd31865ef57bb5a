"""Ingest benchmark: accepted callbacks per second and acknowledge latency of `relay serve`,
next to a bare Starlette endpoint measured in the same run.

    python benchmarks/ingest.py [--requests 5000] [--concurrency 32] [--seconds 30]

Both servers run as subprocesses on 127.0.0.1 and get the same load: GoAPI callbacks with
distinct task ids, posted by an aiohttp client with a fixed number of requests in flight.
relay runs on a fresh SQLite file, receive-only (RELAY_DISPATCH=0): with synchronous=FULL (the
default) every 200 means the event and its delivery row were committed and fsynced; with
NORMAL they survive a crash of relay but not of the machine. With PostgreSQL installed (or
--postgres URL) relay on a fresh PostgreSQL database (fsync on) is measured too. Bounded in
requests and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from pg_server import new_database, postgres_server  # noqa: E402

from tests.pg import find_bin_dir  # noqa: E402

FIXTURE = HERE.parent / "tests" / "fixtures" / "providers" / "goapi" / "image_success_flux.json"
SECRET = "bench-secret"
RULES = """
sources:
  goapi:
    provider: goapi
    secret: bench-secret
destinations:
  down:
    type: webhook
    url: http://127.0.0.1:9/unused
routes:
  - to: [down]
"""


@dataclass
class Result:
    name: str
    ok: int
    errors: int
    seconds: float
    latencies: list[float]
    warm: int = 0
    cpu_seconds: float = 0.0  # the server process's, all threads, warm-up included

    @property
    def cpu_us(self) -> float:
        """Server CPU per request: steadier than throughput on a machine shared with others."""
        return self.cpu_seconds / max(1, self.ok + self.warm) * 1e6

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        return (
            f"| {self.name} | {self.rate:,.0f} | {self.pct(0.5):.1f} | {self.pct(0.99):.1f} "
            f"| {self.errors} | {self.cpu_us:,.0f} |"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.returncode}")
            try:
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


async def load(
    name: str, url: str, requests: int, concurrency: int, seconds: float, tag: str = ""
) -> Result:
    template = json.loads(FIXTURE.read_text())
    headers = {"content-type": "application/json", "x-webhook-secret": SECRET}
    bodies = []
    for i in range(requests):
        body = {**template, "timestamp": int(time.time()), "data": {**template["data"]}}
        body["data"]["task_id"] = f"bench-{tag}-{i:07d}-{os.getpid()}"
        bodies.append(json.dumps(body).encode())
    latencies: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + seconds

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal next_index, errors
        while next_index < len(bodies) and time.perf_counter() < deadline:
            body = bodies[next_index]
            next_index += 1
            t0 = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        # Warm up connections and code paths; not counted.
        warm = bodies[: min(200, len(bodies) // 10)]
        next_index = len(warm)
        for body in warm:
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Result(name, len(latencies), errors, elapsed, latencies, warm=len(warm))


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command(db: str | None, port: int, rules: Path) -> tuple[list[str], dict[str, str]]:
    if db is None:
        return [sys.executable, str(HERE / "bare_app.py"), str(port)], dict(os.environ)
    cmd = [sys.executable, "-m", "relay", "serve", "--rules", str(rules), "--db", db]
    env = {**os.environ, "RELAY_DISPATCH": "0", "RELAY_LOG_LEVEL": "warning"}
    return [*cmd, "--port", str(port)], env


async def measure(
    name: str, db: str | None, rules: Path, args: argparse.Namespace, tag: str
) -> Result:
    port = free_port()
    cmd, env = command(db, port, rules)
    # Started once per measurement, before any load: blocking here costs nothing measured.
    proc = subprocess.Popen(cmd, env=env)  # noqa: ASYNC220
    try:
        url = f"http://127.0.0.1:{port}/hooks/goapi"
        await wait_up(url, proc)
        before = process_cpu(proc.pid)
        result = await load(name, url, args.requests, args.concurrency, args.seconds, tag)
        result.cpu_seconds = process_cpu(proc.pid) - before
        return result
    finally:
        proc.terminate()
        proc.wait(10)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000, help="per server and round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0, help="cap per server and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--postgres",
        help="PostgreSQL server URL (a role that may create databases); default: start a "
        "throwaway durable cluster if PostgreSQL is installed, else leave PostgreSQL out",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        rules = Path(tmp) / "rules"
        rules.mkdir()
        (rules / "bench.yaml").write_text(RULES)
        servers = {
            "bare": None,
            "relay": f"sqlite:///{tmp}/full.db",
            "relay, synchronous=NORMAL": f"sqlite:///{tmp}/normal.db?synchronous=NORMAL",
        }
        if args.postgres or find_bin_dir() is not None:
            server = stack.enter_context(postgres_server(args.postgres))
            servers["relay, PostgreSQL"] = new_database(server)
        # Servers take turns, round after round, so drift in a shared machine's load hits
        # every one alike; the table reports each one's median round.
        rounds: dict[str, list[Result]] = {name: [] for name in servers}
        for n in range(args.rounds):
            for name, db in servers.items():
                rounds[name].append(await measure(name, db, rules, args, f"r{n}"))
        print(
            f"\n{args.concurrency} requests in flight, {args.rounds} rounds of up to "
            f"{args.requests} requests per server; median round\n"
        )
        print(
            "| server | accepted/s | p50 ms | p99 ms | errors | server CPU µs/request "
            "| throughput vs bare | CPU vs bare | per-round throughput vs bare |"
        )
        print("|---|---|---|---|---|---|---|---|---|")

        def median(results: list[Result]) -> Result:
            return sorted(results, key=lambda r: r.rate)[len(results) // 2]

        bare = median(rounds["bare"])
        bare_cpu = statistics.median(r.cpu_us for r in rounds["bare"])
        for results in rounds.values():
            mid = median(results)
            cpu = statistics.median(r.cpu_us for r in results)
            per_round = ", ".join(
                f"{r.rate / b.rate:.2f}" for r, b in zip(results, rounds["bare"], strict=True)
            )
            print(
                f"{mid.row()} {mid.rate / bare.rate:.2f}x | {bare_cpu / cpu:.2f}x | {per_round} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
