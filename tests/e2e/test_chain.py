"""Relay to relay over real HTTP on 127.0.0.1: A's webhook destination is B's ``standard`` source.

provider ──► relay A (goapi source) ──signed envelope──► relay B (standard source) ──► downstream
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from relay import signing
from relay.channels.base import Delivery
from relay.channels.webhook import render_body
from relay.events import TaskEvent
from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load

GOAPI_SECRET = "s3cr3t-relay-goapi"  # what the GoAPI fixtures send and echo in their bodies
CHAIN_SECRET = "whsec_" + base64.b64encode(b"relay-a-signs-for-relay-b-0123").decode()
DOWN_SECRET = "whsec_" + base64.b64encode(b"relay-b-signs-for-downstream!!").decode()

RULES_A = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
destinations:
  relay-b:
    type: webhook
    url: ${RELAY_B_URL}
    secret: ${CHAIN_SECRET}
    retry: {schedule: [100ms, 100ms]}
routes:
  - to: [relay-b]
"""

RULES_B = """
sources:
  from-a:
    provider: standard
    secret: ${CHAIN_SECRET}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
    retry: {schedule: [100ms, 100ms]}
routes:
  - to: [down]
"""

# Who received the event: set by each relay, never carried over from the one before.
IDENTITY = {"id", "source", "dedupe_key", "received_at", "raw"}


@dataclass
class Chain:
    a: RelayServer
    b: RelayServer
    downstream: Downstream


@pytest.fixture
async def chain(tmp_path: Path, downstream: Downstream) -> AsyncIterator[Chain]:
    b = await RelayServer(
        Settings(rules=write_rules(tmp_path / "b", RULES_B), db=sqlite_url(tmp_path / "b.db")),
        env={"CHAIN_SECRET": CHAIN_SECRET, "DOWN_URL": downstream.url, "DOWN_SECRET": DOWN_SECRET},
    ).start()
    a = await RelayServer(
        Settings(rules=write_rules(tmp_path / "a", RULES_A), db=sqlite_url(tmp_path / "a.db")),
        env={
            "GOAPI_SECRET": GOAPI_SECRET,
            "RELAY_B_URL": f"{b.url}/hooks/from-a",
            "CHAIN_SECRET": CHAIN_SECRET,
        },
    ).start()
    try:
        yield Chain(a, b, downstream)
    finally:
        await a.stop()
        await b.stop()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def query(relay: RelayServer, sql: str, *params: str) -> list[tuple[Any, ...]]:
    path = relay.settings.db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = conn.execute(sql, params).fetchall()
    conn.close()
    return rows


async def delivered(relay: RelayServer, within: float = 10.0) -> list[str]:
    """Wait (bounded) until every delivery of ``relay`` is delivered; return their ids."""
    async with asyncio.timeout(within):
        while True:
            rows = query(relay, "SELECT id, state FROM deliveries")
            if rows and all(state == "delivered" for _, state in rows):
                return [delivery_id for delivery_id, _ in rows]
            await asyncio.sleep(0.02)


async def send_to_a(chain: Chain, fixture: str) -> dict[str, Any]:
    body, headers = load(fixture)
    async with httpx.AsyncClient(base_url=chain.a.url) as client:
        r = await client.post("/hooks/goapi", json=body, headers=headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert answer["deliveries"] == 1
    return answer


def event_in(relay: RelayServer, event_id: str) -> TaskEvent:
    [(text,)] = query(relay, "SELECT event_json FROM events WHERE id = ?", event_id)
    return TaskEvent.model_validate_json(text)


@pytest.mark.parametrize(
    "fixture", ["goapi/image_success_flux.json", "goapi/failed_midjourney.json"]
)
async def test_an_event_goes_through_two_relays_intact(chain: Chain, fixture: str) -> None:
    answer = await send_to_a(chain, fixture)
    await chain.downstream.wait_for(1)

    got = chain.downstream.received[0]
    # B signs with its own destination secret, and the reference library accepts it.
    envelope = Webhook(DOWN_SECRET).verify(got.body, got.headers)
    at_a = event_in(chain.a, answer["event_id"]).model_dump(mode="json")
    at_b = envelope["data"]
    assert envelope["type"] == f"task.{at_a['status']}"
    for name in ("task_id", "status", "model", "outputs", "error", "prompt"):
        assert at_b[name] == at_a[name], name
    assert at_a["prompt"] and (at_a["outputs"] or at_a["error"])
    # Everything else A read from the provider comes through too; only the identity is B's.
    assert {k: v for k, v in at_b.items() if k not in IDENTITY} == {
        k: v for k, v in at_a.items() if k not in IDENTITY
    }
    assert at_b["source"] == "from-a" and at_b["id"] != at_a["id"]
    # The upstream event is kept in raw: B's raw is the envelope A sent.
    assert at_b["raw"]["data"]["id"] == at_a["id"]
    assert at_b["raw"]["data"]["raw"] == at_a["raw"]
    # The GoAPI secret echoed in the provider body went no further than A.
    assert GOAPI_SECRET.encode() not in got.body
    assert all(GOAPI_SECRET not in value for value in got.headers.values())
    await delivered(chain.a)
    # A final event: one per task and status at B too, whatever webhook-id carried it.
    assert at_b["dedupe_key"] == f"{at_a['provider']}:{at_a['task_id']}:{at_a['status']}"


async def test_a_retried_delivery_is_a_duplicate_at_b(chain: Chain) -> None:
    answer = await send_to_a(chain, "goapi/image_success_flux.json")
    await chain.downstream.wait_for(1)
    [a_delivery] = await delivered(chain.a)
    await delivered(chain.b)

    # A retries the same delivery (as after a timeout it never saw the answer to): the same
    # body and webhook-id, signed again with a fresh timestamp.
    event = event_in(chain.a, answer["event_id"])
    body = render_body(Delivery(a_delivery, "relay-b", 2, event), "event")
    key = signing.decode_secret(SecretStr(CHAIN_SECRET))
    headers = {
        "content-type": "application/json",
        **signing.headers([key], a_delivery, int(time.time()), body),
    }
    async with httpx.AsyncClient(base_url=chain.b.url) as client:
        r = await client.post("/hooks/from-a", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"] is True and r.json()["deliveries"] == 0

        # Another webhook-id with the same final event (A sent it again as a new delivery)
        # is still the task's one success at B.
        other = signing.headers([key], a_delivery + "-other", int(time.time()), body)
        r = await client.post("/hooks/from-a", content=body, headers=other)
        assert r.status_code == 200 and r.json()["duplicate"] is True

    assert len(query(chain.b, "SELECT id FROM events")) == 1
    assert len(query(chain.b, "SELECT id FROM deliveries")) == 1
    assert len(chain.downstream.received) == 1


async def test_b_refuses_what_a_did_not_sign(chain: Chain) -> None:
    body = json.dumps({"type": "task.succeeded", "data": {}}).encode()
    wrong = signing.headers([b"not-the-chain-key"], "dlv_x", int(time.time()), body)
    stale = signing.headers(
        [signing.decode_secret(SecretStr(CHAIN_SECRET))], "dlv_x", int(time.time()) - 3600, body
    )
    async with httpx.AsyncClient(base_url=chain.b.url) as client:
        for headers, reason in [
            (wrong, "no signature matches"),
            (stale, "too old"),
            ({**wrong, "webhook-signature": "v1"}, "no valid v1 signature"),
            ({**wrong, "webhook-timestamp": "soon"}, "not an integer"),
            ({}, "webhook-id header missing"),
        ]:
            r = await client.post("/hooks/from-a", content=body, headers=headers)
            assert r.status_code == 401, reason
            assert reason in r.json()["error"]
    assert query(chain.b, "SELECT id FROM events") == []
