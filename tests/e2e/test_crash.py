"""Kill -9 a real `relay serve` while the downstream is down: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
from standardwebhooks.webhooks import Webhook

from tests.downstream import Downstream
from tests.e2e.server import write_rules
from tests.fixtures_util import load

SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-0123").decode()
CALLBACKS = 60

RULES = """
sources:
  goapi:
    provider: goapi
    secret: crash-secret
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
    timeout: 2s
    # Short waits so the test runs in seconds; 40 tries outlast the outage.
    retry:
      schedule: [200ms, 300ms, 500ms, 500ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s,
                 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s]
      jitter: 0
routes:
  - to: [down]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_relay(tmp_path: Path, port: int, down_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DOWN_URL": down_url,
        "DOWN_SECRET": SECRET,
        "RELAY_LEASE_SECONDS": "3",
        "RELAY_LOG_LEVEL": "warning",
    }
    with open(tmp_path / "relay.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay",
                "serve",
                "--rules",
                str(tmp_path / "rules"),
                "--db",
                f"sqlite:///{tmp_path / 'relay.db'}",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(20):
        while True:
            assert proc.poll() is None, "relay exited during startup"
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def test_sigkill_loses_no_acknowledged_callback(tmp_path: Path) -> None:
    write_rules(tmp_path / "rules", RULES)
    down_port, relay_port = free_port(), free_port()
    down_url = f"http://127.0.0.1:{down_port}/hook"
    relay_url = f"http://127.0.0.1:{relay_port}"

    proc = start_relay(tmp_path, relay_port, down_url)
    try:
        await wait_ready(relay_url, proc)
        template, headers = load("goapi/image_success_flux.json")
        headers["x-webhook-secret"] = "crash-secret"

        async def post(client: httpx.AsyncClient, i: int) -> str:
            body = {**template, "data": {**template["data"], "task_id": f"task-{i:04d}"}}
            r = await client.post(relay_url + "/hooks/goapi", json=body, headers=headers)
            assert r.status_code == 200, r.text
            event_id: str = r.json()["event_id"]
            return event_id

        async with httpx.AsyncClient(timeout=10) as client:
            acked = set(await asyncio.gather(*(post(client, i) for i in range(CALLBACKS))))
        assert len(acked) == CALLBACKS
        await asyncio.sleep(0.5)  # let some attempts fail against the dead downstream
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    downstream = await Downstream().start(port=down_port)
    proc = start_relay(tmp_path, relay_port, down_url)
    try:
        await wait_ready(relay_url, proc)
        await downstream.wait_for(CALLBACKS, within=60)
        await asyncio.sleep(0.5)  # anything doubled would arrive now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await downstream.stop()

    ids = collections.Counter(r.headers["webhook-id"] for r in downstream.received)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    delivered_events = {
        Webhook(SECRET).verify(r.body, r.headers)["data"]["id"] for r in downstream.received
    }
    assert delivered_events == acked
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
    conn.close()
    assert states == {"delivered": CALLBACKS}
