"""Every provider fixture, the model families included, through a real ``relay serve`` to a
webhook receiver: what arrives is what the fixture's oracle entry says.

One relay and one receiver for the lot; each fixture is posted as its provider would post it
(its URL, its headers, a fresh timestamp where the body has one).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from relay.events import TaskEvent
from tests.downstream import Downstream
from tests.e2e.cli import GOAPI_SECRET, Serve, base_env, write
from tests.fixtures_util import load
from tests.oracle import check, oracle

SECRET = "whsec_" + base64.b64encode(b"every-fixture-downstream").decode()
TOKEN = "tok-every-fixture-5e1d"
RULES = f"""
sources:
  goapi: {{provider: goapi, secret: "{GOAPI_SECRET}"}}
  goapi-luma: {{provider: goapi, secret: "123456"}}
  goapi-unsigned: {{provider: goapi, token: {TOKEN}}}
  piapi: {{provider: piapi, secret: pi-relay-secret}}
  goapi-account: {{provider: goapi-account, secret: acct-s3cr3t-relay}}
  apimart: {{provider: apimart, token: {TOKEN}}}
  muapi: {{provider: muapi, token: {TOKEN}}}
  novita: {{provider: novita, token: {TOKEN}}}
destinations:
  down:
    type: webhook
    url: ${{DOWN_URL}}
    secret: {SECRET}
routes:
  - to: [down]
"""
PATHS = {
    "goapi": "/hooks/goapi",
    "piapi": "/hooks/piapi",
    "goapi_account": "/hooks/goapi-account",
    "apimart": f"/hooks/apimart/{TOKEN}/callback",
    "muapi": f"/hooks/muapi/{TOKEN}",
    "novita": f"/hooks/novita/{TOKEN}",
}
# GoAPI samples signed with another secret, or with none (GoAPI then sends no header).
GOAPI_BY_SECRET = {"123456": "/hooks/goapi-luma", None: f"/hooks/goapi-unsigned/{TOKEN}"}
ORACLE = oracle()
# Expiries from a ttl count from when the callback arrives, which here is now, not the
# oracle's fixed time: only the S3-signed ones and the providers' own are compared.
RECEIVED_DEPENDENT = {"expires_at"}


@pytest.fixture
async def serve(tmp_path: Path, downstream: Downstream) -> AsyncIterator[Serve]:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    env = base_env(DOWN_URL=downstream.url, RELAY_LOG_LEVEL="warning")
    server = await Serve(tmp_path, env, "serve").start()
    yield server
    await server.stop()


async def test_every_fixture_arrives_as_its_oracle_says(
    serve: Serve, downstream: Downstream
) -> None:
    sent: dict[str, str] = {}  # event id -> fixture
    ignored: list[str] = []
    async with httpx.AsyncClient(base_url=serve.url) as client:
        for name, want in sorted(ORACLE.items()):
            body, headers = load(name)
            folder = name.split("/", 1)[0]
            path = PATHS[folder]
            if folder == "goapi" and headers.get("x-webhook-secret") != GOAPI_SECRET:
                path = GOAPI_BY_SECRET[headers.get("x-webhook-secret")]
            r = await client.post(path, json=body, headers=headers)
            assert r.status_code == 200, (name, r.text)
            answer: dict[str, Any] = r.json()
            if want.get("ignored"):
                assert "ignored" in answer, name
                ignored.append(name)
                continue
            assert answer["duplicate"] is False and answer["deliveries"] == 1, (name, answer)
            sent[answer["event_id"]] = name

    await downstream.wait_for(len(sent), within=60)
    assert len(downstream.received) == len(sent)
    seen = set()
    for item in downstream.received:
        envelope = Webhook(SECRET).verify(item.body, item.headers)
        event = TaskEvent.model_validate(envelope["data"])
        name = sent[event.id]
        seen.add(name)
        want = {k: v for k, v in ORACLE[name].items() if k not in RECEIVED_DEPENDENT}
        check(event, want)
        assert envelope["type"] == f"task.{event.status}"
    assert seen == set(sent.values())
    assert len(sent) + len(ignored) == len(ORACLE) >= 60
