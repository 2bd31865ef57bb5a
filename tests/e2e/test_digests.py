"""Batch digests through real `relay serve` / `relay worker` processes, the Slack stand-in,
the SMTP server and a webhook receiver: 200 events of one batch become one Slack message,
edited in place (across a restart of the relay), one mail and one webhook call, each sent
once when the window closes; on PostgreSQL two workers carry the window between them and
still send one digest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.downstream import Downstream
from tests.e2e.cli import arelay, write
from tests.e2e.test_slack_and_email import until
from tests.faults.harness import GOAPI_SECRET, Ledger, Relay, settled
from tests.fixtures_util import load
from tests.slack_standin import SlackStandIn
from tests.smtp_fixtures import SmtpServerFactory
from tests.smtp_server import SmtpServer

BATCH = 200
FAILED = {7, 42, 99, 150, 188}


def rules(slack: SlackStandIn, smtp: SmtpServer, down: str) -> str:
    return f"""
smtp:
  host: 127.0.0.1
  port: {smtp.port}
  starttls: false
  from: relay@example.com
sources:
  goapi:
    provider: goapi
    secret: {GOAPI_SECRET}
    labels: [batch]
destinations:
  renders:
    type: slack
    token: xoxb-test
    channel: "#renders"
    api_url: {slack.api_url}
    pace: 0s
  ops-mail:
    type: email
    to: ops@example.com
  downstream:
    type: webhook
    url: {down}
routes:
  - match: ['batch=~".+"']
    to: [renders, ops-mail, downstream]
    group: {{by: [batch], wait: 1s, interval: 3s, close_after: 500, failures: 3}}
"""


def callback(n: int) -> tuple[bytes, dict[str, str]]:
    name = "goapi/failed_midjourney.json" if n in FAILED else "goapi/image_success_flux.json"
    body, headers = load(name)
    body["data"]["task_id"] = f"render-{n:03d}"
    return json.dumps(body).encode(), headers


async def post_range(client: httpx.AsyncClient, url: str, ledger: Ledger, numbers: range) -> None:
    for n in numbers:
        body, headers = callback(n)
        answer = await ledger.post(client, f"{url}/hooks/goapi?batch=b42", body, headers)
        assert answer.status_code == 200, answer.text


def slack_text(slack: SlackStandIn) -> list[str]:
    return [json.dumps(m.blocks, ensure_ascii=False) for m in slack.messages("C0RENDERS")]


def check_digests(slack: SlackStandIn, smtp: SmtpServer, downstream: Downstream) -> dict[str, Any]:
    """One Slack message (posted once, edited), one mail, one webhook call, all final and
    all showing the 200 tasks with their 5 failures (3 named, then "and 2 more")."""
    [message] = slack.messages("C0RENDERS")
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert message.edits >= 1
    shown = json.dumps(message.blocks, ensure_ascii=False)
    assert "195 succeeded, 5 failed" in shown and "of 200 tasks" in shown
    assert "render-007" in shown and "and 2 more" in shown
    assert "relay events --label batch=b42 --status failed" in shown
    [mail] = smtp.messages
    subject = str(mail.message["subject"])
    assert subject == "Batch batch=b42: 195 succeeded, 5 failed — 200 tasks"
    [call] = downstream.received
    digest: dict[str, Any] = json.loads(call.body)
    assert digest["type"] == "relay.digest"
    assert digest["data"]["total"] == BATCH and digest["data"]["final"] is True
    assert digest["data"]["counts"] == {"succeeded": 195, "failed": 5}
    assert digest["data"]["more_failures"] == 2
    return digest


async def test_a_digest_of_200_events_over_a_restart_is_one_message_one_mail_one_call(
    make_relay: Callable[..., Relay],
    slack: SlackStandIn,
    smtp_server: SmtpServerFactory,
    downstream: Downstream,
) -> None:
    smtp = await smtp_server()
    relay = make_relay(rules(slack, smtp, downstream.url))
    ledger = Ledger()
    server = await relay.serve()
    async with httpx.AsyncClient(timeout=10) as client:
        await post_range(client, server.url, ledger, range(0, 100))
        # The first message goes out once the group has waited its second.
        await until(lambda: len(slack.messages("C0RENDERS")) == 1, within=30)
        assert smtp.messages == [] and downstream.received == []
        await server.stop()
        server = await relay.serve(name="serve-again")
        await post_range(client, server.url, ledger, range(100, BATCH))
        # The window closes 3 s after its last event: then the mail and the webhook call.
        await smtp.wait_for_messages(1, within=30)
        await downstream.wait_for(1)
        found = await settled(server, ledger, within=30)
    assert len(found) == BATCH
    await until(lambda: "of 200 tasks" in "".join(slack_text(slack)), within=30)
    digest = check_digests(slack, smtp, downstream)
    assert digest["data"]["labels"] == {"batch": "b42"}
    # Every event's three deliveries are delivered: the carriers by sending, the rest as
    # folded into the digest (saying which delivery carried them).
    states = [d for ds in found.values() for d in ds]
    assert len(states) == 3 * BATCH and {d["state"] for d in states} == {"delivered"}
    folded = [d for d in states if d["last_error"].startswith("in digest digest:0:batch=b42#1")]
    # One carrier per destination (the batch's first event) carried the whole window.
    assert len(folded) == 3 * (BATCH - 1)
    await relay.stop()
    assert "Traceback" not in relay.logs()


async def test_two_workers_on_postgres_send_one_digest(
    make_relay: Callable[..., Relay],
    slack: SlackStandIn,
    smtp_server: SmtpServerFactory,
    downstream: Downstream,
    pg_url: str,
) -> None:
    smtp = await smtp_server()
    relay = make_relay(rules(slack, smtp, downstream.url), RELAY_DB=pg_url)
    ledger = Ledger()
    server = await relay.serve("--no-dispatch")
    await relay.worker(name="worker-a")
    await relay.worker(name="worker-b")
    async with httpx.AsyncClient(timeout=10) as client:
        await post_range(client, server.url, ledger, range(BATCH))
        await smtp.wait_for_messages(1, within=30)
        await downstream.wait_for(1)
        found = await settled(server, ledger, within=30)
    assert len(found) == BATCH
    await until(lambda: "of 200 tasks" in "".join(slack_text(slack)), within=30)
    # A moment more: a second digest, if any, would have been sent by now.
    await asyncio.sleep(1.0)
    # Stopped here, before the test's database is dropped.
    await relay.stop()
    check_digests(slack, smtp, downstream)


async def test_relay_test_says_which_digest_an_event_joins(
    tmp_path: Path, slack: SlackStandIn, smtp_server: SmtpServerFactory, downstream: Downstream
) -> None:
    smtp = await smtp_server()
    write(tmp_path / "rules", {"rules.yaml": rules(slack, smtp, downstream.url)})
    sample = tmp_path / "sample.json"
    sample.write_text(callback(7)[0].decode())
    grouped = await arelay(
        tmp_path, "test", "--source", "goapi", str(sample), "--labels", "batch=b42"
    )
    alone = await arelay(tmp_path, "test", "--source", "goapi", str(sample))
    assert grouped.code == 0, grouped.err
    assert grouped.out.count("joins digest digest:0:batch=b42 (one message per window") == 3
    assert "first after 1s, closed after 3s quiet or 500 events" in grouped.out
    # Without the label no route matches here (the route wants a batch).
    assert "no route matches" in alone.out
