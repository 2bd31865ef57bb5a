"""A provider's callbacks through the whole relay to Slack and to a mailbox: the app served by
uvicorn, SQLite, the Slack stand-in driven by the real slack_sdk, a real SMTP server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from relay.settings import Settings
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load
from tests.slack_standin import SlackStandIn
from tests.smtp_fixtures import SmtpServerFactory

SECRET = "goapi-e2e-secret"


def rules(slack: SlackStandIn, smtp_port: int) -> str:
    return f"""
smtp:
  host: 127.0.0.1
  port: {smtp_port}
  starttls: false
  from: relay@example.com
sources:
  goapi:
    provider: goapi
    secret: {SECRET}
destinations:
  renders:
    type: slack
    token: xoxb-test
    channel: "#renders"
    api_url: {slack.api_url}
    pace: 0s
    thread_replies: true
  oncall:
    type: email
    to: [oncall@example.com]
routes:
  - match: ['status="failed"']
    to: [renders, oncall]
  - to: [renders]
"""


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll (bounded) until ``condition`` holds."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def post(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(
        f"{base}/hooks/goapi",
        content=json.dumps(body),
        headers={"x-webhook-secret": SECRET, "content-type": "application/json"},
    )


async def test_progress_final_and_duplicate_make_one_slack_message(
    tmp_path: Path, slack: SlackStandIn, smtp_server: SmtpServerFactory
) -> None:
    smtp = await smtp_server()
    directory = write_rules(tmp_path / "rules", rules(slack, smtp.port))
    settings = Settings(rules=directory, db=f"sqlite:///{tmp_path}/relay.db")
    server = await RelayServer(settings).start()
    try:
        progress, _ = load("goapi/midjourney_processing_progress.json")
        final = json.loads(json.dumps(progress))
        final["data"]["status"] = "completed"
        final["data"]["output"]["progress"] = 100
        async with httpx.AsyncClient() as client:
            assert (await post(client, server.url, progress)).status_code == 200
            await until(lambda: len(slack.messages("C0RENDERS")) == 1)
            first = await post(client, server.url, final)
            again = await post(client, server.url, final)  # the provider retried it
            assert first.status_code == again.status_code == 200
            assert again.json()["duplicate"] is True
            await until(lambda: len(slack.calls_to("chat.update")) == 1)
            await asyncio.sleep(0.3)  # room for a wrong second post or update to show up
    finally:
        await server.stop()
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert len(slack.calls_to("chat.update")) == 1
    [message] = slack.messages("C0RENDERS")
    assert "processing" not in message.text
    assert progress["data"]["task_id"] in message.text
    assert smtp.messages == []  # only failures go to the mailbox


async def test_a_failure_reaches_slack_with_a_thread_reply_and_the_mailbox(
    tmp_path: Path, slack: SlackStandIn, smtp_server: SmtpServerFactory
) -> None:
    smtp = await smtp_server()
    directory = write_rules(tmp_path / "rules", rules(slack, smtp.port))
    settings = Settings(rules=directory, db=f"sqlite:///{tmp_path}/relay.db")
    server = await RelayServer(settings).start()
    try:
        failed, _ = load("goapi/failed_midjourney.json")
        async with httpx.AsyncClient() as client:
            assert (await post(client, server.url, failed)).status_code == 200
        await until(lambda: len(smtp.messages) == 1 and len(slack.calls) >= 2)
    finally:
        await server.stop()
    [message] = slack.messages("C0RENDERS")
    assert "failed" in message.text
    [reply] = slack.replies("C0RENDERS", message.ts)
    assert "Banned prompt detected" in json.dumps(reply.blocks)
    mail = smtp.messages[0].message
    assert mail["Subject"].startswith("[relay] FAILED Midjourney imagine")
    assert mail["To"] == "oncall@example.com"
    text = mail.get_body(("plain",))
    assert text is not None and "Banned prompt detected" in text.get_content()
