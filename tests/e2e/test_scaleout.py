"""Several relay processes on one PostgreSQL database: two receivers (`serve --no-dispatch`)
and two workers (`relay worker`), real subprocesses, a real downstream receiver.

2,000 callbacks go to the two receivers; a tenth are sent twice, some of those to both
receivers at the same moment. Every event must reach the downstream once per webhook-id, and
the database must agree. Then the same with one worker killed by SIGKILL half way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx

from relay.store import open_store
from tests.downstream import Downstream
from tests.e2e.server import write_rules

SECRET = "scaleout-secret"
WHSEC = "whsec_" + base64.b64encode(b"scale-out-signing-key-0123").decode()
CALLBACKS = 2000

RULES = """
sources:
  goapi:
    provider: goapi
    secret: scaleout-secret
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
    timeout: 5s
    retry:
      schedule: [1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s]
      jitter: 0
routes:
  - to: [down]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Fleet:
    """The relay processes of one test, all on one database; stopped at the end."""

    def __init__(self, tmp_path: Path, db: str, down_url: str) -> None:
        self.tmp_path = tmp_path
        self.db = db
        self.down_url = down_url
        self.env = {
            **os.environ,
            "DOWN_URL": down_url,
            "DOWN_SECRET": WHSEC,
            "RELAY_LEASE_SECONDS": "5",
            "RELAY_LOG_LEVEL": "warning",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        write_rules(tmp_path / "rules", RULES)

    def _start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / "relay.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "relay", *args),
                    *("--rules", str(self.tmp_path / "rules"), "--db", self.db),
                ],
                env={**self.env, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.procs.append(proc)
        return proc

    async def web(self) -> str:
        port = free_port()
        proc = self._start("serve", "--no-dispatch", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                assert proc.poll() is None, self.log()
                try:
                    if (await client.get(url + "/readyz")).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    def worker(self, name: str | None = None) -> subprocess.Popen[bytes]:
        """A worker; with a ``name``, it sends to the downstream's path /hook/<name>, so the
        downstream knows which worker sent each request."""
        if name is None:
            return self._start("worker")
        return self._start("worker", env={"DOWN_URL": f"{self.down_url}/{name}"})

    def log(self) -> str:
        path = self.tmp_path / "relay.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def fleet(tmp_path: Path, db: str, down_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, db, down_url)
    try:
        yield f
    finally:
        f.stop()


@asynccontextmanager
async def downstream() -> AsyncIterator[Downstream]:
    server = await Downstream().start()
    try:
        yield server
    finally:
        await server.stop()


def body(i: int) -> bytes:
    return json.dumps(
        {
            "timestamp": int(time.time()),
            "data": {
                "task_id": f"task-{i:05d}",
                "model": "flux",
                "task_type": "txt2img",
                "status": "completed",
                "output": {"image_url": f"https://cdn.example/{i}.png"},
                "config": {"webhook_config": {"secret": SECRET}},
            },
        }
    ).encode()


async def send_all(webs: list[str]) -> None:
    """Every callback once, a tenth twice: every other of those to both receivers at once."""
    headers = {"x-webhook-secret": SECRET, "content-type": "application/json"}
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=30) as client:

        async def post(url: str, data: bytes) -> None:
            async with limit:
                answer = await client.post(url + "/hooks/goapi", content=data, headers=headers)
            assert answer.status_code == 200, answer.text

        async def one(i: int) -> None:
            data = body(i)
            first, other = webs[i % 2], webs[(i + 1) % 2]
            if i % 10 == 0 and i % 20 == 0:
                await asyncio.gather(post(first, data), post(other, data))  # at the same moment
            elif i % 10 == 0:
                await post(first, data)
                await post(other, data)  # the provider retried, to the other receiver
            else:
                await post(first, data)

        await asyncio.gather(*(one(i) for i in range(CALLBACKS)))


async def database_agrees(db: str) -> dict[str, int]:
    store = open_store(db)
    await store.open()
    try:
        counts: Counter[str] = Counter()
        for state in ("pending", "sending", "delivered", "dead"):
            counts[state] = len(await store.list_deliveries(state, limit=10 * CALLBACKS))
        return dict(counts)
    finally:
        await store.close()


def by_webhook_id(down: Downstream) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in down.received)


async def settled(db: str, within: float) -> None:
    """Wait until no delivery is pending or sending: leases of a killed worker take
    RELAY_LEASE_SECONDS to expire before another worker sends them again."""
    async with asyncio.timeout(within):
        while True:
            counts = await database_agrees(db)
            if counts["pending"] == counts["sending"] == 0:
                return
            await asyncio.sleep(0.5)


async def wait_for_ids(down: Downstream, count: int, within: float) -> None:
    """Poll (bounded) until ``count`` distinct webhook-ids have arrived."""
    async with asyncio.timeout(within):
        while True:
            if len(by_webhook_id(down)) >= count:
                return
            await asyncio.sleep(0.05)


async def test_two_receivers_and_two_workers_deliver_every_event_once(
    tmp_path: Path, pg_url: str
) -> None:
    async with downstream() as down:
        with fleet(tmp_path, pg_url, down.url) as f:
            webs = [await f.web(), await f.web()]
            f.worker()
            f.worker()
            await send_all(webs)
            await wait_for_ids(down, CALLBACKS, within=120)
            await settled(pg_url, within=60)
            await asyncio.sleep(1.0)  # room for a double delivery to show up
        ids = by_webhook_id(down)
        assert len(ids) == CALLBACKS
        assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
        tasks = {json.loads(r.body)["data"]["task_id"] for r in down.received}
        assert tasks == {f"task-{i:05d}" for i in range(CALLBACKS)}
    assert await database_agrees(pg_url) == {
        "pending": 0,
        "sending": 0,
        "delivered": CALLBACKS,
        "dead": 0,
    }


async def test_a_worker_killed_mid_run_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    # Per webhook-id, each copy's sender (its path) and arrival time.
    arrivals: dict[str, list[tuple[str, float]]] = {}
    async with downstream() as down:
        # Each answer takes 0.5 s: a busy worker always has sends in flight.
        down.delay = 0.5
        down.on_request = lambda r: arrivals.setdefault(r.headers["webhook-id"], []).append(
            (r.path, time.monotonic())
        )
        with fleet(tmp_path, pg_url, down.url) as f:
            webs = [await f.web(), await f.web()]
            await send_all(webs)
            # The victim starts first and is seen sending before the other one starts, so the
            # kill surely lands on sends of its own in flight.
            victim = f.worker("victim")
            await wait_for_ids(down, 32, within=60)
            f.worker("survivor")
            await wait_for_ids(down, CALLBACKS // 4, within=60)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_at = time.monotonic()
            await wait_for_ids(down, CALLBACKS, within=180)
            await settled(pg_url, within=60)
            await asyncio.sleep(1.0)
        ids = by_webhook_id(down)
        assert len(ids) == CALLBACKS
        doubled = [i for i, n in ids.items() if n > 1]
        # Only deliveries in flight at the kill may arrive twice, with the same webhook-id: the
        # first copy from the victim (it sent it, then died before recording), the second from
        # the survivor after the kill (the lease expired and it took the delivery over). A
        # worker has at most RELAY_CONCURRENCY (64) sends in flight.
        # Who sent the first copy, not when it arrived: the downstream runs on this event loop,
        # which victim.wait() holds up, so a request the victim sent just before it died can be
        # read after killed_at.
        assert 0 < len(doubled) <= 64, len(doubled)
        assert max(ids.values()) <= 2
        for webhook_id in doubled:
            (first_by, _), (second_by, second_at) = arrivals[webhook_id]
            assert (first_by, second_by) == ("/hook/victim", "/hook/survivor"), webhook_id
            assert killed_at <= second_at, webhook_id
    assert await database_agrees(pg_url) == {
        "pending": 0,
        "sending": 0,
        "delivered": CALLBACKS,
        "dead": 0,
    }
