"""A route's `mention:` in Slack: the mentions lead the message (so they notify) for the
statuses the route names, a URL label holding a user ID mentions that user, and nothing in
a payload can mention anyone."""

from __future__ import annotations

import json

import pytest

from relay.events import TaskError
from relay.routing.model import MentionConfig, Route
from tests.channels.harness import Harness
from tests.channels.test_slack import CHANNEL, api, event_of
from tests.slack_standin import SlackStandIn

ERROR = TaskError(code="10000", message="<!channel> <@U0BOSS> failed", detail="<!here>")


async def test_mentions_lead_a_failure_and_payload_text_mentions_nobody(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    harness.mentions[0] = MentionConfig(who=["<!subteam^S0ONCALL>", "label:user"])
    failed = event_of(
        "t-1",
        "failed",
        outputs=[],
        error=ERROR,
        prompt="ping <!everyone> and <@U0BOSS>",
        labels={"user": "U0ANA"},
    )
    await harness.ingest(failed)
    await harness.run()
    [message] = slack.messages(CHANNEL)
    assert message.text is not None
    assert message.text.startswith("<!subteam^S0ONCALL> <@U0ANA> ")
    shown = json.dumps(message.blocks)
    assert message.blocks is not None
    assert message.blocks[1]["text"]["text"] == "<!subteam^S0ONCALL> <@U0ANA>"
    # Payload text is escaped wherever it appears: it shows, it does not notify.
    for forged in ("<!channel>", "<!here>", "<!everyone>", "<@U0BOSS>"):
        assert forged not in shown and forged not in message.text
    assert "&lt;!channel&gt;" in shown


async def test_no_mention_for_other_statuses_nor_from_a_label_that_is_no_user_id(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack, pace="0s"))
    harness.mentions[0] = MentionConfig(who=["label:user"], when=["failed"])
    await harness.ingest(event_of("t-1", "succeeded", labels={"user": "U0ANA"}))
    await harness.ingest(event_of("t-2", "failed", outputs=[], error=ERROR, labels={"user": "ana"}))
    await harness.run()
    for message in slack.messages(CHANNEL):
        assert "<@" not in (message.text or "") and "<@" not in json.dumps(message.blocks)


@pytest.mark.parametrize(
    ("mention", "problem"),
    [
        (["@oncall"], "bad mention '@oncall'"),
        (["<@U0A|ana>"], "bad mention"),
        ({"who": ["<!here>"], "when": ["finished"]}, "Input should be"),
        ({"who": []}, "at least 1 item"),
    ],
)
def test_bad_mentions_are_refused(mention: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Route.model_validate({"to": ["d"], "mention": mention})


def test_a_list_is_who_on_failures() -> None:
    route = Route.model_validate({"to": ["d"], "mention": ["<!here>", "label:user"]})
    assert route.mention is not None
    assert route.mention.resolve("failed", {"user": "W0ANA"}) == ("<!here>", "<@W0ANA>")
    assert route.mention.resolve("succeeded", {"user": "W0ANA"}) == ()
