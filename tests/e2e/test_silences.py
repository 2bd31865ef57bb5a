"""Silences, mute windows and the account-alert inhibition through the app under uvicorn, with
the Slack stand-in and a webhook receiver: held deliveries are stored as silenced (visible,
counted), nothing reaches the destination while held, and a release sends them."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.cli import arelay, base_env
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load
from tests.slack_standin import SlackStandIn

GOAPI = "s3cr3t-relay-goapi"
ACCOUNT = "s3cr3t-goapi-account"
TOKEN = "silences-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}


def rules(slack: SlackStandIn, down: str, *, route_extra: str = "") -> str:
    return f"""
sources:
  goapi:
    provider: goapi
    secret: {GOAPI}
  account:
    provider: goapi-account
    secret: {ACCOUNT}
destinations:
  renders:
    type: slack
    token: xoxb-test
    channel: "#renders"
    api_url: {slack.api_url}
    pace: 0s
  ops:
    type: webhook
    url: {down}
routes:
  - match: ['provider="goapi-account"']
    to: [ops]
  - to: [renders]
{route_extra}
inhibit:
  - when: ['provider="goapi-account"', 'error_code="mj_bot_banned"']
    mute: ['provider="goapi"', 'status="failed"']
    for: 1h
"""


def settings_for(tmp_path: Path, text: str) -> Settings:
    return Settings(
        rules=write_rules(tmp_path / "rules", text),
        db=f"sqlite:///{tmp_path}/relay.db",
        admin_token=SecretStr(TOKEN),
    )


async def post(
    client: httpx.AsyncClient, fixture: str, task: str, *, now: float | None = None
) -> str:
    body, headers = load(fixture, now=now)
    body["data"]["task_id"] = task
    answer = await client.post("/hooks/goapi", content=json.dumps(body), headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["event_id"])


async def deliveries(client: httpx.AsyncClient, event_id: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/admin/events/{event_id}", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["deliveries"]
    return found


async def settled_as(client: httpx.AsyncClient, event_id: str, state: str) -> dict[str, Any]:
    """The event's one delivery once it is in ``state`` (polled through the admin API)."""
    async with asyncio.timeout(10):
        while True:
            found = await deliveries(client, event_id)
            if [d["state"] for d in found] == [state]:
                return found[0]
            await asyncio.sleep(0.02)


async def test_a_silence_from_the_cli_holds_matching_deliveries_until_released(
    tmp_path: Path, slack: SlackStandIn, downstream: Downstream
) -> None:
    settings = settings_for(tmp_path, rules(slack, downstream.url))
    env = base_env(RELAY_DB=settings.db, RELAY_RULES=str(settings.rules))
    server = await RelayServer(settings).start()
    try:
        made = await arelay(
            tmp_path,
            "silence", "add", 'provider="goapi"', 'status="failed"',
            "--for", "2h", "--comment", "GoAPI outage", "--by", "ana",
            env=env,
        )  # fmt: skip
        assert made.code == 0, made.err
        silence_id = made.out.split(":")[0]
        assert silence_id.startswith("sil_")
        async with httpx.AsyncClient(base_url=server.url) as client:
            failed = await post(client, "goapi/failed_midjourney.json", "task-failed-1")
            held = await settled_as(client, failed, "silenced")
            # A success is not matched: it is delivered while the failure is held.
            ok = await post(client, "goapi/image_success_flux.json", "task-ok-1")
            await settled_as(client, ok, "delivered")
            assert held["last_error"] == f"silenced by {silence_id}: GoAPI outage"
            assert held["attempts"] == 0
            listed = await arelay(tmp_path, "silence", "list", env=env)
            by_state = await client.get("/admin/deliveries?state=silenced", headers=ADMIN)
            only_success = [m.text for m in slack.messages("C0RENDERS")]
            ended = await arelay(tmp_path, "silence", "expire", silence_id, "--release", env=env)
            await settled_as(client, failed, "delivered")
            after = await arelay(tmp_path, "silence", "list", "--all", "--json", env=env)
    finally:
        await server.stop()
    assert listed.code == 0, listed.err
    [row] = [line for line in listed.out.splitlines() if line.startswith(silence_id)]
    assert row.split()[1:3] == ["active", "1"]
    assert 'provider="goapi" status="failed"' in row and "GoAPI outage" in row
    assert [d["id"] for d in by_state.json()["deliveries"]] == [held["id"]]
    # Nothing of the held failure reached Slack while it was held; the release sent it.
    assert len(only_success) == 1 and "task-failed-1" not in json.dumps(only_success)
    assert ended.code == 0, ended.err
    assert ended.out.strip() == f"{silence_id}: ended; released 1 held delivery (due now)"
    texts = [m.text for m in slack.messages("C0RENDERS")]
    assert len(texts) == 2 and any("failed" in t.lower() for t in texts)
    [silence] = json.loads(after.out)["silences"]
    assert (silence["id"], silence["state"], silence["held"], silence["created_by"]) == (
        silence_id,
        "ended",
        0,
        "ana",
    )


async def test_a_bad_silence_is_refused_with_the_reason(
    tmp_path: Path, slack: SlackStandIn, downstream: Downstream
) -> None:
    settings = settings_for(tmp_path, rules(slack, downstream.url))
    env = base_env(RELAY_DB=settings.db, RELAY_RULES=str(settings.rules))
    server = await RelayServer(settings).start()
    try:
        typo = await arelay(tmp_path, "silence", "add", 'provder="goapi"', "--for", "1h", env=env)
        forever = await arelay(
            tmp_path, "silence", "add", 'status="failed"', "--for", "1y", env=env
        )
        async with httpx.AsyncClient(base_url=server.url) as client:
            api = await client.post(
                "/admin/silences",
                json={"matchers": ['status=~"("'], "duration": "1h"},
                headers=ADMIN,
            )
            both = await client.post(
                "/admin/silences",
                json={"matchers": ['status="failed"'], "duration": "1h", "ends_at": "2h"},
                headers=ADMIN,
            )
            missing = await client.get("/admin/silences/sil_nope", headers=ADMIN)
    finally:
        await server.stop()
    assert typo.code == 2 and "unknown label 'provder'" in typo.err
    assert forever.code == 2 and "duration" in forever.err
    assert api.status_code == 400 and api.json()["error"] == "bad silence"
    assert "status=~" in api.json()["problems"][0]
    assert both.status_code == 400 and "not both" in both.json()["problems"][0]
    assert missing.status_code == 404


async def test_an_account_alert_inhibits_the_providers_failures_for_its_duration(
    tmp_path: Path, slack: SlackStandIn, downstream: Downstream
) -> None:
    settings = settings_for(tmp_path, rules(slack, downstream.url))
    server = await RelayServer(settings).start()
    alert, alert_headers = load("goapi_account/mj_bot_banned.json")
    alert_headers["x-webhook-secret"] = ACCOUNT
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            # Before the alert, failures are delivered.
            before = await post(client, "goapi/failed_midjourney.json", "task-before")
            await settled_as(client, before, "delivered")
            answer = await client.post(
                "/hooks/account", content=json.dumps(alert), headers=alert_headers
            )
            assert answer.status_code == 200, answer.text
            await downstream.wait_for(1)
            failed = await post(client, "goapi/failed_midjourney.json", "task-during")
            held = await settled_as(client, failed, "silenced")
            ok = await post(client, "goapi/image_success_flux.json", "task-ok")
            await settled_as(client, ok, "delivered")
            listed = (await client.get("/admin/silences", headers=ADMIN)).json()["silences"]
            [silence] = listed
            ended = await client.post(
                f"/admin/silences/{silence['id']}/expire", json={"release": True}, headers=ADMIN
            )
            await settled_as(client, failed, "delivered")
            # The alert is in; a later failure is delivered again.
            after = await post(client, "goapi/failed_midjourney.json", "task-after")
            await settled_as(client, after, "delivered")
    finally:
        await server.stop()
    assert silence["created_by"] == "inhibit[0]"
    assert silence["matchers"] == ['provider="goapi"', 'status="failed"']
    assert silence["held"] == 1 and silence["state"] == "active"
    assert "goapi-account alert" in silence["comment"]
    assert held["last_error"].startswith(f"silenced by {silence['id']}: goapi-account alert")
    assert ended.status_code == 200, ended.text
    assert ended.json()["released"] == 1 and ended.json()["silence"]["state"] == "ended"
    # The alert itself went to ops; Slack got the failures before, released and after, and
    # the success: four tasks, four messages.
    assert json.loads(downstream.received[0].body)["data"]["provider"] == "goapi-account"
    assert len(slack.messages("C0RENDERS")) == 4


async def test_a_mute_window_holds_its_routes_deliveries_by_the_clock(
    tmp_path: Path, slack: SlackStandIn, downstream: Downstream
) -> None:
    # Saturday 5 December 2026, 23:30 in Paris (22:30 UTC): inside "sat 22:00-07:00".
    night = datetime(2026, 12, 5, 22, 30, tzinfo=UTC).timestamp()
    now = [night]
    window = """
    mute_times:
      - weekdays: [saturday, sunday]
        hours: ["22:00-07:00"]
        time_zone: Europe/Paris
"""
    text = rules(slack, downstream.url).replace(
        "  - to: [renders]\n", "  - to: [renders]\n" + window
    )
    server = await RelayServer(settings_for(tmp_path, text), clock=lambda: now[0]).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            muted = await post(client, "goapi/image_success_flux.json", "task-night", now=now[0])
            held = await settled_as(client, muted, "silenced")
            # Monday 09:00 in Paris: outside the window, delivered at once.
            now[0] = datetime(2026, 12, 7, 8, 0, tzinfo=UTC).timestamp()
            day = await post(client, "goapi/image_success_flux.json", "task-day", now=now[0])
            await settled_as(client, day, "delivered")
            shown = [m.text for m in slack.messages("C0RENDERS")]
            released = await client.post("/admin/held/mute:2/release", headers=ADMIN)
            await settled_as(client, muted, "delivered")
    finally:
        await server.stop()
    assert held["last_error"] == (
        "muted by route 2's mute_times (sat,sun 22:00-07:00 Europe/Paris)"
    )
    assert len(shown) == 1 and "task-night" not in json.dumps(shown)
    assert released.json() == {"held_by": "mute:2", "released": 1}
    assert len(slack.messages("C0RENDERS")) == 2
