"""APIMart and MuAPI end to end: the URL token is the only proof, then store and deliver."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load

SECRET = "whsec_" + base64.b64encode(b"downstream-secret-unsigned").decode()
APIMART_TOKEN = "am-7Yq2Kd9xWv"
MUAPI_TOKEN = "mu-3Hf8Lp1cZr"

RULES = """
sources:
  apimart:
    provider: apimart
    token: ${APIMART_TOKEN}
  muapi:
    provider: muapi
    token: ${MUAPI_TOKEN}
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
    settings = Settings(rules=rules, db=f"sqlite:///{tmp_path / 'relay.db'}")
    env = {
        "APIMART_TOKEN": APIMART_TOKEN,
        "MUAPI_TOKEN": MUAPI_TOKEN,
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


def count_events(relay: RelayServer) -> int:
    with sqlite3.connect(relay.settings.db.removeprefix("sqlite:///")) as conn:
        n: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    return n


async def test_apimart_callback_url_is_accepted_and_delivered(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    body, headers = load("apimart/video_success.json")
    # APIMart appends /callback to the webhook base URL it was given.
    r = await client.post(f"/hooks/apimart/{APIMART_TOKEN}/callback", json=body, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["duplicate"] is False and answer["deliveries"] == 1
    await downstream.wait_for(1)
    got = downstream.received[0]
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload["type"] == "task.succeeded"
    event = payload["data"]
    assert event["id"] == answer["event_id"]
    assert (event["provider"], event["source"]) == ("apimart", "apimart")
    assert event["task_id"] == "task_01K8SGYNNNVBQTXNR4MM964S7K"
    assert event["outputs"][0]["kind"] == "video"
    assert APIMART_TOKEN.encode() not in got.body


async def test_apimart_duplicate_push_is_acknowledged_once(
    client: httpx.AsyncClient, relay: RelayServer, downstream: Downstream
) -> None:
    body, _ = load("apimart/failed.json")
    url = f"/hooks/apimart/{APIMART_TOKEN}/callback"
    first = (await client.post(url, json=body)).json()
    again = await client.post(url, json=body)
    assert again.status_code == 200
    assert again.json() == {"event_id": first["event_id"], "duplicate": True, "deliveries": 0}
    await downstream.wait_for(1)
    assert count_events(relay) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/hooks/apimart/wrong-token/callback",
        "/hooks/apimart/wrong-token",
        f"/hooks/apimart/{APIMART_TOKEN}x/callback",
        f"/hooks/apimart/{MUAPI_TOKEN}/callback",
        "/hooks/apimart/callback",
        "/hooks/apimart",
    ],
)
async def test_apimart_wrong_or_missing_token_is_401(
    client: httpx.AsyncClient, relay: RelayServer, path: str
) -> None:
    body, _ = load("apimart/image_success.json")
    r = await client.post(path, json=body)
    assert r.status_code == 401, r.text
    assert "token" in r.json()["error"]
    assert APIMART_TOKEN not in r.text
    assert count_events(relay) == 0


async def test_muapi_token_as_query_parameter(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    body, headers = load("muapi/image_success.json")
    r = await client.post("/hooks/muapi", params={"token": MUAPI_TOKEN}, json=body, headers=headers)
    assert r.status_code == 200, r.text
    await downstream.wait_for(1)
    payload = Webhook(SECRET).verify(downstream.received[0].body, downstream.received[0].headers)
    event = payload["data"]
    assert (event["provider"], event["status"]) == ("muapi", "succeeded")
    assert event["outputs"][0]["kind"] == "image"
    assert event["outputs"][0]["nsfw"] is False


async def test_muapi_token_in_the_path(client: httpx.AsyncClient, downstream: Downstream) -> None:
    body, headers = load("muapi/failed.json")
    r = await client.post(f"/hooks/muapi/{MUAPI_TOKEN}", json=body, headers=headers)
    assert r.status_code == 200, r.text
    await downstream.wait_for(1)
    payload = Webhook(SECRET).verify(downstream.received[0].body, downstream.received[0].headers)
    assert payload["type"] == "task.failed"
    assert "403 Forbidden" in payload["data"]["error"]["message"]


@pytest.mark.parametrize(
    "path", ["/hooks/muapi?token=nope", "/hooks/muapi", f"/hooks/muapi?token={APIMART_TOKEN}"]
)
async def test_muapi_wrong_or_missing_token_is_401(
    client: httpx.AsyncClient, relay: RelayServer, path: str
) -> None:
    body, _ = load("muapi/image_success.json")
    r = await client.post(path, json=body)
    assert r.status_code == 401, r.text
    assert count_events(relay) == 0


@pytest.mark.parametrize(
    ("path", "fixture", "drop", "reason"),
    [
        (f"/hooks/apimart/{APIMART_TOKEN}/callback", "apimart/image_success.json", "id", "data.id"),
        (f"/hooks/muapi/{MUAPI_TOKEN}", "muapi/image_success.json", "id", "id: missing"),
    ],
)
async def test_a_body_without_task_id_is_400_with_the_reason(
    client: httpx.AsyncClient,
    relay: RelayServer,
    path: str,
    fixture: str,
    drop: str,
    reason: str,
) -> None:
    body, _ = load(fixture)
    task = body.get("data", body)
    del task[drop]
    r = await client.post(path, content=json.dumps(body).encode())
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"], r.json()
    assert count_events(relay) == 0


async def test_apimart_progress_push_is_200_not_refused(
    client: httpx.AsyncClient, relay: RelayServer
) -> None:
    # APIMart gives up on any 4xx: a status we do not route on must still be a 200.
    body = {"code": 200, "data": {"id": "task_progress_1", "status": "processing", "progress": 30}}
    r = await client.post(f"/hooks/apimart/{APIMART_TOKEN}/callback", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["deliveries"] == 0
    assert count_events(relay) == 1
