"""`relay serve --workers N` as a real process: the server only receives and N `relay worker`
children deliver; a worker that dies is started again; stopping the server stops them; a
worker whose server was killed stops by itself; contradictory options are refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.downstream import Downstream
from tests.e2e.cli import GOAPI_SECRET, arelay, base_env
from tests.faults.harness import Ledger, Relay, settled
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


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


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
