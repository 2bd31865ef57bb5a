"""Labels from the hook URL through the app under uvicorn: declared query keys become labels
that route the event (`team="media"`), show in the Slack message and ride in the webhook
envelope and the admin API; undeclared keys are dropped; a value its rule refuses is a 400."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from pydantic import SecretStr

from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.cli import arelay
from tests.e2e.server import RelayServer, write_rules
from tests.e2e.test_slack_and_email import until
from tests.fixtures_util import load
from tests.slack_standin import SlackStandIn

SECRET = "goapi-labels-secret"
TOKEN = "labels-admin-token-0123456789"


def rules(slack: SlackStandIn, down: str) -> str:
    return f"""
sources:
  goapi:
    provider: goapi
    secret: {SECRET}
    labels:
      team:
      batch: {{pattern: "b[0-9]+", max_length: 8}}
destinations:
  media:
    type: slack
    token: xoxb-test
    channel: "#renders"
    api_url: {slack.api_url}
    pace: 0s
  everyone:
    type: webhook
    url: {down}
routes:
  - match: ['team="media"']
    to: [media]
    continue: true
  - to: [everyone]
"""


async def test_labels_from_the_hook_url_route_show_and_travel(
    tmp_path: Path, slack: SlackStandIn, downstream: Downstream
) -> None:
    settings = Settings(
        rules=write_rules(tmp_path / "rules", rules(slack, downstream.url)),
        db=f"sqlite:///{tmp_path}/relay.db",
        admin_token=SecretStr(TOKEN),
    )
    server = await RelayServer(settings).start()
    body, _ = load("goapi/image_success_flux.json")
    other = json.loads(json.dumps(body))
    other["data"]["task_id"] = "task-of-another-team"
    headers = {"x-webhook-secret": SECRET, "content-type": "application/json"}
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            media = await client.post(
                "/hooks/goapi?team=media&batch=b42&user=ana&token=x",
                content=json.dumps(body),
                headers=headers,
            )
            assert media.status_code == 200, media.text
            sound = await client.post(
                "/hooks/goapi?team=sound", content=json.dumps(other), headers=headers
            )
            assert sound.status_code == 200, sound.text
            # A value its rule refuses: refused before anything is stored, with the reason.
            bad = await client.post(
                "/hooks/goapi?team=media&batch=42", content=json.dumps(body), headers=headers
            )
            assert bad.status_code == 400
            assert bad.json()["error"] == "label 'batch' does not match b[0-9]+"
            spaced = await client.post(
                "/hooks/goapi?team=me%20dia", content=json.dumps(body), headers=headers
            )
            assert spaced.status_code == 400
            assert "label 'team' does not match" in spaced.json()["error"]

            await downstream.wait_for(2)
            await until(lambda: len(slack.messages("C0RENDERS")) == 1)
            admin = {"authorization": f"Bearer {TOKEN}"}
            detail = await client.get(f"/admin/events/{media.json()['event_id']}", headers=admin)
            by_team = await client.get("/admin/events?label=team=media", headers=admin)
            by_both = await client.get(
                "/admin/events",
                params=[("label", "team=media"), ("label", "batch=b7")],
                headers=admin,
            )
            bad_filter = await client.get("/admin/events?label=team", headers=admin)
    finally:
        await server.stop()

    # Routed by its label: only the media team's event reached #renders, showing its labels.
    [message] = slack.messages("C0RENDERS")
    shown = json.dumps(message.blocks, ensure_ascii=False)
    assert "batch=b42 · team=media" in shown
    assert "task-of-another-team" not in shown
    # Both reached the webhook, each with its own labels and nothing undeclared.
    envelopes = {
        json.loads(r.body)["data"]["task_id"]: json.loads(r.body) for r in downstream.received
    }
    assert envelopes[body["data"]["task_id"]]["data"]["labels"] == {"team": "media", "batch": "b42"}
    assert envelopes["task-of-another-team"]["data"]["labels"] == {"team": "sound"}
    assert detail.status_code == 200, detail.text
    assert detail.json()["event"]["labels"] == {"team": "media", "batch": "b42"}
    assert "ana" not in json.dumps(detail.json())
    # The admin API filters by label (every one given must hold), and says what is wrong.
    assert [e["task_id"] for e in by_team.json()["events"]] == [body["data"]["task_id"]]
    assert by_both.json()["events"] == []
    assert bad_filter.status_code == 400
    assert "write name=value" in bad_filter.text
    # So does the CLI, against the same database.
    listed = await arelay(
        tmp_path, "events", "--label", "team=sound", "--json", "--db", settings.db
    )
    assert listed.code == 0, listed.text
    assert [e["task_id"] for e in json.loads(listed.out)] == ["task-of-another-team"]
    refused = await arelay(tmp_path, "events", "--label", "Team=x", "--db", settings.db)
    assert refused.code == 2 and "bad label filter 'Team=x'" in refused.err
