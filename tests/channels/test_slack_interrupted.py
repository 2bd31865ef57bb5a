"""A Slack post that Slack carried out but whose answer relay never got (a timeout here; a
SIGKILL in tests/faults/test_sigkill.py): the retry finds the message by its metadata and
edits it, so a task keeps one message and a failure one thread reply. Without the history
scope relay cannot look, and posts again (logged)."""

from __future__ import annotations

import logging

import pytest

from relay.events import TaskError
from tests.channels.harness import Harness
from tests.channels.test_slack import CHANNEL, api, event_of
from tests.e2e.test_slack_and_email import until
from tests.slack_standin import SlackStandIn

# The client gives up after TIMEOUT; the stand-in carries the post out after HELD, as Slack
# does whatever became of its client.
TIMEOUT, HELD = "0.2s", 0.5


async def cut_off(harness: Harness, slack: SlackStandIn, delivery: str) -> None:
    """Run one attempt whose chat.postMessage is made but not answered in time, and let the
    stand-in finish it."""
    made = len(slack.calls_to("chat.postMessage"))
    slack.fail_next("chat.postMessage", delay=HELD)
    await harness.run()
    record = await harness.record(delivery)
    assert record.state == "pending" and "no answer within" in record.last_error
    # The stand-in records a call once it has carried it out.
    await until(lambda: len(slack.calls_to("chat.postMessage")) > made)
    harness.clock.now = record.next_attempt_at or 0.0


async def test_an_unanswered_post_is_found_and_edited_not_posted_again(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="0s", timeout=TIMEOUT))
    # An earlier task's message tells relay the channel's ID ("#renders" is a name).
    [earlier] = await harness.ingest(event_of("t-0", "succeeded"))
    await harness.run()
    assert (await harness.record(earlier)).state == "delivered"

    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    await cut_off(harness, slack, d)
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    mine = [m for m in slack.messages(CHANNEL) if "t-1" in (m.text or "")]
    assert len(mine) == 1 and mine[0].edits == 1
    assert len(slack.calls_to("chat.postMessage")) == 2  # t-0's, and t-1's cut-off one
    [look] = slack.calls_to("conversations.history")
    assert look.params["channel"] == CHANNEL


async def test_an_unanswered_thread_reply_is_not_posted_twice(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="0s", timeout=TIMEOUT, thread_replies=True))
    [p] = await harness.ingest(event_of("t-9", "processing", progress=10, outputs=[]))
    await harness.run()
    assert (await harness.record(p)).state == "delivered"
    error = TaskError(code="10000", message="task failed", detail="upstream refused it")
    [d] = await harness.ingest(event_of("t-9", "failed", outputs=[], error=error))
    await cut_off(harness, slack, d)  # the edit went through; the reply is the one cut off
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    [message] = slack.messages(CHANNEL)
    assert len(slack.replies(CHANNEL, message.ts)) == 1
    assert len(slack.calls_to("conversations.replies")) == 1


async def test_without_the_history_scope_it_posts_again_and_says_so(
    harness: Harness, slack: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    slack.missing_scopes.add("history")
    harness.add("renders", **api(slack, pace="0s", timeout=TIMEOUT))
    await harness.ingest(event_of("t-0", "succeeded"))
    await harness.run()
    [d] = await harness.ingest(event_of("t-1", "succeeded"))
    await cut_off(harness, slack, d)
    with caplog.at_level(logging.WARNING, logger="relay.channels.slack"):
        await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert len([m for m in slack.messages(CHANNEL) if "t-1" in (m.text or "")]) == 2
    assert "cannot look for a message an interrupted attempt may have posted (missing_scope)" in (
        caplog.text
    )
