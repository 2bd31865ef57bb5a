"""verify: fetch for APIMart, MuAPI and Novita against one local stand-in of their status APIs.

The stand-in serves the three look-ups over real HTTP on 127.0.0.1, each with its provider's
auth header, and answers as the providers document: APIMart ``{code, data: <task>}``, MuAPI the
prediction object, Novita the ``payload`` its webhook wraps.
"""

from __future__ import annotations

import base64
import copy
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load
from tests.local_http import serve_app

SECRET = "whsec_" + base64.b64encode(b"crosscheck-unsigned-down-1").decode()
TOKENS = {"apimart": "tok-apimart-cc", "muapi": "tok-muapi-cc", "novita": "tok-novita-cc"}
KEYS = {"apimart": "apimart-key-1", "muapi": "muapi-key-2", "novita": "novita-key-3"}

RULES = """
sources:
  apimart:
    provider: apimart
    token: ${APIMART_TOKEN}
    verify: fetch
    api_key: ${APIMART_KEY}
    api_url: ${STATUS_URL}
  muapi:
    provider: muapi
    token: ${MUAPI_TOKEN}
    verify: fetch
    api_key: ${MUAPI_KEY}
    api_url: ${STATUS_URL}
  novita:
    provider: novita
    token: ${NOVITA_TOKEN}
    verify: fetch
    api_key: ${NOVITA_KEY}
    api_url: ${STATUS_URL}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
routes:
  - to: [down]
"""

# What each provider answers, with HTTP 200, about a task it does not know.
NOT_FOUND_BODIES: dict[str, dict[str, Any]] = {
    "apimart": {"code": 404, "message": "task not found"},
    "muapi": {"detail": "Prediction not found"},
    "novita": {"code": 404, "reason": "TASK_NOT_FOUND", "message": "task not found"},
}


@dataclass
class StatusAPI:
    """The three status APIs. ``tasks[provider][id]`` is what the provider knows; ``status``
    forces every answer's HTTP status; unknown tasks get ``not_found[provider]`` with HTTP
    ``not_found_status`` (404, or 200 as an API that reports errors in the body)."""

    tasks: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {name: {} for name in KEYS}
    )
    status: int | None = None
    not_found_status: int = 404
    not_found: dict[str, dict[str, Any]] = field(
        default_factory=lambda: copy.deepcopy(NOT_FOUND_BODIES)
    )
    # (provider, path with query as sent, the auth header's value)
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    def answer(self, provider: str, task_id: str, auth: str | None) -> web.Response:
        if self.status is not None:
            return web.json_response({"code": self.status}, status=self.status)
        want = KEYS[provider] if provider == "muapi" else f"Bearer {KEYS[provider]}"
        if auth != want:
            return web.json_response({"code": 401, "message": "invalid api key"}, status=401)
        task = self.tasks[provider].get(task_id)
        if task is None:
            return web.json_response(self.not_found[provider], status=self.not_found_status)
        if provider == "apimart":
            return web.json_response({"code": 200, "data": task})
        return web.json_response(task)

    async def apimart(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.seen.append(("apimart", request.raw_path, auth))
        return self.answer("apimart", request.match_info["id"], auth)

    async def muapi(self, request: web.Request) -> web.Response:
        auth = request.headers.get("x-api-key")
        self.seen.append(("muapi", request.raw_path, auth))
        return self.answer("muapi", request.match_info["id"], auth)

    async def novita(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.seen.append(("novita", request.raw_path, auth))
        return self.answer("novita", request.query.get("task_id", ""), auth)

    async def start(self) -> StatusAPI:
        app = web.Application()
        app.router.add_get("/v1/tasks/{id}", self.apimart)
        app.router.add_get("/api/v1/predictions/{id}/result", self.muapi)
        app.router.add_get("/v3/async/task-result", self.novita)
        self.runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass(frozen=True)
class Case:
    """One provider: its callback, how the status API describes the same task, and edits."""

    provider: str
    hook_path: str
    fixture: str
    # The task object the status API holds, from the callback body.
    task_of: Callable[[dict[str, Any]], dict[str, Any]]
    task_id: Callable[[dict[str, Any]], str]
    set_task_id: Callable[[dict[str, Any], str], None]
    # Put one output URL into a callback body or a status API task.
    set_output: Callable[[dict[str, Any], str], None]
    set_running: Callable[[dict[str, Any]], None]
    # The path and query the status API must see for a task id, and the auth header.
    status_path: Callable[[str], str]
    auth: str

    def callback(self) -> dict[str, Any]:
        body, _ = load(self.fixture)
        return body


def _apimart_output(task: dict[str, Any], url: str) -> None:
    task["result"] = {"images": [{"url": [url], "expires_at": 1763174708}]}


def _apimart_running(task: dict[str, Any]) -> None:
    task.update(status="processing", progress=40)
    task.pop("result", None)
    task.pop("completed", None)


def _muapi_running(task: dict[str, Any]) -> None:
    task.update(status="processing", outputs=[], has_nsfw_contents=[])


def _novita_running(payload: dict[str, Any]) -> None:
    payload["task"].update(status="TASK_STATUS_PROCESSING", progress_percent=40)
    payload["images"] = []


def _novita_task_id(body: dict[str, Any], task_id: str) -> None:
    body["payload"]["task"]["task_id"] = task_id


def _novita_output(payload: dict[str, Any], url: str) -> None:
    payload["images"] = [{"image_type": "png", "image_url": url, "image_url_ttl": "3600"}]


CASES = {
    "apimart": Case(
        provider="apimart",
        hook_path=f"/hooks/apimart/{TOKENS['apimart']}/callback",
        fixture="apimart/image_success.json",
        task_of=lambda body: copy.deepcopy(body["data"]),
        task_id=lambda body: str(body["data"]["id"]),
        set_task_id=lambda body, task_id: body["data"].update(id=task_id),
        set_output=lambda task, url: _apimart_output(task.get("data", task), url),
        set_running=_apimart_running,
        status_path=lambda quoted: f"/v1/tasks/{quoted}",
        auth=f"Bearer {KEYS['apimart']}",
    ),
    "muapi": Case(
        provider="muapi",
        hook_path=f"/hooks/muapi/{TOKENS['muapi']}",
        fixture="muapi/image_success.json",
        task_of=copy.deepcopy,
        task_id=lambda body: str(body["id"]),
        set_task_id=lambda body, task_id: body.update(id=task_id),
        set_output=lambda task, url: task.update(outputs=[url], has_nsfw_contents=[False]),
        set_running=_muapi_running,
        status_path=lambda quoted: f"/api/v1/predictions/{quoted}/result",
        auth=KEYS["muapi"],
    ),
    "novita": Case(
        provider="novita",
        hook_path=f"/hooks/novita/{TOKENS['novita']}",
        fixture="novita/image_success.json",
        task_of=lambda body: copy.deepcopy(body["payload"]),
        task_id=lambda body: str(body["payload"]["task"]["task_id"]),
        set_task_id=_novita_task_id,
        set_output=lambda payload, url: _novita_output(payload.get("payload", payload), url),
        set_running=_novita_running,
        status_path=lambda quoted: f"/v3/async/task-result?task_id={quoted}",
        auth=f"Bearer {KEYS['novita']}",
    ),
}
PROVIDERS = sorted(CASES)


@pytest.fixture
async def status_api() -> AsyncIterator[StatusAPI]:
    api = await StatusAPI().start()
    yield api
    await api.stop()


@pytest.fixture
async def relay(
    tmp_path: Path, downstream: Downstream, status_api: StatusAPI
) -> AsyncIterator[RelayServer]:
    env = {
        **{f"{name.upper()}_TOKEN": token for name, token in TOKENS.items()},
        **{f"{name.upper()}_KEY": key for name, key in KEYS.items()},
        "STATUS_URL": f"http://127.0.0.1:{status_api.port}",
        "DOWN_URL": downstream.url,
        "DOWN_SECRET": SECRET,
    }
    rules = write_rules(tmp_path / "rules", RULES)
    settings = Settings(rules=rules, db=f"sqlite:///{tmp_path / 'relay.db'}")
    server = await RelayServer(settings, env=env).start()
    yield server
    await server.stop()


def stored_events(relay: RelayServer) -> list[str]:
    conn = sqlite3.connect(relay.settings.db.removeprefix("sqlite:///"))
    try:
        return [row[0] for row in conn.execute("SELECT event_json FROM events")]
    finally:
        conn.close()


async def post(relay: RelayServer, case: Case, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=relay.url) as client:
        return await client.post(case.hook_path, json=body)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_confirmed_task_is_delivered_as_the_provider_describes_it(
    relay: RelayServer, status_api: StatusAPI, downstream: Downstream, provider: str
) -> None:
    case = CASES[provider]
    body = case.callback()
    truth = case.task_of(body)
    case.set_output(truth, f"https://cdn.example/{provider}-true.png")
    status_api.tasks[provider][case.task_id(body)] = truth
    # The callback claims another output: only the provider's word is delivered.
    case.set_output(body, "https://evil.example/x.png")
    r = await post(relay, case, body)
    assert r.status_code == 200, r.text
    await downstream.wait_for(1)
    sent = Webhook(SECRET).verify(downstream.received[0].body, downstream.received[0].headers)
    assert sent["data"]["provider"] == provider
    assert sent["data"]["task_id"] == case.task_id(body)
    assert sent["data"]["status"] == "succeeded"
    assert [o["url"] for o in sent["data"]["outputs"]] == [
        f"https://cdn.example/{provider}-true.png"
    ]
    assert "evil.example" not in downstream.received[0].body.decode()
    assert status_api.seen == [(provider, case.status_path(case.task_id(body)), case.auth)]


async def test_novita_token_echoed_by_the_status_api_is_scrubbed(
    relay: RelayServer, status_api: StatusAPI, downstream: Downstream
) -> None:
    case = CASES["novita"]
    token = TOKENS["novita"]
    body = case.callback()
    body["payload"]["extra"]["webhook"]["url"] = f"https://relay.example/hooks/novita/{token}"
    truth = case.task_of(body)
    status_api.tasks["novita"][case.task_id(body)] = truth
    r = await post(relay, case, body)
    assert r.status_code == 200, r.text
    await downstream.wait_for(1)
    delivered = downstream.received[0].body.decode()
    assert token not in delivered
    sent = json.loads(delivered)
    assert sent["data"]["raw"]["payload"]["extra"]["webhook"]["url"] == (
        "https://relay.example/hooks/novita/[redacted]"
    )
    [stored] = stored_events(relay)
    assert token not in stored


@pytest.mark.parametrize("not_found_status", [404, 200])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_task_the_provider_does_not_know_is_refused_as_forged(
    relay: RelayServer, status_api: StatusAPI, provider: str, not_found_status: int
) -> None:
    case = CASES[provider]
    status_api.not_found_status = not_found_status
    r = await post(relay, case, case.callback())
    assert r.status_code == 401
    assert "unknown to the provider" in r.json()["error"]
    assert stored_events(relay) == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_task_answered_for_another_id_is_refused_as_forged(
    relay: RelayServer, status_api: StatusAPI, provider: str
) -> None:
    case = CASES[provider]
    body = case.callback()
    other = case.callback()
    case.set_task_id(other, "someone-elses-task")
    status_api.tasks[provider][case.task_id(body)] = case.task_of(other)
    r = await post(relay, case, body)
    assert r.status_code == 401
    assert stored_events(relay) == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_final_callback_for_an_unfinished_task_is_refused(
    relay: RelayServer, status_api: StatusAPI, provider: str
) -> None:
    case = CASES[provider]
    body = case.callback()
    truth = case.task_of(body)
    case.set_running(truth)
    status_api.tasks[provider][case.task_id(body)] = truth
    r = await post(relay, case, body)
    assert r.status_code == 401
    assert "at the provider" in r.json()["error"]
    assert stored_events(relay) == []


@pytest.mark.parametrize("status", [500, 401])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_status_api_that_cannot_answer_means_503(
    relay: RelayServer, status_api: StatusAPI, provider: str, status: int
) -> None:
    case = CASES[provider]
    status_api.status = status
    r = await post(relay, case, case.callback())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert stored_events(relay) == []


async def test_apimart_code_500_in_a_200_answer_means_503(
    relay: RelayServer, status_api: StatusAPI
) -> None:
    case = CASES["apimart"]
    status_api.not_found_status = 200
    # HTTP 200, but the body's code says APIMart could not look the task up.
    status_api.not_found["apimart"] = {"code": 500, "message": "busy"}
    r = await post(relay, case, case.callback())
    assert r.status_code == 503
    assert stored_events(relay) == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_task_id_is_quoted_into_the_url_built_from_our_config(
    relay: RelayServer, status_api: StatusAPI, provider: str
) -> None:
    case = CASES[provider]
    body = case.callback()
    case.set_task_id(body, "../../admin?x=1&task_id=y#z")
    r = await post(relay, case, body)
    assert r.status_code == 401  # unknown: the stand-in saw a quoted id, not a path trick
    [(seen_provider, path, auth)] = status_api.seen
    assert seen_provider == provider
    assert path == case.status_path("..%2F..%2Fadmin%3Fx%3D1%26task_id%3Dy%23z")
    assert auth == case.auth
