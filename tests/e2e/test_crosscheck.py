"""verify: fetch against a local stand-in of GoAPI's status API, over real HTTP."""

from __future__ import annotations

import base64
import copy
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from relay.events import TaskEvent
from relay.providers import default_providers
from relay.providers.base import Inbound, Provider
from relay.providers.unified import UnifiedProvider
from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load
from tests.local_http import serve_app

SECRET = "whsec_" + base64.b64encode(b"crosscheck-downstream-01").decode()
API_KEY = "goapi-key-123"
TOKEN = "tok-crosscheck"

RULES = """
sources:
  goapi:
    provider: goapi
    token: ${TOKEN}
    verify: fetch
    api_key: ${API_KEY}
    api_url: ${STATUS_URL}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
routes:
  - to: [down]
"""


@dataclass
class StatusAPI:
    """GoAPI's GET /api/v1/task/{id}: answers from ``tasks``, or ``status`` if set."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: int | None = None
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.raw_path, request.headers.get("x-api-key")))
        if self.status is not None:
            return web.json_response({"code": self.status}, status=self.status)
        if request.headers.get("x-api-key") != API_KEY:
            return web.json_response({"code": 401, "message": "invalid api key"}, status=401)
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.json_response({"code": 404, "message": "task not found"}, status=404)
        return web.json_response({"code": 200, "data": task, "message": "success"})

    async def start(self) -> StatusAPI:
        app = web.Application()
        app.router.add_get("/api/v1/task/{id}", self.handle)
        self.runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def status_api() -> AsyncIterator[StatusAPI]:
    api = await StatusAPI().start()
    yield api
    await api.stop()


def relay_server(
    tmp_path: Path,
    downstream: Downstream,
    status_api: StatusAPI,
    providers: dict[str, Provider] | None = None,
) -> RelayServer:
    env = {
        "TOKEN": TOKEN,
        "API_KEY": API_KEY,
        "STATUS_URL": f"http://127.0.0.1:{status_api.port}",
        "DOWN_URL": downstream.url,
        "DOWN_SECRET": SECRET,
    }
    rules = write_rules(tmp_path / "rules", RULES)
    settings = Settings(rules=rules, db=f"sqlite:///{tmp_path / 'relay.db'}")
    return RelayServer(settings, env=env, providers=providers)


@pytest.fixture
async def relay(
    tmp_path: Path, downstream: Downstream, status_api: StatusAPI
) -> AsyncIterator[RelayServer]:
    server = await relay_server(tmp_path, downstream, status_api).start()
    yield server
    await server.stop()


def stored_events(relay: RelayServer) -> int:
    conn = sqlite3.connect(relay.settings.db.removeprefix("sqlite:///"))
    try:
        count: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return count
    finally:
        conn.close()


async def post(relay: RelayServer, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=relay.url) as client:
        return await client.post(f"/hooks/goapi/{TOKEN}", json=body)


def luma() -> dict[str, Any]:
    body, _ = load("goapi/video_success_luma.json")
    return body


async def test_a_confirmed_task_is_delivered_as_the_provider_describes_it(
    relay: RelayServer, status_api: StatusAPI, downstream: Downstream
) -> None:
    body = luma()
    truth = copy.deepcopy(body["data"])
    truth["output"]["generation"]["video"]["url_no_watermark"] = "https://cdn.example/true.mp4"
    status_api.tasks[truth["task_id"]] = truth
    # The callback claims another video: only the provider's word is delivered.
    body["data"]["output"]["generation"]["video"]["url_no_watermark"] = "https://evil.example/x"
    r = await post(relay, body)
    assert r.status_code == 200, r.text
    await downstream.wait_for(1)
    sent = Webhook(SECRET).verify(downstream.received[0].body, downstream.received[0].headers)
    assert [o["url"] for o in sent["data"]["outputs"]] == ["https://cdn.example/true.mp4"]
    assert "evil.example" not in downstream.received[0].body.decode()
    assert status_api.seen == [(f"/api/v1/task/{truth['task_id']}", API_KEY)]
    # Under the callback's identity: its event id, its source, when it arrived.
    assert sent["data"]["id"] == r.json()["event_id"]
    assert sent["data"]["source"] == "goapi"
    assert sent["data"]["dedupe_key"] == f"goapi:{truth['task_id']}:succeeded"

    # The same callback again (a provider retry) is a duplicate of that event.
    again = await post(relay, body)
    assert again.json() == {"event_id": r.json()["event_id"], "duplicate": True, "deliveries": 0}


async def test_a_task_the_provider_does_not_know_is_refused_as_forged(
    relay: RelayServer, status_api: StatusAPI
) -> None:
    r = await post(relay, luma())
    assert r.status_code == 401
    assert "unknown to the provider" in r.json()["error"]
    assert stored_events(relay) == 0


async def test_a_final_callback_for_an_unfinished_task_is_refused(
    relay: RelayServer, status_api: StatusAPI
) -> None:
    body = luma()
    truth = copy.deepcopy(body["data"])
    truth["status"] = "processing"
    status_api.tasks[truth["task_id"]] = truth
    r = await post(relay, body)
    assert r.status_code == 401
    assert "processing at the provider" in r.json()["error"]
    assert stored_events(relay) == 0


@pytest.mark.parametrize("status", [500, 502, 401, 403])
async def test_a_status_api_that_cannot_answer_means_503(
    relay: RelayServer, status_api: StatusAPI, status: int
) -> None:
    status_api.status = status
    r = await post(relay, luma())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert stored_events(relay) == 0


async def test_an_unreachable_status_api_means_503(
    relay: RelayServer, status_api: StatusAPI
) -> None:
    await status_api.stop()
    r = await post(relay, luma())
    assert r.status_code == 503
    assert "unreachable" in r.json()["error"]


async def test_the_task_id_is_quoted_into_the_url_built_from_our_config(
    relay: RelayServer, status_api: StatusAPI
) -> None:
    body = luma()
    body["data"]["task_id"] = "../../admin?x=1"
    r = await post(relay, body)
    assert r.status_code == 401  # unknown: the stand-in saw a quoted id, not a path trick
    [(path, key)] = status_api.seen
    assert path == "/api/v1/task/..%2F..%2Fadmin%3Fx%3D1"
    assert key == API_KEY


def test_verify_fetch_without_an_api_key_is_a_config_error(tmp_path: Path) -> None:
    from relay.errors import ConfigError
    from relay.providers import default_providers
    from relay.providers.checks import source_checks
    from relay.routing.loader import load_rules

    write_rules(
        tmp_path,
        "sources:\n  g:\n    provider: goapi\n    token: t\n    verify: fetch\n",
    )
    providers = default_providers()
    with pytest.raises(ConfigError) as caught:
        load_rules(tmp_path, {}, providers.keys(), source_checks(providers))
    assert caught.value.problems == [
        f"{tmp_path / 'rules.yaml'}: sources.g.api_key: is required with verify: fetch"
    ]


class AnswerBug(UnifiedProvider):
    """GoAPI's adapter with a bug in reading the status API's answer."""

    def from_status(self, inbound: Inbound, body: Any, callback: TaskEvent) -> TaskEvent | None:
        raise IndexError("list index out of range")


async def test_an_adapter_that_cannot_read_the_status_answer_means_503(
    tmp_path: Path, downstream: Downstream, status_api: StatusAPI
) -> None:
    # The callback is unconfirmed, so it is not kept: 503, and the provider sends it again.
    body = luma()
    status_api.tasks[body["data"]["task_id"]] = copy.deepcopy(body["data"])
    providers = {**default_providers(), "goapi": AnswerBug("goapi")}
    server = await relay_server(tmp_path, downstream, status_api, providers).start()
    try:
        r = await post(server, body)
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "status API answer not understood: IndexError"}
        assert stored_events(server) == 0
    finally:
        await server.stop()
