"""The Slack destination against the local stand-in of Slack's Web API and incoming webhooks,
through the real slack_sdk client, a SQLite store and the dispatcher stepped by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.channels.base import ChannelDeps, Delivery
from relay.channels.slack import SlackChannel
from relay.events import Output, TaskError, TaskEvent
from relay.providers import default_providers
from relay.routing.model import SlackDestination
from relay.runtime import provider_names
from relay.store.memory import MemoryStore
from relay.store.sqlite import SQLiteStore
from tests.channels.harness import Clock, Harness
from tests.events_factory import make_event
from tests.slack_standin import SlackStandIn

CHANNEL = "C0RENDERS"


def api(slack: SlackStandIn, **extra: Any) -> dict[str, Any]:
    return {
        "type": "slack",
        "token": "xoxb-test",
        "channel": "#renders",
        "api_url": slack.api_url,
        **extra,
    }


def event_of(task_id: str, status: str, **fields: Any) -> TaskEvent:
    return make_event(task_id=task_id, status=status, model="kling", **fields)


def texts(slack: SlackStandIn, channel: str = CHANNEL) -> list[str]:
    return [m.text for m in slack.messages(channel)]


# --- one message per task ---------------------------------------------------------------------


async def test_progress_then_final_is_one_post_and_one_update(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack))
    progress = event_of("t-1", "processing", progress=40, outputs=[])
    final = event_of("t-1", "succeeded")
    [p] = await harness.ingest(progress)
    [f] = await harness.ingest(final)

    await harness.run()
    # The final waits for the progress post (same task, in order) and its pacing slot.
    assert (await harness.record(p)).state == "delivered"
    assert (await harness.record(f)).state == "pending"
    harness.clock.now += 1
    await harness.run()
    assert (await harness.record(f)).state == "delivered"

    assert len(slack.calls_to("chat.postMessage")) == 1
    assert len(slack.calls_to("chat.update")) == 1
    [message] = slack.messages(CHANNEL)
    assert "ready" in message.text and "t-1" in message.text
    assert (await harness.record(f)).attempts == 1  # waiting its turn spent no attempt


async def test_a_retried_final_edits_the_message_again(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    # The provider sent its final callback twice, with different timestamps: two events.
    for stamp in ("1700000000", "1700000060"):
        await harness.ingest(event_of("t-1", "succeeded", dedupe_key=f"t-1:completed:{stamp}"))
        await harness.run()
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert len(slack.calls_to("chat.update")) == 1
    assert len(slack.messages(CHANNEL)) == 1


async def test_a_late_progress_event_leaves_the_final_message_alone(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    [f] = await harness.ingest(event_of("t-1", "succeeded"))
    [p] = await harness.ingest(event_of("t-1", "processing", progress=10, outputs=[]))
    await harness.run()
    assert (await harness.record(f)).state == "delivered"
    assert (await harness.record(p)).state == "delivered"
    assert slack.calls_to("chat.update") == []
    assert "ready" in texts(slack)[0]


async def test_each_destination_keeps_its_own_message(
    harness: Harness, slack: SlackStandIn
) -> None:
    slack.add_channel("C0OPS", "ops")
    harness.add("renders", **api(slack, pace="0s"))
    harness.add("ops", **api(slack, channel="C0OPS", pace="0s"))
    await harness.ingest(event_of("t-1", "processing", progress=50, outputs=[]))
    await harness.ingest(event_of("t-1", "succeeded"))
    await harness.run()
    assert len(slack.messages(CHANNEL)) == 1
    assert len(slack.messages("C0OPS")) == 1
    assert len(slack.calls_to("chat.postMessage")) == 2
    updates = slack.calls_to("chat.update")
    assert sorted(c.params["channel"] for c in updates) == ["C0OPS", CHANNEL]


async def test_a_deleted_message_is_posted_again(harness: Harness, slack: SlackStandIn) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    await harness.ingest(event_of("t-1", "processing", progress=50, outputs=[]))
    await harness.run()
    slack.fail_next("chat.update", error="message_not_found")
    [f] = await harness.ingest(event_of("t-1", "succeeded"))
    await harness.run()
    assert (await harness.record(f)).state == "delivered"
    assert len(slack.calls_to("chat.postMessage")) == 2


async def test_thread_reply_with_the_failure_once(harness: Harness, slack: SlackStandIn) -> None:
    harness.add("renders", **api(slack, pace="0s", thread_replies=True))
    failed = event_of(
        "t-9",
        "failed",
        outputs=[],
        error=TaskError(code="10000", message="task failed", detail="upstream refused the prompt"),
    )
    [d] = await harness.ingest(failed)
    # The reply fails once after the message was posted: the retry edits, then replies once.
    slack.fail_next("chat.postMessage", status=503)
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    harness.clock.now = record.next_attempt_at or 0.0
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    [message] = slack.messages(CHANNEL)
    replies = slack.replies(CHANNEL, message.ts)
    assert len(replies) == 1
    assert "upstream refused the prompt" in replies[0].text + str(replies[0].blocks)


# --- pacing and rate limits -------------------------------------------------------------------


async def test_posts_to_one_channel_are_paced(harness: Harness, slack: SlackStandIn) -> None:
    harness.add("renders", **api(slack, pace="1s"))
    ids = []
    for i in range(3):
        ids += await harness.ingest(event_of(f"t-{i}", "succeeded"))
    assert await harness.run() == 3  # one sent, two given back
    states = [(await harness.record(i)).state for i in ids]
    assert sorted(states) == ["delivered", "pending", "pending"]
    assert len(slack.calls_to("chat.postMessage")) == 1
    harness.clock.now += 1
    await harness.run()
    assert len(slack.calls_to("chat.postMessage")) == 2
    harness.clock.now += 1
    await harness.run()
    assert len(slack.calls_to("chat.postMessage")) == 3
    assert [(await harness.record(i)).attempts for i in ids] == [1, 1, 1]


async def test_pacing_holds_across_processes_sharing_a_store(
    tmp_path: Path, http: aiohttp.ClientSession, slack: SlackStandIn
) -> None:
    # Two stores on one file stand for two relay processes.
    one, two = SQLiteStore(str(tmp_path / "r.db")), SQLiteStore(str(tmp_path / "r.db"))
    await one.open()
    await two.open()
    try:
        a, b = Harness(one, http), Harness(two, http)
        b.clock = a.clock
        a.add("renders", **api(slack))
        b.add("renders", **api(slack))
        await a.ingest(event_of("t-1", "succeeded"))
        await b.ingest(event_of("t-2", "succeeded"))
        await a.dispatcher.run_once()
        await b.dispatcher.run_once()
        assert len(slack.calls_to("chat.postMessage")) == 1
    finally:
        await one.close()
        await two.close()


async def test_429_becomes_the_next_attempt_time(harness: Harness, slack: SlackStandIn) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    slack.fail_next("chat.postMessage", status=429, retry_after=30)
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert record.next_attempt_at == harness.clock.now + 30
    assert "ratelimited" in record.last_error
    # slack_sdk's own retry handlers are off: one call, then the store holds the wait.
    assert len(slack.calls_to("chat.postMessage")) == 1
    harness.clock.now += 29
    assert await harness.run() == 0
    harness.clock.now += 1
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert len(slack.messages(CHANNEL)) == 1


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ({"error": "ratelimited"}, "ratelimited"),
        ({"error": "service_unavailable"}, "service_unavailable"),
        ({"error": "internal_error"}, "internal_error"),
        ({"error": "fatal_error"}, "fatal_error"),
        ({"status": 503}, "slack:"),
        ({"status": 500, "body": "<html>oops</html>"}, "HTTP 500"),
    ],
)
async def test_transient_errors_are_retried(
    harness: Harness, slack: SlackStandIn, fault: dict[str, Any], expect: str
) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    slack.fail_next("chat.postMessage", **fault)
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending", record.last_error
    assert expect in record.last_error
    harness.clock.now = record.next_attempt_at or 0.0
    await harness.run()
    assert (await harness.record(d)).state == "delivered"


async def test_a_timeout_is_transient(harness: Harness, slack: SlackStandIn) -> None:
    harness.add("renders", **api(slack, pace="0s", timeout="0.2s"))
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    slack.fail_next("chat.postMessage", delay=2.0)
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert "no answer within 0.2s" in record.last_error


async def test_connection_refused_is_transient(harness: Harness) -> None:
    harness.add(
        "renders",
        type="slack",
        token="xoxb-test",
        channel="#renders",
        api_url="http://127.0.0.1:9/api/",
    )
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert "slack:" in record.last_error


# --- permanent errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("standin", "config", "fault", "error"),
    [
        ({}, {"channel": "#nowhere"}, None, "channel_not_found"),
        ({"non_member_channels": ["C0RENDERS"]}, {}, None, "not_in_channel"),
        ({"archived_channels": ["C0RENDERS"]}, {}, None, "is_archived"),
        ({}, {"token": "xoxb-wrong"}, None, "invalid_auth"),
        ({"revoked_tokens": ["xoxb-old"]}, {"token": "xoxb-old"}, None, "token_revoked"),
        ({"inactive_tokens": ["xoxb-gone"]}, {"token": "xoxb-gone"}, None, "account_inactive"),
        ({}, {}, {"error": "invalid_blocks"}, "invalid_blocks"),
        ({}, {}, {"error": "msg_too_long"}, "msg_too_long"),
        ({}, {}, {"error": "restricted_action"}, "restricted_action"),
    ],
)
async def test_permanent_errors_are_dead_at_once_with_the_reason(
    store: SQLiteStore,
    http: aiohttp.ClientSession,
    standin: dict[str, Any],
    config: dict[str, Any],
    fault: dict[str, Any] | None,
    error: str,
) -> None:
    async with SlackStandIn(**standin) as slack:
        harness = Harness(store, http)
        harness.add("renders", **api(slack, pace="0s", **config))
        [d] = await harness.ingest(event_of("t-1", "succeeded"))
        if fault:
            slack.fail_next("chat.postMessage", **fault)
        await harness.run()
        record = await harness.record(d)
        assert record.state == "dead"
        assert record.attempts == 1
        channel = config.get("channel", "#renders")
        assert f"slack: {error} (channel {channel})" in record.last_error
        assert "permanent" in record.last_error


# --- Slack's limits -----------------------------------------------------------------------------


async def test_an_oversized_event_still_makes_a_message_slack_accepts(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    huge = event_of(
        "t-big",
        "succeeded",
        prompt="a cat in a hat " * 4000,  # 60,000 characters
        outputs=[Output(kind="image", url=f"https://cdn.example/{i}.png") for i in range(80)],
    )
    [d] = await harness.ingest(huge)
    await harness.run()
    assert (await harness.record(d)).state == "delivered", (await harness.record(d)).last_error
    [message] = slack.messages(CHANNEL)
    assert message.blocks is not None and len(message.blocks) <= 50
    assert "more" in str(message.blocks)


# --- incoming webhooks ------------------------------------------------------------------------


async def test_webhook_posts_every_event(harness: Harness, slack: SlackStandIn) -> None:
    harness.add("hook", type="slack", webhook_url=slack.webhook_url(), pace="0s")
    await harness.ingest(event_of("t-1", "processing", progress=50, outputs=[]))
    await harness.ingest(event_of("t-1", "succeeded"))
    await harness.run()
    posts = slack.webhook_posts()
    assert len(posts) == 2
    assert "ready" in posts[1]["text"]
    assert posts[1]["blocks"]


@pytest.mark.parametrize(
    ("state", "status"),
    [("archived", 410), ("channel_deleted", 404), ("prohibited", 403), ("revoked", 403)],
)
async def test_webhook_refusals_are_permanent(
    harness: Harness, slack: SlackStandIn, state: str, status: int
) -> None:
    slack.set_webhook("default", state)  # type: ignore[arg-type]
    harness.add("hook", type="slack", webhook_url=slack.webhook_url(), pace="0s")
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "dead"
    assert f"HTTP {status}" in record.last_error


async def test_webhook_bad_payload_is_permanent(harness: Harness, slack: SlackStandIn) -> None:
    harness.add("hook", type="slack", webhook_url=slack.webhook_url(), pace="0s")
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    slack.fail_next("webhook:default", status=400, body="invalid_payload")
    await harness.run()
    record = await harness.record(d)
    assert record.state == "dead"
    assert "HTTP 400: slack webhook: invalid_payload" in record.last_error


@pytest.mark.parametrize(("status", "retry_after"), [(429, 12), (500, None), (503, None)])
async def test_webhook_transient_answers_are_retried(
    harness: Harness, slack: SlackStandIn, status: int, retry_after: int | None
) -> None:
    harness.add("hook", type="slack", webhook_url=slack.webhook_url(), pace="0s")
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    slack.fail_next("webhook:default", status=status, retry_after=retry_after)
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    if retry_after:
        assert record.next_attempt_at == harness.clock.now + retry_after
    harness.clock.now = record.next_attempt_at or 0.0
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert len(slack.webhook_posts()) == 1


def test_render_shows_the_channel_and_blocks(http: aiohttp.ClientSession) -> None:
    dest = SlackDestination.model_validate(
        {"type": "slack", "token": "xoxb-x", "channel": "#renders"}
    )
    deps = ChannelDeps(
        http=http, clock=Clock(), state=MemoryStore(), names=provider_names(default_providers())
    )
    channel = SlackChannel("renders", dest, deps)
    shown = channel.render(Delivery("dlv_1", "renders", 1, event_of("t-1", "succeeded")))
    assert '"channel": "#renders"' in shown
    assert '"blocks"' in shown


async def test_a_paced_thread_reply_waits_its_turn_without_editing_again(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="1s", thread_replies=True))
    failed = event_of("t-9", "failed", outputs=[], error=TaskError(message="quota exceeded"))
    [d] = await harness.ingest(failed)
    for _ in range(3):  # the post, then the reply waits for the next slot
        await harness.run()
        harness.clock.now += 1
    assert (await harness.record(d)).state == "delivered"
    assert (await harness.record(d)).attempts == 1
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert slack.calls_to("chat.update") == []
    [message] = slack.messages(CHANNEL)
    assert len(slack.replies(CHANNEL, message.ts)) == 1
