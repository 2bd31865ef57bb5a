"""The log of a real ``relay serve`` (and ``relay worker``): one JSON object a line, one line per
callback and per delivery outcome with their fields, and no configured secret anywhere in it.

Secrets sit in every place the rules can hold one: a URL-token source, a shared-secret source,
a signed (Standard Webhooks) source, a signing webhook with a secret header, a Slack bot token
(the Slack stand-in), a Slack incoming-webhook URL, an SMTP AUTH password (the SMTP server),
the admin token, and (on PostgreSQL) the database URL's password. The log is made to meet each
of them: every callback kind, deliveries that succeed, retry and die, and refused requests whose
path names a secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from relay import signing
from relay.channels.base import Delivery
from relay.channels.webhook import render_body
from tests.downstream import Downstream
from tests.e2e.cli import GOAPI_SECRET, Serve, Worker, base_env, write
from tests.events_factory import make_event
from tests.fixtures_util import load
from tests.slack_standin import SlackStandIn
from tests.smtp_fixtures import SmtpServerFactory
from tests.smtp_server import TestCA


def _whsec(seed: bytes) -> str:
    key = base64.b64encode(seed).decode()
    # Path-safe, so a request can name it in its path (see ``secret_paths``).
    assert key.isalnum(), key
    return f"whsec_{key}"


APIMART_TOKEN = "am-logs-Token-7Yq2Kd9x"
STANDARD_SECRET = _whsec(b"standard-source-signing-key")
DOWN_SECRET = _whsec(b"webhook-destination-signs!!")
HEADER_TOKEN = "hdr-Bearer-9f8e7d6c5b4a"
SLACK_TOKEN = "xoxb-logs-3141592653589"
SLACK_HOOK = "hooksecret0123456789abc"
SMTP_PASSWORD = "smtp-pass-2718281828459"
ADMIN_TOKEN = "admin-token-logs-0123456789"
DB_PASSWORD = "db-pass-1618033988749"
GUESSED = "guessed-token-deadbeef42"  # a refused request's token: not configured, still hidden

RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
  apimart:
    provider: apimart
    token: ${APIMART_TOKEN}
  signed:
    provider: standard
    secret: ${STANDARD_SECRET}
destinations:
  hook:
    type: webhook
    url: ${HOOK_URL}
    secret: ${DOWN_SECRET}
    headers:
      Authorization: Bearer ${HEADER_TOKEN}
  failing:
    type: webhook
    url: ${FAILING_URL}
    retry: {schedule: [50ms]}
  slack:
    type: slack
    token: ${SLACK_TOKEN}
    channel: "#renders"
    api_url: ${SLACK_API}
    pace: 0s
  slack-hook:
    type: slack
    webhook_url: ${SLACK_WEBHOOK}
    pace: 0s
  mail:
    type: email
    to: [ops@example.com]
    from: relay@example.com
    host: 127.0.0.1
    port: ${SMTP_PORT}
    username: relay
    password: ${SMTP_PASSWORD}
    ca_file: ${CA_FILE}
routes:
  - match: ['source="goapi"']
    to: [hook, slack, slack-hook, mail]
  - match: ['source="apimart"']
    to: [failing]
  - match: ['source="signed"']
    to: [hook]
"""


@dataclass
class World:
    """The servers relay talks to, and the environment that points it at them."""

    env: dict[str, str]
    hook: Downstream
    failing: Downstream
    slack: SlackStandIn

    @property
    def secrets(self) -> dict[str, str]:
        """Every configured secret (and the refused token), by what it is."""
        found = {
            "goapi secret": GOAPI_SECRET,
            "apimart token": APIMART_TOKEN,
            "standard secret": STANDARD_SECRET,
            "standard key": STANDARD_SECRET.removeprefix("whsec_"),
            "webhook secret": DOWN_SECRET,
            "webhook key": DOWN_SECRET.removeprefix("whsec_"),
            "header token": HEADER_TOKEN,
            "slack token": SLACK_TOKEN,
            "slack webhook": SLACK_HOOK,
            "smtp password": SMTP_PASSWORD,
            "admin token": ADMIN_TOKEN,
            "refused token": GUESSED,
        }
        if DB_PASSWORD in self.env.get("RELAY_DB", ""):
            found["database password"] = DB_PASSWORD
        return found


@pytest.fixture
async def world(
    tmp_path: Path, smtp_server: SmtpServerFactory, test_ca: TestCA
) -> AsyncIterator[World]:
    smtp = await smtp_server(tls_mode="starttls", auth={"relay": SMTP_PASSWORD})
    slack = await SlackStandIn(tokens=[SLACK_TOKEN], webhooks=[SLACK_HOOK]).start()
    hook = await Downstream().start()
    failing = await Downstream(responses=[(500, {})] * 10).start()
    write(tmp_path / "rules", {"rules.yaml": RULES})
    env = base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        APIMART_TOKEN=APIMART_TOKEN,
        STANDARD_SECRET=STANDARD_SECRET,
        HOOK_URL=hook.url,
        DOWN_SECRET=DOWN_SECRET,
        HEADER_TOKEN=HEADER_TOKEN,
        FAILING_URL=failing.url,
        SLACK_TOKEN=SLACK_TOKEN,
        SLACK_API=slack.api_url,
        SLACK_WEBHOOK=slack.webhook_url(SLACK_HOOK),
        SMTP_PORT=str(smtp.port),
        SMTP_PASSWORD=SMTP_PASSWORD,
        CA_FILE=str(test_ca.ca_file),
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_MAX_BODY="65536",
        RELAY_DB=f"sqlite:///{tmp_path / 'relay.db'}",
    )
    try:
        yield World(env, hook, failing, slack)
    finally:
        await slack.stop()
        await hook.stop()
        await failing.stop()


def signed_body(secret: str) -> tuple[bytes, dict[str, str]]:
    """A Standard Webhooks request (relay's own envelope) signed with ``secret``."""
    delivery_id = f"dlv_{uuid.uuid4().hex}"
    body = render_body(Delivery(delivery_id, "up", 1, make_event(source="up")), "event")
    key = signing.decode_secret(SecretStr(secret))
    headers = signing.headers([key], delivery_id, int(time.time()), body)
    return body, {"content-type": "application/json", **headers}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            parsed = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from None
        assert isinstance(parsed, dict), line
        lines.append(parsed)
    return lines


def matching(lines: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    return [line for line in lines if all(line.get(k) == v for k, v in fields.items())]


def delivery_outcomes(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in matching(lines, logger="relay.dispatcher") if "outcome" in line]


async def until(
    condition: Callable[[], bool], what: str, server: Serve, within: float = 20.0
) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen:\n{server.output()}")
        await asyncio.sleep(0.05)


def secret_paths(world: World) -> list[str]:
    """Refused requests that name a secret in their path (where a source name would be): the
    log shows the path, so only the scrubber stands between the secret and the log."""
    # The refused token is no configured secret: in a token's place only (masked there).
    return [f"/hooks/{secret}" for secret in world.secrets.values() if secret != GUESSED]


async def post_everything(client: httpx.AsyncClient, world: World) -> dict[str, Any]:
    """Every kind of callback; what each was answered, by name."""
    flux, flux_headers = load("goapi/image_success_flux.json")
    answers: dict[str, Any] = {}
    r = await client.post("/hooks/goapi", json=flux, headers=flux_headers)
    answers["accepted"] = r.json()
    r = await client.post("/hooks/goapi", json=flux, headers=flux_headers)
    answers["duplicate"] = r.json()
    apimart, _ = load("apimart/image_success.json")
    r = await client.post(f"/hooks/apimart/{APIMART_TOKEN}/callback", json=apimart)
    answers["apimart"] = r.json()
    body, headers = signed_body(STANDARD_SECRET)
    r = await client.post("/hooks/signed", content=body, headers=headers)
    answers["signed"] = r.json()
    statuses = {
        "wrong token": await client.post(f"/hooks/apimart/{GUESSED}/callback", json=apimart),
        "wrong secret": await client.post(
            "/hooks/goapi", json=flux, headers={"x-webhook-secret": GUESSED}
        ),
        "bad signature": await client.post(
            "/hooks/signed", content=body, headers=signed_body(_whsec(b"not-the-right-key!"))[1]
        ),
        "bad json": await client.post(
            "/hooks/goapi", content=b"{nope", headers={"x-webhook-secret": GOAPI_SECRET}
        ),
        "unknown": await client.post("/hooks/nosuch", json={}),
        "method": await client.get("/hooks/goapi"),
        "too large": await client.post("/hooks/goapi", content=b"x" * 70_000),
    }
    for path in secret_paths(world):
        r = await client.post(path, json={"echo": path})
        assert r.status_code == 404, (path, r.text)
    answers["refused"] = {name: r.status_code for name, r in statuses.items()}
    return answers


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, world: World) -> str:
    """The store's URL; PostgreSQL's carries a password (the test server trusts 127.0.0.1, so
    it is accepted and ignored)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        world.env["RELAY_DB"] = url.replace(
            "postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@"
        )
        assert DB_PASSWORD in world.env["RELAY_DB"]
    return world.env["RELAY_DB"]


async def test_json_log_has_a_line_per_callback_and_outcome_and_no_secret(
    tmp_path: Path, world: World, database: str
) -> None:
    # The flag wins over the variable.
    world.env["RELAY_LOG_FORMAT"] = "text"
    server = await Serve(tmp_path, world.env, "serve", "--log-format", "json").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            answers = await post_everything(client, world)

        def delivery_lines() -> list[dict[str, Any]]:
            return delivery_outcomes(json_lines(server.output()))

        def all_done() -> bool:
            outcomes = {(line["destination"], line["outcome"]) for line in delivery_lines()}
            wanted = {("hook", "delivered"), ("slack", "delivered"), ("slack-hook", "delivered")}
            wanted |= {("mail", "delivered"), ("failing", "retried"), ("failing", "dead")}
            hooks = [line for line in delivery_lines() if line["destination"] == "hook"]
            return wanted <= outcomes and len(hooks) == 2

        await until(all_done, "every delivery outcome", server)
    finally:
        code = await server.stop()
    assert code in (0, -signal.SIGTERM), server.output()
    assert answers["refused"] == {
        "wrong token": 401,
        "wrong secret": 401,
        "bad signature": 401,
        "bad json": 400,
        "unknown": 404,
        "method": 405,
        "too large": 413,
    }
    log = server.output()
    lines = json_lines(log)  # every line, uvicorn's and the shutdown's included
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
    assert matching(lines, logger="uvicorn")  # uvicorn's own lines, in the same format

    # One line per callback, with its fields.
    flux, _ = load("goapi/image_success_flux.json")
    [accepted] = matching(lines, logger="relay.hooks", source="goapi", outcome="accepted")
    assert accepted["message"] == "callback accepted"
    assert accepted["status"] == 200 and accepted["duplicate"] is False
    assert accepted["event_id"] == answers["accepted"]["event_id"]
    assert accepted["task_id"] == flux["data"]["task_id"]
    assert accepted["deliveries"] == 4
    assert accepted["client"] == "127.0.0.1" and accepted["path"] == "/hooks/goapi"
    [duplicate] = matching(lines, logger="relay.hooks", outcome="duplicate")
    assert duplicate["duplicate"] is True and duplicate["event_id"] == accepted["event_id"]
    [apimart] = matching(lines, logger="relay.hooks", source="apimart", outcome="accepted")
    assert apimart["path"] == "/hooks/apimart/****/callback"
    assert apimart["event_id"] == answers["apimart"]["event_id"]
    assert matching(lines, logger="relay.hooks", source="signed", outcome="accepted")

    refused = matching(lines, logger="relay.hooks", outcome="refused_auth")
    assert {(r["source"], r["path"]) for r in refused} == {
        ("apimart", "/hooks/apimart/****/callback"),
        ("goapi", "/hooks/goapi"),
        ("signed", "/hooks/signed"),
    }
    assert all(r["status"] == 401 and r["reason"] for r in refused)
    [bad_json] = matching(lines, logger="relay.hooks", outcome="refused_payload")
    assert bad_json["status"] == 400 and "JSON" in bad_json["reason"]
    [too_large] = matching(lines, logger="relay.hooks", outcome="refused_too_large")
    assert too_large["status"] == 413 and "65536" in too_large["reason"]
    [method] = matching(lines, logger="relay.hooks", outcome="refused_method")
    assert method["status"] == 405
    unknown = matching(lines, logger="relay.hooks", outcome="refused_unknown_source")
    assert len(unknown) == 1 + len(secret_paths(world))
    assert all(r["source"] == "(unknown)" and r["status"] == 404 for r in unknown)

    # One line per delivery outcome, with its fields.
    deliveries = delivery_outcomes(lines)
    for line in deliveries:
        assert line["message"] == f"delivery {line['outcome']}"
        for key in ("event_id", "delivery_id", "source", "task_id", "destination", "attempt"):
            assert line[key] not in (None, ""), (key, line)
        assert isinstance(line["duration_ms"], float)
    delivered = matching(deliveries, outcome="delivered")
    to_goapi = [d for d in delivered if d["event_id"] == accepted["event_id"]]
    assert {d["destination"] for d in to_goapi} == {"hook", "slack", "slack-hook", "mail"}
    assert all(d["task_id"] == accepted["task_id"] and d["attempt"] == 1 for d in to_goapi)
    [retried] = matching(deliveries, outcome="retried")
    [dead] = matching(deliveries, outcome="dead")
    assert retried["level"] == "info" and dead["level"] == "warning"
    assert retried["event_id"] == dead["event_id"] == apimart["event_id"]
    assert retried["delivery_id"] == dead["delivery_id"]
    assert (retried["attempt"], dead["attempt"]) == (1, 2)
    assert "500" in retried["reason"] and "gave up after 2 attempts" in dead["reason"]
    assert retried["next_attempt_at"].endswith("Z") and "next_attempt_at" not in dead

    # The deliveries really carried the secrets (so the test would see a leak)...
    assert world.hook.received[0].headers["Authorization"] == f"Bearer {HEADER_TOKEN}"
    assert world.slack.calls_to("chat.postMessage")
    # ... and not one of them is in the log, in any form JSON could give it.
    for what, secret in world.secrets.items():
        assert secret not in log, what
        assert json.dumps(secret)[1:-1] not in log, what
    assert "[redacted]" in log  # the secret-named paths were there, scrubbed


async def test_text_log_appends_the_fields_as_key_value(tmp_path: Path, world: World) -> None:
    server = await Serve(tmp_path, world.env, "serve", "--log-format", "text").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            flux, headers = load("goapi/image_success_flux.json")
            ok = await client.post("/hooks/goapi", json=flux, headers=headers)
            no = await client.post(f"/hooks/apimart/{GUESSED}", json={"a": 1})
        assert (ok.status_code, no.status_code) == (200, 401)
        await until(
            lambda: "relay.dispatcher: delivery delivered" in server.output(), "a delivery", server
        )
    finally:
        await server.stop()
    log = server.output()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    event_id = ok.json()["event_id"]
    assert re.search(
        rf"^{stamp} INFO relay\.hooks: callback accepted source=goapi outcome=accepted "
        rf"status=200 event_id={event_id} task_id={flux['data']['task_id']} "
        r"task_status=succeeded deliveries=4 duplicate=False client=127\.0\.0\.1 "
        r"path=/hooks/goapi$",
        log,
        re.MULTILINE,
    ), log
    assert re.search(
        rf"^{stamp} INFO relay\.hooks: callback refused_auth source=apimart "
        r'outcome=refused_auth status=401 reason="token does not match" '
        r"client=127\.0\.0\.1 path=/hooks/apimart/\*\*\*\*$",
        log,
        re.MULTILINE,
    ), log
    assert re.search(
        rf"^{stamp} INFO relay\.dispatcher: delivery delivered event_id={event_id} ", log, re.M
    )
    assert not any(line.startswith("{") for line in log.splitlines())
    for what, secret in world.secrets.items():
        assert secret not in log, what


async def test_worker_logs_json_too(tmp_path: Path, world: World) -> None:
    # The worker needs the database to exist: a serve run creates it.
    serve = await Serve(tmp_path, world.env, "serve").start()
    await serve.stop()
    worker = await Worker(tmp_path, world.env, "worker", "--log-format", "json").start()
    try:
        await until(lambda: bool(worker.output().strip()), "a worker log line", worker)
    finally:
        await worker.stop()
    lines = json_lines(worker.output())
    assert matching(lines, level="info")
    for secret in world.secrets.values():
        assert secret not in worker.output()
