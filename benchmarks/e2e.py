"""End-to-end benchmark: callbacks in, webhook deliveries out, `relay serve` against Prometheus
Alertmanager on the same machine in the same run (issue 14).

    python benchmarks/e2e.py [--events 5000] [--concurrency 32] [--rounds 3] [--seconds 60]
        [--only alertmanager,relay,one-process,no-dispatch,refusing,bare]
        [--relay-arg=--some-flag ...] [--relay-env KEY=VAL ...] [--json results.json]
        [--client raw|aiohttp] [--workdir DIR]

Setups (each one a fresh server process per round, on 127.0.0.1):

- ``alertmanager``: the Debian package's binary (``prometheus-alertmanager``, 0.25; installed
  with apt-get when missing), loopback only, clustering off (``--cluster.listen-address=``),
  its own temporary ``--storage.path``, one route to a webhook receiver with
  ``group_by: [task_id]``, ``group_wait: 0s`` and ``group_interval``/``repeat_interval`` far
  beyond the run, ``send_resolved: false``: each alert is notified exactly once, as soon as it
  arrives. Each event is one alert POSTed alone to ``/api/v2/alerts`` (a JSON list of one
  alert: labels alertname, provider, task_id unique per event, status, model, task_type;
  annotations with the prompt, output URL, input, meta, config and error of the GoAPI
  callback, so the body is about as large as the callback; both sizes are printed).
- ``relay``: ``python -m relay serve`` with its defaults (SQLite file in a temporary directory,
  ``synchronous=FULL``, a receiving process and one worker process it starts to deliver) and
  the equivalent rule: a goapi
  source, one webhook destination (the receiver, no signing secret, as Alertmanager's webhook
  is unsigned) and one route. Each event is one GoAPI callback
  (tests/fixtures/providers/goapi/image_success_flux.json with a fresh task id and timestamp,
  header ``x-webhook-secret``).
- ``one-process``: the same with ``--workers 0`` (receiver and dispatcher on one event loop).
- ``no-dispatch``: the same with ``--no-dispatch`` (ingest only).
- ``refusing``: the same as ``relay`` but the destination is a closed port of 127.0.0.1, so every
  send is refused and retried later (ingest while the dispatcher fails and its breaker opens).
- ``bare``: benchmarks/bare_app.py, a Starlette endpoint that only parses the body (as in
  benchmarks/ingest.py).

``--relay-arg`` (repeatable, written ``--relay-arg=--flag=value``) adds arguments to every
``relay serve`` command line, ``--relay-env KEY=VAL`` (repeatable) sets environment variables of
every relay process, so variants can be compared (e.g. ``--relay-arg=--workers=2``).

How one measurement goes: the server starts; warm-up events (a tenth of ``--events``, at most
200, with the same concurrency, so every connection of the pool is open) are sent and, for the
delivering setups, waited for at the receiver (bounded); then the server's CPU time is read
and ``--events`` events are sent with ``--concurrency`` requests in flight, each with a fresh
task id, by one of two clients: ``raw`` (the default), a minimal HTTP/1.1 keep-alive client on
asyncio streams (one connection per request in flight, requests prepared as bytes before the
clock starts), about 90 µs of CPU per request; or ``aiohttp``, benchmarks/ingest.py's client,
about 250 µs. On a 2-core machine the load generator shares the cores with the server and the
receiver, so the cheaper client leaves more of them to the server (the issue's figures were
taken with wrk, cheaper still). The receiver (benchmarks/e2e_receiver.py, aiohttp in its own
process, answering 200 at once) counts distinct task ids per setup (Alertmanager's webhook
message carries the alert's ``task_id`` label, relay's envelope ``data.task_id``), so delivered
means arrived at the receiver. A measurement ends when every accepted event has arrived (the
delivering setups, plus 0.2 s for the servers to record the outcomes) or every response is in
(the others), or after ``--seconds``, in which case the round reports what it got and is marked
incomplete. Progress goes to stderr, the report to stdout; ``--workdir`` keeps every server's
files and log (one folder per setup and round) for a look afterwards.

Figures per round:

- delivered/s: delivered events / (last arrival at the receiver - first send); the times are
  CLOCK_MONOTONIC, one clock for all processes;
- accepted/s: events answered 200 / (last answer - first send);
- server CPU per event: user + system time of the server process and all its descendants
  (/proc/PID/stat, children reaped meanwhile included), over the measurement, divided by the
  events delivered (delivering setups) or accepted (the others);
- p50/p99 of the acknowledgement latency (send to response, 200s only);
- peak RSS: VmRSS from /proc/PID/status of the server and its descendants, sampled every 0.2 s
  during the measurement: the largest single process, and the largest sum;
- server cores (CPU seconds / wall seconds), and the CPU the receiver and this load generator
  spent per event, to show what limits each side: on a 2-core machine all four share the cores.

The setups take turns round after round (each round in a rotated order), so drift of a shared
machine's speed hits all alike. The table shows each setup's median round (by its delivered/s,
or accepted/s for the ingest-only setups), its CPU per event the median over the rounds; the
ratios are those of the medians, with the per-round ratios (same round) beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

HERE = Path(__file__).parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import alertmanager  # noqa: E402
from ingest import FIXTURE, SECRET, free_port, process_cpu, wait_up  # noqa: E402
from ingest import command as ingest_command  # noqa: E402

SETUPS = ("alertmanager", "relay", "one-process", "no-dispatch", "refusing", "bare")
DELIVERING = ("alertmanager", "relay", "one-process")
RELAY_SETUPS = ("relay", "one-process", "no-dispatch", "refusing")
RULES = """\
sources:
  goapi:
    provider: goapi
    secret: bench-secret
destinations:
  receiver:
    type: webhook
    url: ${E2E_TARGET_URL}
routes:
  - to: [receiver]
"""
SETTLE = 0.2  # after the last arrival: the servers record the outcomes of their last sends
SAMPLE_EVERY = 0.2
START_TIMEOUT = 30.0
WARM_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


# --- /proc -------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it (a scan of /proc: this kernel has no
    /proc/PID/task/TID/children)."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children[int(_stat_fields(int(entry))[1])].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu(root: int) -> float:
    """User + system CPU seconds of ``root`` and its descendants, including the children each
    has reaped (cutime, cstime)."""
    total = 0.0
    for pid in descendants(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(pid)
            reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
            total += process_cpu(pid) + reaped
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Peak:
    largest: float = 0.0  # MB, the largest single process seen
    total: float = 0.0  # MB, the largest sum over the tree seen
    processes: int = 0

    def sample(self, root: int) -> None:
        sizes = []
        for pid in descendants(root):
            with contextlib.suppress(OSError, ValueError, IndexError):
                sizes.append(rss_mb(pid))
        if sizes:
            self.largest = max(self.largest, max(sizes))
            self.total = max(self.total, sum(sizes))
            self.processes = max(self.processes, len(sizes))


async def sample_rss(root: int, peak: Peak, stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak.sample(root)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


# --- load ----------------------------------------------------------------------------------


@dataclass
class Sent:
    start: float = 0.0  # time.monotonic() of the first send
    last_ack: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)  # the first few error reasons
    timed_out: bool = False

    def error(self, reason: str) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(reason)


class Client(Protocol):
    async def post(self, worker: int, body: bytes) -> int:
        """POST ``body`` on ``worker``'s connection; the response's status."""
        ...

    async def close(self) -> None: ...


class AiohttpClient:
    """The client of benchmarks/ingest.py: one aiohttp session, a pool of ``concurrency``
    connections."""

    def __init__(self, url: str, headers: dict[str, str], concurrency: int) -> None:
        self.url, self.headers = url, headers
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def post(self, worker: int, body: bytes) -> int:
        async with self.http.post(self.url, data=body, headers=self.headers) as r:
            await r.read()
            return r.status

    async def close(self) -> None:
        await self.http.close()


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (one connection per worker,
    requests written as prepared bytes, responses read by Content-Length or chunks): about a
    third of aiohttp's CPU per request, so that on a small machine the load generator takes less of
    the servers' cores."""

    def __init__(self, url: str, headers: dict[str, str], concurrency: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.head = ("\r\n".join(lines) + "\r\n").encode()
        self.conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def post(self, worker: int, body: bytes) -> int:
        conn = self.conns.get(worker)
        if conn is None:
            conn = self.conns[worker] = await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        try:
            writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body))
            status, keep = await self._response(reader)
        except BaseException:
            self._drop(worker)
            raise
        if not keep:
            self._drop(worker)
        return status

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
        block = await reader.readuntil(b"\r\n\r\n")
        status = int(block[9:12])
        head = block.lower()
        keep = b"\r\nconnection: close" not in head
        length = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if length is not None:
            await reader.readexactly(int(length[1]))
        elif b"\r\ntransfer-encoding: chunked" in head:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                await reader.readexactly(size + 2)
        elif status not in (204, 304):
            await reader.read()  # no length: the body ends with the connection
            keep = False
        return status, keep

    def _drop(self, worker: int) -> None:
        conn = self.conns.pop(worker, None)
        if conn is not None:
            conn[1].close()

    async def close(self) -> None:
        for worker in list(self.conns):
            self._drop(worker)


CLIENTS: dict[str, Callable[[str, dict[str, str], int], Client]] = {
    "aiohttp": AiohttpClient,
    "raw": RawClient,
}


async def send(client: Client, bodies: list[bytes], concurrency: int, seconds: float) -> Sent:
    """``bodies`` POSTed with ``concurrency`` in flight, within ``seconds``: the load loop of
    benchmarks/ingest.py, for bodies made by the caller (ingest's builds GoAPI callbacks
    itself), with the first send's time on the machine-wide monotonic clock, and any client."""
    sent = Sent()
    next_index = 0

    async def worker(n: int) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            t0 = time.monotonic()
            try:
                status = await client.post(n, body)
            except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                sent.error(repr(exc))
                continue
            if status == 200:
                sent.last_ack = time.monotonic()
                sent.latencies.append(sent.last_ack - t0)
            else:
                sent.error(f"HTTP {status}")

    sent.start = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(worker(n) for n in range(concurrency)))
    except TimeoutError:
        sent.timed_out = True
    return sent


def goapi_bodies(tags: list[str]) -> list[bytes]:
    template = json.loads(FIXTURE.read_text())
    bodies = []
    for tag in tags:
        body = {**template, "timestamp": int(time.time()), "data": {**template["data"]}}
        body["data"]["task_id"] = tag
        bodies.append(json.dumps(body).encode())
    return bodies


def alert_bodies(tags: list[str]) -> list[bytes]:
    template = json.loads(FIXTURE.read_text())
    return [json.dumps(alertmanager.alert(template, tag)).encode() for tag in tags]


# --- the receiver ----------------------------------------------------------------------------


class Receiver:
    """benchmarks/e2e_receiver.py as a subprocess, and this side's calls to it."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "receiver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None

    def hook(self, target: str) -> str:
        return f"{self.url}/hook/{target}"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (before any load)
                [sys.executable, str(HERE / "e2e_receiver.py"), str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await up(f"{self.url}/health", self.proc, self.log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def reset(self, target: str, prefix: str) -> None:
        assert self.http is not None
        async with self.http.post(f"{self.url}/reset/{target}", params={"prefix": prefix}) as r:
            r.raise_for_status()

    async def stats(self, target: str) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.get(f"{self.url}/stats/{target}") as r:
            r.raise_for_status()
            result: dict[str, Any] = await r.json()
            return result

    async def wait(self, target: str, count: int, seconds: float) -> dict[str, Any]:
        """The target's stats once it has ``count`` task ids, or when ``seconds`` are over."""
        deadline = time.monotonic() + seconds
        while True:
            stats = await self.stats(target)
            if stats["count"] >= count or time.monotonic() >= deadline:
                return stats
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            await stop(self.proc)


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    cmd: list[str]
    env: dict[str, str]
    post_url: str
    ready_url: str
    headers: dict[str, str]
    bodies: Callable[[list[str]], list[bytes]]
    target: str | None  # the receiver's target name, for the delivering setups


def server(setup: str, home: Path, receiver: Receiver, args: argparse.Namespace) -> Server:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    goapi = {"content-type": "application/json", "x-webhook-secret": SECRET}
    if setup == "alertmanager":
        cmd = alertmanager.command(args.alertmanager, port, home, receiver.hook(setup))
        return Server(
            cmd,
            dict(os.environ),
            f"{base}/api/v2/alerts",
            f"{base}/-/ready",
            {"content-type": "application/json"},
            alert_bodies,
            setup,
        )
    if setup == "bare":
        cmd, env = ingest_command(None, port, home)
        return Server(
            cmd, env, f"{base}/hooks/goapi", f"{base}/hooks/goapi", goapi, goapi_bodies, None
        )
    rules = home / "rules"
    rules.mkdir()
    (rules / "e2e.yaml").write_text(RULES)
    delivering = setup in DELIVERING
    target_url = receiver.hook(setup) if delivering else f"http://127.0.0.1:{free_port()}/x"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "RELAY_LOG_LEVEL": "warning",
        "E2E_TARGET_URL": target_url,
        **dict(kv.split("=", 1) for kv in args.relay_env),
    }
    cmd = [sys.executable, "-m", "relay", "serve", "--rules", str(rules)]
    cmd += ["--db", f"sqlite:///{home}/relay.db", "--port", str(port)]
    if setup == "no-dispatch":
        cmd.append("--no-dispatch")
    if setup == "one-process":
        cmd += ["--workers", "0"]
    cmd += args.relay_arg
    return Server(
        cmd,
        env,
        f"{base}/hooks/goapi",
        f"{base}/readyz",
        goapi,
        goapi_bodies,
        setup if delivering else None,
    )


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


async def up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        async with asyncio.timeout(START_TIMEOUT):
            await wait_up(url, proc)
    except (SystemExit, TimeoutError):
        await stop(proc)
        raise SystemExit(f"{url} did not come up; its log ends:\n{tail(log)}") from None


async def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """SIGTERM (or ``sig``), a bounded wait, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)


def profiler(
    pid: int, home: Path, spec: Server, args: argparse.Namespace
) -> list[subprocess.Popen[bytes]]:
    """``--profile``: one py-spy per relay process (the server and each worker it started)
    sampling it during the measurement, its collapsed stacks written to
    ``profile-<pid>.txt`` beside the server's log (the first line of each stack names the
    process)."""
    if not args.profile or spec.cmd[1:3] != ["-m", "relay"]:
        return []
    spies = []
    with (home / "py-spy.log").open("ab") as out:
        for each in descendants(pid):
            command = ["py-spy", "record", "--pid", str(each), "--rate", "250", "--format"]
            command += ["raw", "--output", str(home / f"profile-{each}.txt"), "--nonblocking"]
            spies.append(
                subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            )
    return spies


# --- one measurement -------------------------------------------------------------------------


@dataclass
class Round:
    setup: str
    round: int
    events: int
    accepted: int = 0
    errors: int = 0
    delivered: int | None = None  # None: an ingest-only setup
    duplicates: int = 0
    send_seconds: float = 0.0  # first send to last 200
    deliver_seconds: float = 0.0  # first send to last arrival
    wall_seconds: float = 0.0  # the whole measurement, CPU readings to CPU readings
    cpu_seconds: float = 0.0
    receiver_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_largest_mb: float = 0.0
    rss_total_mb: float = 0.0
    processes: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.send_seconds if self.send_seconds > 0 else 0.0

    @property
    def delivered_rate(self) -> float:
        if not self.delivered or self.deliver_seconds <= 0:
            return 0.0
        return self.delivered / self.deliver_seconds

    @property
    def rate(self) -> float:
        """The setup's own figure: delivered/s when it delivers, else accepted/s."""
        return self.delivered_rate if self.delivered is not None else self.accepted_rate

    @property
    def counted(self) -> int:
        return self.delivered if self.delivered is not None else self.accepted

    def per_event_us(self, seconds: float) -> float:
        return seconds / max(1, self.counted) * 1e6

    @property
    def cpu_us(self) -> float:
        return self.per_event_us(self.cpu_seconds)

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(
    setup: str, n: int, run: str, tmp: Path, receiver: Receiver, args: argparse.Namespace
) -> Round:
    home = tmp / f"{setup}-r{n}"
    home.mkdir()
    spec = server(setup, home, receiver, args)
    result = Round(setup, n, args.events)
    log = home / "server.log"
    with log.open("ab") as out:
        # Started before any load: blocking here costs nothing measured.
        proc = subprocess.Popen(  # noqa: ASYNC220
            spec.cmd,
            env=spec.env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    await up(spec.ready_url, proc, log)
    stats: dict[str, Any] = {}
    client = CLIENTS[args.client](spec.post_url, spec.headers, args.concurrency)
    try:
        try:
            prefix = f"e2e{run}-{setup}-r{n}"
            warm_count = min(200, max(args.concurrency, args.events // 10))
            warm = spec.bodies([f"{prefix}-warm-{i:06d}" for i in range(warm_count)])
            main = spec.bodies([f"{prefix}-main-{i:07d}" for i in range(args.events)])
            if spec.target:
                await receiver.reset(spec.target, f"{prefix}-warm-")
            warmed = await send(client, warm, args.concurrency, WARM_TIMEOUT)
            if warmed.errors:
                result.notes.append(f"warm-up: {warmed.errors} errors {warmed.samples}")
            if spec.target:
                stats = await receiver.wait(spec.target, len(warmed.latencies), WARM_TIMEOUT)
                if stats["count"] < len(warmed.latencies):
                    result.notes.append(
                        f"warm-up: {stats['count']} of {len(warmed.latencies)} delivered "
                        f"within {WARM_TIMEOUT:.0f} s"
                    )
                await receiver.reset(spec.target, f"{prefix}-main-")

            peak, stop_sampling = Peak(), asyncio.Event()
            sampler = asyncio.create_task(sample_rss(proc.pid, peak, stop_sampling))
            spies = profiler(proc.pid, home, spec, args)
            t0 = time.monotonic()
            cpu0, rcpu0, ccpu0 = tree_cpu(proc.pid), tree_cpu(receiver.pid), time.process_time()
            sent = await send(client, main, args.concurrency, args.seconds)
            if spec.target:
                left = max(0.0, t0 + args.seconds - time.monotonic())
                stats = await receiver.wait(spec.target, len(sent.latencies), left)
                await asyncio.sleep(SETTLE)
            cpu1, rcpu1, ccpu1 = tree_cpu(proc.pid), tree_cpu(receiver.pid), time.process_time()
            t1 = time.monotonic()
            stop_sampling.set()
            await sampler
            for spy in spies:
                await stop(spy, signal.SIGINT)
            if spies:
                result.notes.append(f"profiles: {home}/profile-*.txt")
        finally:
            await client.close()
    finally:
        await stop(proc)
    if proc.returncode not in (0, -signal.SIGTERM):
        result.notes.append(f"exit code {proc.returncode}; log: {tail(log, 5)}")

    result.accepted = len(sent.latencies)
    result.errors = sent.errors
    if sent.errors:
        result.notes.append(f"{sent.errors} errors, e.g. {sent.samples}")
    result.send_seconds = sent.last_ack - sent.start if sent.latencies else 0.0
    result.wall_seconds = t1 - t0
    result.cpu_seconds = cpu1 - cpu0
    result.receiver_cpu_seconds = rcpu1 - rcpu0
    result.client_cpu_seconds = ccpu1 - ccpu0
    result.p50_ms = percentile(sent.latencies, 0.5)
    result.p99_ms = percentile(sent.latencies, 0.99)
    result.rss_largest_mb, result.rss_total_mb = peak.largest, peak.total
    result.processes = peak.processes
    if sent.timed_out:
        result.complete = False
        result.notes.append(f"sending not done within {args.seconds:.0f} s")
    if spec.target:
        result.delivered = stats["count"]
        result.duplicates = stats["duplicates"]
        result.deliver_seconds = stats["last"] - sent.start if stats["count"] else 0.0
        if stats["count"] < result.accepted:
            result.complete = False
            result.notes.append(
                f"{stats['count']} of {result.accepted} accepted delivered "
                f"within {args.seconds:.0f} s"
            )
        if stats["duplicates"]:
            result.notes.append(f"{stats['duplicates']} duplicate deliveries")
    return result


# --- the report ------------------------------------------------------------------------------


def median_round(results: list[Round]) -> Round:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(rounds: dict[str, list[Round]], args: argparse.Namespace, header: list[str]) -> None:
    print()
    for line in header:
        print(line)
    print()
    print(
        "| setup | delivered/s | accepted/s | server CPU µs/event | p50 ms | p99 ms "
        "| peak RSS MB (largest process / all) | server cores | errors | complete rounds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    cpu = {name: statistics.median(r.cpu_us for r in results) for name, results in rounds.items()}
    for name, results in rounds.items():
        mid = median_round(results)
        delivered = mid.delivered_rate if mid.delivered is not None else None
        complete = sum(r.complete for r in results)
        print(
            f"| {LABELS[name]} | {fmt_rate(delivered)} | {mid.accepted_rate:,.0f} "
            f"| {cpu[name]:,.0f} | {mid.p50_ms:.1f} | {mid.p99_ms:.1f} "
            f"| {mid.rss_largest_mb:.0f} / {mid.rss_total_mb:.0f} | {mid.cores:.2f} "
            f"| {sum(r.errors for r in results)} | {complete}/{len(results)} |"
        )

    print("\nRatios (of the medians; per round in brackets):\n")
    ratios: list[tuple[str, str, str, Callable[[Round], float], str, float, bool]] = [
        ("relay delivered/s vs Alertmanager", "relay", "alertmanager",
         lambda r: r.delivered_rate, "aim >= 1.5x", 1.5, True),
        ("relay server CPU per event vs Alertmanager", "relay", "alertmanager",
         lambda r: r.cpu_us, "aim <= 1x", 1.0, False),
        ("relay delivered/s, receiver and worker vs one process", "relay", "one-process",
         lambda r: r.delivered_rate, "(no aim)", 0.0, True),
        ("relay --no-dispatch accepted/s vs bare Starlette", "no-dispatch", "bare",
         lambda r: r.accepted_rate, "aim >= 0.6x", 0.6, True),
        ("relay accepted/s, destination refusing vs healthy", "refusing", "relay",
         lambda r: r.accepted_rate, "aim >= 0.9x", 0.9, True),
    ]  # fmt: skip
    pairs = [ratio for ratio in ratios if ratio[1] in rounds and ratio[2] in rounds]
    if not pairs:
        print("- none: --only left out one setup of every ratio")
    for title, a, b, figure, aim, bound, higher in pairs:
        mid_a = statistics.median(figure(r) for r in rounds[a])
        mid_b = statistics.median(figure(r) for r in rounds[b])
        ratio = mid_a / mid_b if mid_b else float("inf")
        each = ", ".join(
            f"{figure(x) / figure(y):.2f}" if figure(y) else "-"
            for x, y in zip(rounds[a], rounds[b], strict=True)
        )
        met = ratio >= bound if higher else ratio <= bound
        verdict = "met" if met else "**not met**"
        print(f"- {title}: **{ratio:.2f}x** ({each}); {aim}: {verdict}")

    print("\nEach round:\n")
    print(
        "| round | setup | accepted | delivered | errors | accepted/s | delivered/s "
        "| server CPU µs/event | server cores | p50 ms | p99 ms | peak RSS MB | processes "
        "| receiver CPU µs/event | load generator CPU µs/event | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in range(args.rounds):
        for name, results in rounds.items():
            r = results[n]
            got = "-" if r.delivered is None else str(r.delivered)
            print(
                f"| {n + 1} | {LABELS[name]} | {r.accepted} | {got} | {r.errors} "
                f"| {r.accepted_rate:,.0f} "
                f"| {fmt_rate(r.delivered_rate if r.delivered is not None else None)} "
                f"| {r.cpu_us:,.0f} | {r.cores:.2f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
                f"| {r.rss_largest_mb:.0f} / {r.rss_total_mb:.0f} | {r.processes} "
                f"| {r.per_event_us(r.receiver_cpu_seconds):,.0f} "
                f"| {r.per_event_us(r.client_cpu_seconds):,.0f} | {'; '.join(r.notes)} |"
            )


LABELS = {
    "alertmanager": "Alertmanager (webhook receiver, `group_by: [task_id]`, `group_wait: 0s`)",
    "relay": "`relay serve` (defaults: SQLite FULL, a receiver and one worker process)",
    "one-process": "`relay serve --workers 0` (receiver and dispatcher in one process)",
    "no-dispatch": "`relay serve --no-dispatch` (ingest only)",
    "refusing": "`relay serve`, destination refusing connections",
    "bare": "bare Starlette endpoint (parses the body)",
}


def git_revision() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "relay"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    return done.stdout.strip() + (" (relay/ modified)" if dirty.stdout.strip() else "")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=5000, help="per setup and round")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--seconds", type=float, default=60.0, help="cap per measurement (sending + delivery)"
    )
    ap.add_argument(
        "--only", default=",".join(SETUPS), help=f"comma-separated subset of {', '.join(SETUPS)}"
    )
    ap.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `relay serve` argument, e.g. --relay-arg=--workers=2 (repeatable)",
    )
    ap.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="KEY=VAL",
        help="extra environment variable of the relay processes (repeatable)",
    )
    ap.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="raw",
        help="the load generator's HTTP client: raw (asyncio streams, the default: a third "
        "of aiohttp's CPU per request) or aiohttp (as benchmarks/ingest.py)",
    )
    ap.add_argument("--alertmanager", default=alertmanager.BINARY, help="the binary")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample the relay processes with py-spy during each measurement (skews their "
        "figures); collapsed stacks in each setup's folder (use with --workdir)",
    )
    ap.add_argument("--json", type=Path, help="also write every round's figures here")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="keep the servers' files and logs here (an empty folder) instead of a temporary one",
    )
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SETUPS]
    if unknown or not only:
        ap.error(f"--only: unknown setup(s) {unknown}; choose from {', '.join(SETUPS)}")
    args.setups = [s for s in SETUPS if s in only]
    bad = [kv for kv in args.relay_env if "=" not in kv]
    if bad:
        ap.error(f"--relay-env wants KEY=VAL, not {bad}")
    if args.events < 1 or args.concurrency < 1 or args.rounds < 1:
        ap.error("--events, --concurrency and --rounds must be at least 1")
    if args.profile and shutil.which("py-spy") is None:
        ap.error("--profile needs py-spy on PATH: python3 -m pip install py-spy")
    return args


async def main() -> None:
    args = parse_args()
    if "alertmanager" in args.setups:
        args.alertmanager = alertmanager.ensure_installed(args.alertmanager)
    run = f"{os.getpid()}x{time.time_ns() % 10**6}"
    sizes = {
        "GoAPI callback": len(goapi_bodies(["e2e-size-0000000"])[0]),
        "alert": len(alert_bodies(["e2e-size-0000000"])[0]),
    }
    header = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, relay {git_revision()}"
        + (f", {alertmanager.version(args.alertmanager)}" if "alertmanager" in args.setups else ""),
        f"{args.events} events per setup and round, {args.concurrency} in flight, "
        f"{args.rounds} rounds, cap {args.seconds:.0f} s per measurement, {args.client} client; "
        "body bytes: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()),
    ]
    if args.relay_arg or args.relay_env:
        header.append(f"relay serve extra args {args.relay_arg}, env {args.relay_env}")

    rounds: dict[str, list[Round]] = {name: [] for name in args.setups}
    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = str(args.workdir)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-e2e-"))
        receiver = Receiver(Path(tmp))
        await receiver.start()
        try:
            for n in range(args.rounds):
                order = args.setups[n % len(args.setups) :] + args.setups[: n % len(args.setups)]
                for name in order:
                    result = await measure(name, n, run, Path(tmp), receiver, args)
                    rounds[name].append(result)
                    delivered = (
                        ""
                        if result.delivered is None
                        else f", {result.delivered_rate:,.0f} delivered/s"
                    )
                    print(
                        f"round {n + 1} {name}: {result.accepted_rate:,.0f} accepted/s"
                        f"{delivered}, {result.cpu_us:,.0f} µs CPU/event"
                        + (f" ({'; '.join(result.notes)})" if result.notes else ""),
                        file=sys.stderr,
                    )
        finally:
            await receiver.stop()
    report(rounds, args, header)
    if args.json:
        data = [
            {**asdict(r), "accepted_rate": r.accepted_rate, "delivered_rate": r.delivered_rate,
             "cpu_us": r.cpu_us}
            for results in rounds.values() for r in results
        ]  # fmt: skip
        args.json.write_text(json.dumps({"header": header, "rounds": data}, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop  # the load generator should cost the shared cores as little as it can

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())
