"""What a downstream service gets from a real ``relay serve``: one final event per task and
status, signatures under every configured key, and envelopes with or without the raw body.

Each delivery is checked with the Standard Webhooks reference verifier.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.downstream import Downstream, Received
from tests.e2e.cli import GOAPI_SECRET, Serve, base_env, write
from tests.fixtures_util import load

OLD_SECRET = "whsec_" + base64.b64encode(b"billing-key-before-rotation").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"billing-key-after-rotation!").decode()
TOKENS = {"apimart": "tok-apimart-4d2a", "muapi": "tok-muapi-8b1f", "novita": "tok-novita-c3e9"}

RULES = """
sources:
  goapi: {provider: goapi, secret: "${GOAPI_SECRET}"}
  piapi: {provider: piapi, secret: pi-relay-secret}
  apimart: {provider: apimart, token: "${APIMART_TOKEN}"}
  muapi: {provider: muapi, token: "${MUAPI_TOKEN}"}
  novita: {provider: novita, token: "${NOVITA_TOKEN}"}
destinations:
  billing:
    type: webhook
    url: ${DOWN_URL}/billing
    # A key rotation under way: both keys sign every request.
    secret: "${OLD_SECRET} ${NEW_SECRET}"
  lean:
    type: webhook
    url: ${DOWN_URL}/lean
    secret: ${NEW_SECRET}
    include_raw: false
routes:
  - to: [billing, lean]
"""
# Where each provider's callback goes, by source.
PATHS = {
    "goapi": "/hooks/goapi",
    "piapi": "/hooks/piapi",
    "apimart": f"/hooks/apimart/{TOKENS['apimart']}/callback",
    "muapi": f"/hooks/muapi/{TOKENS['muapi']}",
    "novita": f"/hooks/novita/{TOKENS['novita']}",
}


@pytest.fixture
async def serve(tmp_path: Path, downstream: Downstream) -> AsyncIterator[Serve]:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    env = base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        APIMART_TOKEN=TOKENS["apimart"],
        MUAPI_TOKEN=TOKENS["muapi"],
        NOVITA_TOKEN=TOKENS["novita"],
        OLD_SECRET=OLD_SECRET,
        NEW_SECRET=NEW_SECRET,
        DOWN_URL=f"http://127.0.0.1:{downstream.port}",
        RELAY_LOG_LEVEL="warning",
    )
    server = await Serve(tmp_path, env, "serve").start()
    yield server
    await server.stop()


async def post(serve: Serve, source: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    async with httpx.AsyncClient(base_url=serve.url) as client:
        r = await client.post(PATHS[source], json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def received(downstream: Downstream, count: int, within: float = 15.0) -> list[Received]:
    """The first ``count`` requests, once they have all arrived (bounded)."""
    await downstream.wait_for(count, within)
    return downstream.received[:count]


def verified(item: Received, secret: str) -> dict[str, Any]:
    envelope: dict[str, Any] = Webhook(secret).verify(item.body, item.headers)
    return envelope


def events(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT source, dedupe_key, status FROM events ORDER BY received_at"
        ).fetchall()
    finally:
        conn.close()


async def test_one_success_per_task_whatever_the_retry_timestamp(
    tmp_path: Path, serve: Serve, downstream: Downstream
) -> None:
    now = time.time()
    body, headers = load("goapi/image_success_flux.json", now=now)
    task = body["data"]["task_id"]
    first = await post(serve, "goapi", body, headers)
    assert first["duplicate"] is False and first["deliveries"] == 2

    # GoAPI retries the same completion with a new body timestamp: the same success.
    again, _ = load("goapi/image_success_flux.json", now=now + 7)
    retried = await post(serve, "goapi", again, headers)
    assert retried == {"event_id": first["event_id"], "duplicate": True, "deliveries": 0}

    # A final event of another status is another event, and is delivered.
    failed, _ = load("goapi/image_success_flux.json", now=now + 9)
    failed["data"].update(status="failed", error={"code": 10000, "message": "nsfw detected"})
    failure = await post(serve, "goapi", failed, headers)
    assert failure["duplicate"] is False and failure["deliveries"] == 2

    # Progress reports are each their own event: they differ by the provider's timestamp.
    for step in (0, 5):
        progress, progress_headers = load(
            "goapi/midjourney_processing_progress.json", now=now + step
        )
        answer = await post(serve, "goapi", progress, progress_headers)
        assert answer["duplicate"] is False

    got = await received(downstream, 8)
    billing = [verified(item, NEW_SECRET) for item in got if item.path == "/billing"]
    assert sorted(e["type"] for e in billing) == [
        "task.failed",
        "task.processing",
        "task.processing",
        "task.succeeded",
    ]
    assert [e["data"]["task_id"] for e in billing if e["type"] != "task.processing"] == [task] * 2
    assert len({item.headers["webhook-id"] for item in got}) == 8

    assert events(tmp_path / "relay.db")[:2] == [
        ("goapi", f"goapi:{task}:succeeded", "succeeded"),
        ("goapi", f"goapi:{task}:failed", "failed"),
    ]
    # Deliveries are made with their event: no second success is queued anywhere.
    conn = sqlite3.connect(tmp_path / "relay.db")
    try:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (8,)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("source", "fixture"),
    [
        ("goapi", "goapi/failed_midjourney.json"),
        ("piapi", "piapi/audio_success_suno_music.json"),
        ("apimart", "apimart/image_success.json"),
        ("muapi", "muapi/failed.json"),
        ("novita", "novita/image_success.json"),
    ],
)
async def test_every_provider_dedupes_a_final_event_on_task_and_status(
    tmp_path: Path, serve: Serve, downstream: Downstream, source: str, fixture: str
) -> None:
    now = time.time()
    body, headers = load(fixture, now=now)
    first = await post(serve, source, body, headers)
    assert first["duplicate"] is False
    again, _ = load(fixture, now=now + 3)
    assert (await post(serve, source, again, headers))["duplicate"] is True

    [(stored_source, key, status)] = events(tmp_path / "relay.db")
    assert stored_source == source
    assert key.endswith(f":{status}") and key.startswith(f"{source}:")
    got = await received(downstream, 2)
    envelope = verified(got[0], NEW_SECRET)
    assert key == f"{source}:{envelope['data']['task_id']}:{status}"


async def test_every_key_signs_and_lean_envelopes_leave_the_raw_body_out(
    serve: Serve, downstream: Downstream
) -> None:
    body, headers = load("goapi/image_success_flux.json")
    await post(serve, "goapi", body, headers)
    got = {item.path: item for item in await received(downstream, 2)}

    billing = got["/billing"]
    # One v1 signature per key, and a receiver holding either key alone accepts it.
    assert len(billing.headers["webhook-signature"].split(" ")) == 2
    old, new = verified(billing, OLD_SECRET), verified(billing, NEW_SECRET)
    assert old == new and old["data"]["raw"]["data"]["task_id"] == body["data"]["task_id"]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"some-other-key-entirely").decode()).verify(
            billing.body, billing.headers
        )

    lean = got["/lean"]
    envelope = verified(lean, NEW_SECRET)
    assert "raw" not in envelope["data"]
    assert {k: v for k, v in old["data"].items() if k not in ("raw",)} == envelope["data"]
    assert len(lean.body) < len(billing.body) / 1.2
    assert json.loads(lean.body) == envelope
