"""Novita callbacks and GoAPI account notifications end to end: uvicorn, SQLite, a downstream."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import FIXTURES, load

NOVITA_TOKEN = "nv-tok-5d4c3b2a1f"
ACCOUNT_SECRET = "acct-s3cr3t-relay"

RULES = """
sources:
  novita:
    provider: novita
    token: ${NOVITA_TOKEN}
  goapi-account:
    provider: goapi-account
    secret: ${ACCOUNT_SECRET}
destinations:
  ops:
    type: webhook
    url: ${DOWN_URL}/ops
    retry: {schedule: [100ms]}
  tasks:
    type: webhook
    url: ${DOWN_URL}/tasks
    retry: {schedule: [100ms]}
routes:
  - match: ['provider="goapi-account"']
    to: [ops]
  - match: ['final="true"']
    to: [tasks]
"""


@pytest.fixture
async def relay(tmp_path: Path, downstream: Downstream) -> AsyncIterator[RelayServer]:
    rules = write_rules(tmp_path / "rules", RULES)
    settings = Settings(rules=rules, db=f"sqlite:///{tmp_path / 'relay.db'}")
    env = {
        "NOVITA_TOKEN": NOVITA_TOKEN,
        "ACCOUNT_SECRET": ACCOUNT_SECRET,
        "DOWN_URL": downstream.url,
    }
    server = await RelayServer(settings, env=env).start()
    yield server
    await server.stop()


@pytest.fixture
async def client(relay: RelayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.url) as c:
        yield c


def stored(relay: RelayServer) -> list[str]:
    path = relay.settings.db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = [r[0] for r in conn.execute("SELECT event_json FROM events")]
    conn.close()
    return rows


def novita_body(name: str) -> dict[str, Any]:
    body, _ = load(name)
    # As Novita sends it: the payload echoes the URL we registered, token included.
    body["payload"]["extra"]["webhook"]["url"] = (
        f"https://relay.example.com/hooks/novita/{NOVITA_TOKEN}"
    )
    return body


async def test_a_novita_success_is_stored_and_delivered_without_the_token(
    client: httpx.AsyncClient, relay: RelayServer, downstream: Downstream
) -> None:
    r = await client.post(
        f"/hooks/novita/{NOVITA_TOKEN}", json=novita_body("novita/image_success.json")
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["duplicate"] is False and answer["deliveries"] == 1
    await downstream.wait_for(1)
    got = downstream.received[0]
    assert got.path.endswith("/tasks")
    envelope = json.loads(got.body)
    assert envelope["type"] == "task.succeeded"
    data = envelope["data"]
    assert (data["id"], data["provider"], data["status"]) == (
        answer["event_id"],
        "novita",
        "succeeded",
    )
    assert data["outputs"][0]["kind"] == "image"
    assert data["outputs"][0]["expires_at"].startswith("2024-06-02T16:00:41")
    assert NOVITA_TOKEN.encode() not in got.body
    rows = stored(relay)
    assert len(rows) == 1 and NOVITA_TOKEN not in rows[0]


async def test_a_novita_retry_is_a_duplicate(client: httpx.AsyncClient, relay: RelayServer) -> None:
    body = novita_body("novita/failed.json")
    first = (await client.post(f"/hooks/novita/{NOVITA_TOKEN}", json=body)).json()
    again = (await client.post(f"/hooks/novita/{NOVITA_TOKEN}", json=body)).json()
    assert again == {"event_id": first["event_id"], "duplicate": True, "deliveries": 0}
    assert len(stored(relay)) == 1


async def test_another_novita_event_type_is_ignored_and_stored_nowhere(
    client: httpx.AsyncClient, relay: RelayServer, downstream: Downstream
) -> None:
    body, _ = load("novita/other_event_type_synthetic.json")
    r = await client.post(f"/hooks/novita/{NOVITA_TOKEN}", json=body)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"ignored"}
    assert "ASYNC_TASK_PROGRESS" in r.json()["ignored"]
    assert stored(relay) == []
    assert downstream.received == []


async def test_a_novita_callback_with_a_wrong_token_is_refused(
    client: httpx.AsyncClient, relay: RelayServer
) -> None:
    r = await client.post("/hooks/novita/guess", json=novita_body("novita/image_success.json"))
    assert r.status_code == 401
    assert stored(relay) == []


async def test_an_account_notification_is_routed_to_ops(
    client: httpx.AsyncClient, relay: RelayServer, downstream: Downstream
) -> None:
    body, headers = load("goapi_account/mj_bot_banned.json")
    assert headers["x-webhook-secret"] == ACCOUNT_SECRET
    r = await client.post("/hooks/goapi-account", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["deliveries"] == 1
    await downstream.wait_for(1)
    got = downstream.received[0]
    assert got.path.endswith("/ops")
    data = json.loads(got.body)["data"]
    assert (data["provider"], data["status"], data["task_type"]) == (
        "goapi-account",
        "failed",
        "mj_bot_banned",
    )
    assert data["error"]["code"] == "mj_bot_banned"
    assert "studio-bot-2" in data["error"]["detail"]


async def test_an_account_notification_with_a_wrong_secret_is_refused(
    client: httpx.AsyncClient, relay: RelayServer
) -> None:
    body = json.loads((FIXTURES / "goapi_account" / "quota_exchange_failed.json").read_text())
    r = await client.post("/hooks/goapi-account", json=body, headers={"x-webhook-secret": "guess"})
    assert r.status_code == 401 and "does not match" in r.json()["error"]
    assert stored(relay) == []
