"""The typed channel-state records: their JSON is a persisted format (rows written by earlier
releases must read back), reading is total, and the channels act safely on rows they cannot
read. Channel tests run over the Slack stand-in / a real SMTP server and a SQLite store."""

from __future__ import annotations

from typing import Any

import pytest

from relay.channels.slack import message_key
from relay.events import TaskEvent
from relay.store.base import MailThread, RecipientOutcomes, SlackMessageRef
from relay.store.sqlite import SQLiteStore
from tests.channels.harness import Harness
from tests.events_factory import make_event
from tests.slack_standin import SlackStandIn
from tests.smtp_fixtures import SmtpServerFactory
from tests.smtp_server import SmtpServer

CHANNEL = "C0RENDERS"
TO = ["ops@example.com", "render@example.com", "lead@example.com"]


def event_of(task_id: str, status: str = "succeeded", **fields: Any) -> TaskEvent:
    return make_event(task_id=task_id, status=status, model="kling", **fields)


# --- the records --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        SlackMessageRef("C1", "1700000000.000100"),
        SlackMessageRef("C1", "1700000000.000100", final=True, event_id="evt_1", replied="evt_1"),
        MailThread("<dlv_1@example.com>"),
        RecipientOutcomes(),
        RecipientOutcomes(("a@example.com", "b@example.com"), {"c@example.com": "550 no"}),
    ],
)
async def test_records_round_trip_through_a_store(
    store: SQLiteStore, record: SlackMessageRef | MailThread | RecipientOutcomes
) -> None:
    await store.put_state("dest", "k", record.to_json(), now=0.0)
    assert type(record).from_json(await store.get_state("dest", "k")) == record


def test_rows_written_before_the_types_read_back() -> None:
    # Literally what the untyped channel code put in the store.
    slack = {"channel": "C1", "ts": "1.000100", "final": True, "event_id": "evt_2"}
    assert SlackMessageRef.from_json(slack) == SlackMessageRef("C1", "1.000100", True, "evt_2")
    replied = {**slack, "replied": "evt_2"}
    assert SlackMessageRef.from_json(replied) == SlackMessageRef(
        "C1", "1.000100", True, "evt_2", "evt_2"
    )
    assert MailThread.from_json({"message_id": "<d@x>"}) == MailThread("<d@x>")
    outcomes = {"accepted": ["a@x", "b@x"], "refused": {"c@x": "550 5.1.1 no such user"}}
    assert RecipientOutcomes.from_json(outcomes) == RecipientOutcomes(
        ("a@x", "b@x"), {"c@x": "550 5.1.1 no such user"}
    )
    # And the JSON written now is the same as then, field for field.
    assert SlackMessageRef.from_json(replied).to_json() == replied  # type: ignore[union-attr]
    assert RecipientOutcomes.from_json(outcomes).to_json() == outcomes  # type: ignore[union-attr]


def test_a_slack_ref_needs_only_channel_and_ts() -> None:
    # The old reader took final/event_id/replied with .get(): their absence is no error.
    assert SlackMessageRef.from_json({"channel": "C1", "ts": "1.1"}) == SlackMessageRef("C1", "1.1")


def test_keys_are_the_ones_used_before() -> None:
    event = event_of("t-1")
    assert SlackMessageRef.key(event) == message_key(event) == f"task:{event.source}/t-1"
    assert MailThread.key(event) == f"thread:{event.source}/t-1"
    assert RecipientOutcomes.key("dlv_1") == "delivery:dlv_1"


@pytest.mark.parametrize(
    "row",
    [
        None,
        {},
        {"ts": "1.1"},
        {"channel": "C1"},
        {"channel": 1, "ts": "1.1"},
        {"channel": "C1", "ts": 1.1},
        {"channel": "C1", "ts": "1.1", "final": "yes"},
        {"channel": "C1", "ts": "1.1", "event_id": 7},
        {"channel": "C1", "ts": "1.1", "replied": ["evt_1"]},
        ["C1", "1.1"],
    ],
)
def test_a_malformed_slack_ref_reads_as_none(row: Any) -> None:
    assert SlackMessageRef.from_json(row) is None


@pytest.mark.parametrize("row", [None, {}, {"message_id": None}, {"message_id": 7}, "<d@x>"])
def test_a_malformed_mail_thread_reads_as_none(row: Any) -> None:
    assert MailThread.from_json(row) is None


@pytest.mark.parametrize(
    "row",
    [
        None,
        {},
        {"accepted": []},
        {"refused": {}},
        {"accepted": "a@x", "refused": {}},
        {"accepted": ["a@x", 3], "refused": {}},
        {"accepted": [], "refused": ["c@x"]},
        {"accepted": [], "refused": {"c@x": 550}},
        [],
    ],
)
def test_malformed_recipient_outcomes_read_as_none(row: Any) -> None:
    assert RecipientOutcomes.from_json(row) is None


# --- Slack over rows it finds -------------------------------------------------------------------


def api(slack: SlackStandIn) -> dict[str, Any]:
    return {
        "type": "slack",
        "token": "xoxb-test",
        "channel": "#renders",
        "api_url": slack.api_url,
        "pace": "0s",
    }


async def test_slack_edits_the_message_an_old_row_names(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack))
    old = slack.add_message(CHANNEL, "running", by_bot=True)
    event = event_of("t-1")
    row = {"channel": CHANNEL, "ts": old.ts, "final": False, "event_id": "evt_earlier"}
    await harness.store.put_state("renders", message_key(event), row, now=0.0)
    [d] = await harness.ingest(event)
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert slack.calls_to("chat.postMessage") == []
    [update] = slack.calls_to("chat.update")
    assert update.params["ts"] == old.ts


async def test_slack_posts_anew_over_a_row_it_cannot_read(
    harness: Harness, slack: SlackStandIn
) -> None:
    harness.add("renders", **api(slack))
    event = event_of("t-1")
    await harness.store.put_state("renders", message_key(event), {"channel": CHANNEL}, now=0.0)
    [d] = await harness.ingest(event)
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert slack.calls_to("chat.update") == []
    [message] = slack.messages(CHANNEL)
    # The unreadable row is replaced by a reference to the new message.
    ref = SlackMessageRef.from_json(await harness.store.get_state("renders", message_key(event)))
    assert ref is not None and ref.ts == message.ts and ref.final


# --- email over rows it finds -------------------------------------------------------------------


async def mail(
    harness: Harness, smtp_server: SmtpServerFactory, to: list[str] = TO[:1]
) -> SmtpServer:
    """A plain-text SMTP server, and an email destination "ops" mailing ``to`` through it."""
    server = await smtp_server()
    config = {"type": "email", "to": to, "from": "relay@example.com", "starttls": False}
    harness.add("ops", **config, host=server.host, port=server.port, timeout="5s")
    return server


async def test_email_replies_to_the_root_an_old_row_names(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await mail(harness, smtp_server)
    event = event_of("t-1")
    root = "<dlv_root@example.com>"
    await harness.store.put_state("ops", MailThread.key(event), {"message_id": root}, now=0.0)
    await harness.ingest(event)
    await harness.run()
    [got] = server.messages
    assert got.message["In-Reply-To"] == root


async def test_email_starts_a_new_thread_over_a_row_it_cannot_read(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await mail(harness, smtp_server)
    event = event_of("t-1")
    await harness.store.put_state("ops", MailThread.key(event), {"message_id": 7}, now=0.0)
    [d] = await harness.ingest(event)
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    [got] = server.messages
    assert got.message["In-Reply-To"] is None
    # This mail is the task's root from now on.
    thread = MailThread.from_json(await harness.store.get_state("ops", MailThread.key(event)))
    assert thread == MailThread(f"<{d}@example.com>")


async def test_email_skips_the_recipients_an_old_row_says_were_served(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await mail(harness, smtp_server, to=TO)
    [d] = await harness.ingest(event_of("t-1"))
    row = {"accepted": ["ops@example.com"], "refused": {}}
    await harness.store.put_state("ops", RecipientOutcomes.key(d), row, now=0.0)
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert [m.rcpt_tos for m in server.messages] == [("render@example.com", "lead@example.com")]


async def test_email_mails_no_one_over_outcomes_it_cannot_read(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    # Who got the mail is unknown: mailing everyone could mail some twice, so the delivery
    # fails for good, naming the row, and nothing is sent.
    server = await mail(harness, smtp_server, to=TO)
    [d] = await harness.ingest(event_of("t-1"))
    row = {"accepted": "ops@example.com", "refused": {}}
    await harness.store.put_state("ops", RecipientOutcomes.key(d), row, now=0.0)
    await harness.run()
    record = await harness.record(d)
    assert record.state == "dead"
    assert "unreadable recipient outcomes" in record.last_error
    assert RecipientOutcomes.key(d) in record.last_error
    assert server.messages == []
    # The row is left as it was, for whoever looks into it.
    assert await harness.store.get_state("ops", RecipientOutcomes.key(d)) == row
