"""POST /hooks end to end: uvicorn on 127.0.0.1, a SQLite file, a real downstream receiver."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load

SECRET = "whsec_" + base64.b64encode(b"downstream-secret-0123").decode()

RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
  piapi:
    provider: piapi
    secret: pi-relay-secret
  tokened:
    provider: goapi
    token: ${HOOK_TOKEN}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
    retry: {schedule: [100ms, 100ms]}
routes:
  - match: ['final="true"']
    to: [down]
"""


@pytest.fixture
async def relay(tmp_path: Path, downstream: Downstream) -> AsyncIterator[RelayServer]:
    rules = write_rules(tmp_path / "rules", RULES)
    settings = Settings(rules=rules, db=f"sqlite:///{tmp_path / 'relay.db'}", max_body=64 * 1024)
    env = {
        "GOAPI_SECRET": "s3cr3t-relay-goapi",
        "HOOK_TOKEN": "tok-9f8e7d",
        "DOWN_URL": downstream.url,
        "DOWN_SECRET": SECRET,
    }
    server = await RelayServer(settings, env=env).start()
    yield server
    await server.stop()


@pytest.fixture
async def client(relay: RelayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.url) as c:
        yield c


def count(relay: RelayServer, table: str) -> int:
    path = relay.settings.db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        n: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    conn.close()
    return n


async def test_a_callback_is_stored_then_delivered_signed_and_redacted(
    client: httpx.AsyncClient, relay: RelayServer, downstream: Downstream
) -> None:
    body, headers = load("goapi/image_success_flux.json")
    r = await client.post("/hooks/goapi", json=body, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["duplicate"] is False and answer["event_id"].startswith("evt_")
    await downstream.wait_for(1)
    got = downstream.received[0]
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload["type"] == "task.succeeded"
    assert payload["data"]["id"] == answer["event_id"]
    assert payload["data"]["outputs"][0]["kind"] == "image"
    assert b"s3cr3t-relay-goapi" not in got.body
    with sqlite3.connect(relay.settings.db.removeprefix("sqlite:///")) as conn:
        stored = conn.execute("SELECT event_json FROM events").fetchone()[0]
    conn.close()
    assert "s3cr3t-relay-goapi" not in stored


async def test_a_duplicate_is_acknowledged_without_new_deliveries(
    client: httpx.AsyncClient, relay: RelayServer, downstream: Downstream
) -> None:
    body, headers = load("piapi/audio_success_suno_music.json")
    first = (await client.post("/hooks/piapi", json=body, headers=headers)).json()
    again = (await client.post("/hooks/piapi", json=body, headers=headers)).json()
    assert again == {"event_id": first["event_id"], "duplicate": True, "deliveries": 0}
    await downstream.wait_for(1)
    assert count(relay, "events") == 1
    assert count(relay, "deliveries") == 1


@pytest.mark.parametrize(
    "path", ["/hooks/tokened/tok-9f8e7d", "/hooks/tokened/tok-9f8e7d/callback"]
)
async def test_token_urls_with_and_without_callback(
    client: httpx.AsyncClient, downstream: Downstream, path: str
) -> None:
    body, _ = load("goapi/text_success_joycaption.json")
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text


async def test_callback_suffix_on_a_plain_source(client: httpx.AsyncClient) -> None:
    body, headers = load("goapi/failed_midjourney.json")
    r = await client.post("/hooks/goapi/callback", json=body, headers=headers)
    assert r.status_code == 200, r.text


async def test_progress_events_are_stored_but_not_routed_by_these_rules(
    client: httpx.AsyncClient, relay: RelayServer
) -> None:
    body, headers = load("goapi/midjourney_processing_progress.json")
    r = await client.post("/hooks/goapi", json=body, headers=headers)
    assert r.json()["deliveries"] == 0
    assert count(relay, "events") == 1 and count(relay, "deliveries") == 0


def _fresh(name: str, **changes: object) -> tuple[bytes, dict[str, str]]:
    body, headers = load(name)
    body.update(changes)
    return json.dumps(body).encode(), headers


BAD = [
    ("wrong secret", "/hooks/goapi", None, {"x-webhook-secret": "guess"}, 401, "does not match"),
    ("missing secret", "/hooks/goapi", None, {"x-webhook-secret": None}, 401, "missing"),
    ("stale", "/hooks/goapi", {"timestamp": int(time.time()) - 3600}, {}, 401, "window"),
    ("future", "/hooks/goapi", {"timestamp": int(time.time()) + 3600}, {}, 401, "window"),
    ("wrong token", "/hooks/tokened/nope", None, {}, 401, "token"),
    ("no token", "/hooks/tokened", None, {}, 401, "token"),
    ("unknown source", "/hooks/nobody", None, {}, 404, "unknown source"),
]


@pytest.mark.parametrize(("case", "path", "changes", "header_changes", "status", "reason"), BAD)
async def test_refused_requests_store_nothing(
    client: httpx.AsyncClient,
    relay: RelayServer,
    case: str,
    path: str,
    changes: dict[str, object] | None,
    header_changes: dict[str, str | None],
    status: int,
    reason: str,
) -> None:
    body, headers = _fresh("goapi/image_success_flux.json", **(changes or {}))
    for key, value in header_changes.items():
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    r = await client.post(path, content=body, headers=headers)
    assert r.status_code == status, case
    assert reason in r.json()["error"], r.json()
    assert count(relay, "events") == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2, 3]", "object"),
        (b'"just a string"', "object"),
        (b"", "empty"),
        (b"[" * 200 + b"]" * 200, "nested"),
        # Parses, but no store or envelope could write it: refused before anything is stored.
        (b'{"data": {"task_id": "\\ud800"}}', "lone surrogate"),
        (b'{"data": {"\\udfff": 1, "task_id": "t"}}', "lone surrogate"),
    ],
)
async def test_malformed_bodies_are_400_with_a_reason(
    client: httpx.AsyncClient, relay: RelayServer, content: bytes, reason: str
) -> None:
    r = await client.post(
        "/hooks/goapi", content=content, headers={"x-webhook-secret": "s3cr3t-relay-goapi"}
    )
    assert r.status_code == 400
    assert reason in r.json()["error"], r.json()
    assert count(relay, "events") == 0


async def test_a_body_over_the_limit_is_413_with_content_length(
    client: httpx.AsyncClient, relay: RelayServer
) -> None:
    r = await client.post(
        "/hooks/goapi",
        content=b"x" * (64 * 1024 + 1),
        headers={"x-webhook-secret": "s3cr3t-relay-goapi"},
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert count(relay, "events") == 0


async def test_a_body_over_the_limit_is_413_when_chunked(
    client: httpx.AsyncClient, relay: RelayServer
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    r = await client.post(
        "/hooks/goapi", content=chunks(), headers={"x-webhook-secret": "s3cr3t-relay-goapi"}
    )
    assert r.status_code == 413
    assert count(relay, "events") == 0


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"ok": True}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["sources"] == ["goapi", "piapi", "tokened"]


async def test_get_on_a_hook_is_405_not_500(client: httpx.AsyncClient) -> None:
    assert (await client.get("/hooks/goapi")).status_code == 405


async def test_a_store_that_cannot_take_the_event_answers_503_and_recovers(
    tmp_path: Path, downstream: Downstream
) -> None:
    from relay.store.sqlite import SQLiteStore

    rules = write_rules(tmp_path / "rules", RULES)
    db = tmp_path / "relay.db"
    env = {
        "GOAPI_SECRET": "s",
        "HOOK_TOKEN": "t",
        "DOWN_URL": downstream.url,
        "DOWN_SECRET": SECRET,
    }
    store = SQLiteStore(str(db), busy_timeout=0.2)
    server = await RelayServer(
        Settings(rules=rules, db=f"sqlite:///{db}", dispatch=False), store=store, env=env
    ).start()
    try:
        body, _ = load("goapi/image_success_flux.json")
        # Another process holds the write lock longer than the store waits for it.
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.post("/hooks/goapi", json=body, headers={"x-webhook-secret": "s"})
            assert r.status_code == 503
            assert r.headers["retry-after"] == "5"
            assert "store unavailable" in r.json()["error"]
            assert (await client.get("/readyz")).status_code == 503
            locker.execute("ROLLBACK")
            locker.close()
            # The provider retries: now it is taken.
            r = await client.post("/hooks/goapi", json=body, headers={"x-webhook-secret": "s"})
            assert r.status_code == 200 and r.json()["duplicate"] is False
    finally:
        await server.stop()
