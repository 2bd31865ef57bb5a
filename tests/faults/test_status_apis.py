"""Dot segments and other path tricks in task ids, against a local status API for every
provider that has one (``verify: fetch``), with a real ``relay serve``.

Each provider's ``api_url`` is a local stand-in under its own path prefix, so a request that
escapes the task's own status path (a dot segment collapsed by the HTTP client, a slash or a
``?`` let through unquoted) lands somewhere the stand-in can see, with the provider's API key
on it. The stand-in answers a task only at that task's own status path; anything else it
records and answers 404. Proven, per provider and per task id:

- the status API saw at most one request per callback, at exactly the expected path (the id
  as one quoted path segment, or URL-encoded into Novita's query string), never a dot segment,
  and each with its own provider's key; no request ever went anywhere else;
- the callback was either refused with a 400 naming the reason (a dot segment where it would
  be a path segment: nothing sent) or verified through that path, acknowledged and delivered;
- a status API answering with a redirect gets a 503, and the redirect is not followed (the key
  does not go to the new location);
- no API key reached the downstream or relay's log; every acknowledged callback settles.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from aiohttp import web

from tests.downstream import Downstream
from tests.e2e.cli import GOAPI_SECRET
from tests.faults.harness import Ledger, Relay, settled
from tests.fixtures_util import load
from tests.local_http import serve_app

PI_SECRET = "pi-relay-secret"  # what the PiAPI fixture sends
DOWN_SECRET = "whsec_" + base64.b64encode(b"fault-status-apis-down-1").decode()
TOKENS = {"apimart": "tok-am-status-71", "muapi": "tok-mu-status-72", "novita": "tok-nv-status-73"}
KEYS = {
    "goapi": "key-goapi-a1b2c3",
    "piapi": "key-piapi-d4e5f6",
    "apimart": "key-apimart-g7h8",
    "muapi": "key-muapi-i9j0k1",
    "novita": "key-novita-l2m3n4",
}

RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
    verify: fetch
    api_key: ${GOAPI_KEY}
    api_url: ${STATUS_URL}/goapi
  piapi:
    provider: piapi
    secret: ${PI_SECRET}
    verify: fetch
    api_key: ${PIAPI_KEY}
    api_url: ${STATUS_URL}/piapi
  apimart:
    provider: apimart
    token: ${APIMART_TOKEN}
    verify: fetch
    api_key: ${APIMART_KEY}
    api_url: ${STATUS_URL}/apimart
  muapi:
    provider: muapi
    token: ${MUAPI_TOKEN}
    verify: fetch
    api_key: ${MUAPI_KEY}
    api_url: ${STATUS_URL}/muapi
  novita:
    provider: novita
    token: ${NOVITA_TOKEN}
    verify: fetch
    api_key: ${NOVITA_KEY}
    api_url: ${STATUS_URL}/novita
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
routes:
  - to: [down]
"""

# Dot segments, encoded dot segments, slashes, query and fragment marks, a backslash, a
# semicolon (path parameters), and ids that merely look like them.
TASK_IDS = [
    ".",
    "..",
    "...",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "..%2f",
    "..%2F..%2Fadmin",
    "a/../b",
    "../../admin",
    "./x",
    "x/.",
    "a?b",
    "a#b",
    "a?b#c/../d",
    "..\\x",
    "..;x",
    " .. ",
    "\t.\n",
    "é/..",
]
REDIRECTED = "redirect-me"
ELSEWHERE = "/elsewhere"


@dataclass(frozen=True)
class Case:
    """One provider: its callback fixture, where its task id sits, its status path."""

    provider: str
    hook: str
    fixture: str
    headers: dict[str, str]
    # The callback's task object (also what the status API holds) and its id field.
    task: Callable[[dict[str, Any]], dict[str, Any]]
    id_key: str
    # What the status API answers for a task it holds.
    answer: Callable[[dict[str, Any]], dict[str, Any]]
    # (before, after) the id in the path; Novita: the whole path, the id in its query.
    around: tuple[str, str]
    in_query: bool
    auth_header: str
    auth: str

    def callback(self, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A callback body for ``task_id``, and the task the status API answers with."""
        body, _ = load(self.fixture)
        self.task(body)[self.id_key] = task_id
        return body, copy.deepcopy(self.task(body))

    def task_id_of(self, raw_path: str) -> str | None:
        """The task id a request asks for, if it is at this provider's status path exactly
        (the id one quoted segment: no dot segment, no slash; Novita: in the query)."""
        prefix = f"/{self.provider}"
        if self.in_query:
            parts = urlsplit(raw_path)
            query = parse_qs(parts.query, keep_blank_values=True)
            if parts.path != prefix + self.around[0] or list(query) != ["task_id"]:
                return None
            [task_id] = query["task_id"]
            return task_id
        before, after = prefix + self.around[0], self.around[1]
        if not raw_path.startswith(before) or not raw_path.endswith(after):
            return None
        segment = raw_path[len(before) : len(raw_path) - len(after)]
        # Unescaped '/', '?', '#' or a dot segment would each move the request elsewhere.
        if not segment or any(c in segment for c in "/?#") or segment in (".", ".."):
            return None
        return unquote(segment)


def _unified(provider: str, fixture: str, secret: str) -> Case:
    return Case(
        provider=provider,
        hook=f"/hooks/{provider}",
        fixture=fixture,
        headers={"x-webhook-secret": secret},
        task=lambda body: body["data"],
        id_key="task_id",
        answer=lambda task: {"code": 200, "data": task, "message": "success"},
        around=("/api/v1/task/", ""),
        in_query=False,
        auth_header="x-api-key",
        auth=KEYS[provider],
    )


CASES = [
    _unified("goapi", "goapi/image_success_flux.json", GOAPI_SECRET),
    _unified("piapi", "piapi/audio_success_suno_music.json", PI_SECRET),
    Case(
        provider="apimart",
        hook=f"/hooks/apimart/{TOKENS['apimart']}/callback",
        fixture="apimart/image_success.json",
        headers={},
        task=lambda body: body["data"],
        id_key="id",
        answer=lambda task: {"code": 200, "data": task},
        around=("/v1/tasks/", ""),
        in_query=False,
        auth_header="authorization",
        auth=f"Bearer {KEYS['apimart']}",
    ),
    Case(
        provider="muapi",
        hook=f"/hooks/muapi/{TOKENS['muapi']}",
        fixture="muapi/image_success.json",
        headers={},
        task=lambda body: body,
        id_key="id",
        answer=lambda task: task,
        around=("/api/v1/predictions/", "/result"),
        in_query=False,
        auth_header="x-api-key",
        auth=KEYS["muapi"],
    ),
    Case(
        provider="novita",
        hook=f"/hooks/novita/{TOKENS['novita']}",
        fixture="novita/image_success.json",
        headers={},
        task=lambda body: body["payload"]["task"],
        id_key="task_id",
        # The Task Result API answers the payload the webhook wraps.
        answer=lambda task: {"task": task, "images": [], "extra": {}},
        around=("/v3/async/task-result", ""),
        in_query=True,
        auth_header="authorization",
        auth=f"Bearer {KEYS['novita']}",
    ),
]


@dataclass
class Seen:
    raw_path: str
    headers: dict[str, str]


@dataclass
class StatusAPIs:
    """Every provider's status API on one local server, each under ``/<provider>``. Answers
    a task only at its own status path, with the right key; records every request."""

    tasks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.raw_path, {k.lower(): v for k, v in request.headers.items()}))
        for case in CASES:
            task_id = case.task_id_of(request.raw_path)
            if task_id is None:
                continue
            if request.headers.get(case.auth_header) != case.auth:
                return web.json_response({"code": 401, "message": "invalid api key"}, status=401)
            if task_id == REDIRECTED:
                # Where a careless client would follow, taking the key along.
                raise web.HTTPTemporaryRedirect(f"{ELSEWHERE}/{case.provider}")
            task = self.tasks.get((case.provider, task_id))
            if task is not None:
                return web.json_response(case.answer(task))
        return web.json_response({"code": 404, "message": "task not found"}, status=404)

    async def start(self) -> StatusAPIs:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def status_apis() -> AsyncIterator[StatusAPIs]:
    apis = await StatusAPIs().start()
    yield apis
    await apis.stop()


def known_as(task_id: str) -> str:
    """The task id relay reads from a callback: adapters strip surrounding blanks."""
    return task_id.strip()


def refused_as_path_segment(case: Case, task_id: str) -> bool:
    """A dot segment where the id is a path segment: the one id relay must refuse (400)."""
    return not case.in_query and known_as(task_id) in (".", "..")


async def test_no_task_id_sends_our_key_anywhere_but_its_own_status_path(
    make_relay: Callable[..., Relay], status_apis: StatusAPIs, downstream: Downstream
) -> None:
    relay = make_relay(
        RULES,
        GOAPI_SECRET=GOAPI_SECRET,
        PI_SECRET=PI_SECRET,
        STATUS_URL=f"http://127.0.0.1:{status_apis.port}",
        DOWN_URL=downstream.url,
        DOWN_SECRET=DOWN_SECRET,
        **{f"{name.upper()}_TOKEN": token for name, token in TOKENS.items()},
        **{f"{name.upper()}_KEY": key for name, key in KEYS.items()},
    )
    serve = await relay.serve()
    ledger = Ledger()
    verified: set[tuple[str, str]] = set()
    asked_total = 0
    async with httpx.AsyncClient(base_url=serve.url, timeout=10) as client:
        for case in CASES:
            for task_id in TASK_IDS:
                body, task = case.callback(task_id)
                status_apis.tasks[(case.provider, known_as(task_id))] = task
                before = len(status_apis.seen)
                answer = await ledger.post(client, case.hook, body, case.headers)
                asked = status_apis.seen[before:]
                what = f"{case.provider} {task_id!r}: {answer.status_code} {answer.text}"
                if refused_as_path_segment(case, task_id):
                    assert answer.status_code == 400, what
                    assert "cannot be looked up" in answer.json()["error"], what
                    assert asked == [], what
                    continue
                # Verified through the task's own status path, and nowhere else.
                assert answer.status_code == 200, what
                assert [case.task_id_of(s.raw_path) for s in asked] == [known_as(task_id)], (
                    what,
                    [s.raw_path for s in asked],
                )
                # " .. " is read as "..": for Novita (a query) the same task again, verified
                # again, then answered as a duplicate of the first.
                again = (case.provider, known_as(task_id)) in verified
                assert answer.json()["duplicate"] is again, what
                asked_total += 1
                if not again:
                    verified.add((case.provider, known_as(task_id)))

            # A status API answering with a redirect: 503, and nobody goes there.
            body, _ = case.callback(REDIRECTED)
            before = len(status_apis.seen)
            answer = await ledger.post(client, case.hook, body, case.headers)
            assert answer.status_code == 503, answer.text
            assert "307" in answer.json()["error"], answer.text
            assert [case.task_id_of(s.raw_path) for s in status_apis.seen[before:]] == [REDIRECTED]

    # Every request the status APIs saw was a task's own status path, with its own key only.
    for seen in status_apis.seen:
        owners = [c for c in CASES if c.task_id_of(seen.raw_path) is not None]
        assert len(owners) == 1, seen.raw_path
        [owner] = owners
        assert seen.headers.get(owner.auth_header) == owner.auth, seen
        others = [k for name, k in KEYS.items() if name != owner.provider]
        assert not [k for k in others if k in repr(seen.headers)], seen
    assert not [s for s in status_apis.seen if s.raw_path.startswith(ELSEWHERE)]
    refused = sum(refused_as_path_segment(c, t) for c in CASES for t in TASK_IDS)
    assert asked_total == len(CASES) * len(TASK_IDS) - refused
    assert len(status_apis.seen) == asked_total + len(CASES)

    found = await settled(serve, ledger, within=20)
    assert len(found) == len(verified)
    assert all(d["state"] == "delivered" for ds in found.values() for d in ds)
    await downstream.wait_for(len(verified))
    # The keys went to the status APIs only: not downstream, not into the log.
    for item in downstream.received:
        sent = item.body.decode() + repr(item.headers)
        assert not [k for k in KEYS.values() if k in sent], item
    logs = relay.logs()
    assert not [k for k in KEYS.values() if k in logs]
