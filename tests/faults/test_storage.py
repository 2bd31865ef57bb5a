"""A full disk and a locked database under a real ``relay serve``: every callback is answered
within ``RELAY_ANSWER_TIMEOUT`` (plus a little), a 503 with its reason while the database
cannot take it, ``/readyz`` says not ready and why; once the disk has room again, or the lock
is released, relay is ready again without a restart, the provider's retries are stored and
delivered, and nothing acknowledged is lost.

The full disk is real: ``relay serve`` runs in its own user and mount namespace (``unshare
-rm``, no root needed) with a small tmpfs holding the SQLite file, and the test fills and frees
that tmpfs through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import json
import shlex
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from tests.downstream import Downstream, Received
from tests.e2e.test_sick_destinations import until
from tests.faults.harness import GOAPI_SECRET, Ledger, Relay, Serve, settled
from tests.fixtures_util import load

RULES = """
sources:
  goapi: {provider: goapi, secret: "${GOAPI_SECRET}"}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
routes:
  - to: [down]
"""
# The answer bound: RELAY_ANSWER_TIMEOUT's default, and what a little over it may take (the
# answer itself, on a loaded machine).
ANSWER_TIMEOUT = 3.0
SLACK = 0.5
DISK_SIZE = "4m"


class DiskServe(Serve):
    """``relay serve`` in a user + mount namespace of its own, on a tmpfs of DISK_SIZE
    mounted at ``disk`` (where its SQLite file is). ``view`` is that tmpfs as this process
    sees it, through ``/proc/<pid>/root``: the mount is private to the namespace."""

    def __init__(self, cwd: Path, env: dict[str, str], disk: Path, *args: str) -> None:
        super().__init__(cwd, env, "serve", *args)
        self.disk = disk

    @property
    def view(self) -> Path:
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root") / self.disk.relative_to("/")

    async def start(self) -> DiskServe:
        assert shutil.which("unshare"), "the full-disk case needs unshare (util-linux)"
        self.disk.mkdir(parents=True, exist_ok=True)
        relay = shlex.join([sys.executable, "-m", "relay", *self.command()])
        # exec: relay is the namespace's process itself, so SIGTERM reaches it and its pid
        # names the namespace's root.
        script = f"mount -t tmpfs -o size={DISK_SIZE} tmpfs {shlex.quote(str(self.disk))}"
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "unshare",
                "-rm",
                "sh",
                "-c",
                f"{script} && exec {relay}",
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            await self._ready(self.proc, within=15)
        except BaseException:
            await self.stop()
            raise
        return self

    def fill(self) -> int:
        """Write a filler file until the tmpfs is full; returns its size."""
        chunk = b"\0" * 65536
        size = 0
        with (self.view / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    size += filler.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        return size

    def free(self) -> None:
        (self.view / "filler").unlink()


def task_id_of(item: Received) -> str:
    task_id: str = json.loads(item.body)["data"]["task_id"]
    return task_id


def callback(task_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    body, headers = load("goapi/image_success_flux.json")
    one: dict[str, Any] = copy.deepcopy(body)
    one["data"]["task_id"] = task_id
    return one, headers


async def timed_post(
    client: httpx.AsyncClient, ledger: Ledger, task_id: str
) -> tuple[httpx.Response, float]:
    body, headers = callback(task_id)
    began = time.monotonic()
    answer = await ledger.post(client, "/hooks/goapi", body, headers)
    return answer, time.monotonic() - began


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    answer = await client.get(path)
    return answer, time.monotonic() - began


async def until_ready(client: httpx.AsyncClient) -> None:
    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await until(ready, "ready again", within=10.0)


async def retry_refused(client: httpx.AsyncClient, ledger: Ledger, refused: list[str]) -> None:
    """What the provider does with each 503: sends it again; now it is stored (or found
    stored: a write that ran past its answer may have gone through after all)."""
    for task_id in refused:
        answer, took = await timed_post(client, ledger, task_id)
        assert answer.status_code == 200, answer.text
        assert took < ANSWER_TIMEOUT + SLACK


async def test_a_full_disk_answers_503_in_time_and_recovers_without_a_restart(
    make_relay: Callable[..., Relay], downstream: Downstream, tmp_path: Path
) -> None:
    """SQLite in WAL mode on a full disk: every write fails at once with SQLITE_FULL
    ("database or disk is full"); the WAL here never reached its checkpoint size, so each
    commit needs new room. Callbacks get their 503 at once, /readyz says why; deliveries sent
    meanwhile cannot be recorded and go again (same webhook-id) once their lease is over."""
    relay = make_relay(
        RULES,
        GOAPI_SECRET=GOAPI_SECRET,
        DOWN_URL=downstream.url,
        # Deliveries whose outcome the full disk kept from being recorded go again when
        # their lease expires: short here, so the test need not wait the default 60 s.
        RELAY_LEASE_SECONDS="3",
    )
    disk = tmp_path / "disk"
    relay.db = f"sqlite:///{disk / 'relay.db'}"
    serve = await DiskServe(relay.home, relay.environment(), disk).start()
    relay.processes.append(serve)
    release = asyncio.Event()

    async def hold_first_deliveries(item: Received) -> None:
        await release.wait()

    downstream.hold = hold_first_deliveries
    ledger = Ledger()
    async with httpx.AsyncClient(base_url=serve.url, timeout=30) as client:
        # Acknowledged, stored, and being sent (held by the downstream) when the disk fills.
        for i in range(3):
            answer, _ = await timed_post(client, ledger, f"before-{i}")
            assert answer.status_code == 200, answer.text
        await downstream.wait_for(3)

        serve.fill()
        refused: list[str] = []
        for i in range(5):
            answer, took = await timed_post(client, ledger, f"full-{i}")
            assert took < ANSWER_TIMEOUT + SLACK, took
            assert answer.status_code == 503, answer.text
            assert answer.json() == {"error": "store unavailable, retry later"}
            assert answer.headers["retry-after"] == "5"
            refused.append(f"full-{i}")
            ready, took = await timed_get(client, "/readyz")
            assert took < ANSWER_TIMEOUT + SLACK, took
            assert ready.status_code == 503, ready.text
            assert ready.json() == {
                "ready": False,
                "reason": "store: ping: database or disk is full",
            }
        # The held sends finish now: delivered, but their outcome cannot be written.
        downstream.hold = None
        release.set()

        async def outcomes_lost() -> bool:
            return serve.output().count("dispatcher: could not record dlv_") == 3

        await until(outcomes_lost, "logged the 3 outcomes it could not record", within=5.0)

        serve.free()
        await until_ready(client)
        await retry_refused(client, ledger, refused)
        found = await settled(serve, ledger, within=15)
    assert all(d["state"] == "delivered" for ds in found.values() for d in ds)
    assert "database or disk is full" in serve.output()
    # Every acknowledged callback reached the downstream; the ones sent while the disk was
    # full twice, with the same webhook-id, since their first outcome was never recorded.
    by_task: dict[str, set[str]] = {}
    for item in downstream.received:
        task_id = json.loads(item.body)["data"]["task_id"]
        by_task.setdefault(task_id, set()).add(item.headers["webhook-id"])
    assert sorted(by_task) == sorted([f"before-{i}" for i in range(3)] + refused)
    assert all(len(ids) == 1 for ids in by_task.values()), by_task
    sent_twice = [t for t in by_task if sum(task_id_of(r) == t for r in downstream.received) == 2]
    assert sorted(sent_twice) == [f"before-{i}" for i in range(3)]


async def test_a_locked_database_answers_503_in_time_and_recovers(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    """Another process holds the write lock (BEGIN IMMEDIATE) longer than the store's own
    5 s wait would let a callback wait: each callback still gets its 503 within the default
    RELAY_ANSWER_TIMEOUT of its own arrival, /readyz too, and both recover on release."""
    relay = make_relay(RULES, GOAPI_SECRET=GOAPI_SECRET, DOWN_URL=downstream.url)
    serve = await relay.serve()
    ledger = Ledger()
    path = relay.db.removeprefix("sqlite:///")
    async with httpx.AsyncClient(base_url=serve.url, timeout=30) as client:
        answer, _ = await timed_post(client, ledger, "before-0")
        assert answer.status_code == 200, answer.text
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            try:

                async def later(delay: float, task_id: str) -> tuple[httpx.Response, float]:
                    # Some arrive while others already wait: each has its own deadline.
                    await asyncio.sleep(delay)
                    return await timed_post(client, ledger, task_id)

                async def ready_later(delay: float) -> tuple[httpx.Response, float]:
                    await asyncio.sleep(delay)
                    return await timed_get(client, "/readyz")

                *answers, (ready, ready_took) = await asyncio.gather(
                    *(later(0.0, f"locked-{i}") for i in range(3)),
                    *(later(1.0, f"locked-{i}") for i in range(3, 5)),
                    ready_later(0.5),
                )
            finally:
                other.execute("ROLLBACK")
        refused = []
        for i, (answer, took) in enumerate(answers):
            assert took < ANSWER_TIMEOUT + SLACK, (i, took)
            assert answer.status_code == 503, answer.text
            assert answer.json() == {"error": "not stored within 3 s, retry later"}
            assert answer.headers["retry-after"] == "5"
            refused.append(f"locked-{i}")
        assert ready_took < ANSWER_TIMEOUT + SLACK, ready_took
        assert ready.status_code == 503, ready.text
        # The store's one connection is still waiting for the lock on a callback's write.
        assert ready.json() == {"ready": False, "reason": "store: ping: no answer within 3 s"}

        await until_ready(client)
        await retry_refused(client, ledger, refused)
        found = await settled(serve, ledger, within=15)
        metrics = (await client.get("/metrics")).text
    assert all(d["state"] == "delivered" for ds in found.values() for d in ds)
    assert sorted(t for t in map(task_id_of, downstream.received)) == sorted(["before-0", *refused])
    assert 'relay_callbacks_total{outcome="timed_out",source="goapi"} 5.0' in metrics
