"""The email destination against a real SMTP server on 127.0.0.1 (aiosmtpd), with STARTTLS
from a test CA, AUTH and scripted faults; the dispatcher stepped by hand over a SQLite store."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest

from relay.events import Output, TaskError, TaskEvent
from tests.channels.harness import Harness
from tests.events_factory import make_event
from tests.smtp_fixtures import SmtpServerFactory
from tests.smtp_server import SmtpServer, TestCA

TO = ["ops@example.com", "render@example.com", "lead@example.com"]


def mail(server: SmtpServer, test_ca: TestCA | None = None, **extra: Any) -> dict[str, Any]:
    """An email destination's rules keys for ``server``."""
    config: dict[str, Any] = {
        "type": "email",
        "to": TO[:1],
        "from": "relay@example.com",
        "host": server.host,
        "port": server.port,
        "timeout": "5s",
    }
    if server.tls_mode == "none":
        config["starttls"] = False
    elif server.tls_mode == "implicit":
        config["tls"] = True
    if test_ca is not None:
        config["ca_file"] = str(test_ca.ca_file)
    config.update(extra)
    return config


def event_of(task_id: str, status: str = "succeeded", **fields: Any) -> TaskEvent:
    return make_event(task_id=task_id, status=status, model="kling", **fields)


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


# --- the mail ---------------------------------------------------------------------------------


async def test_starttls_and_auth_deliver_a_multipart_mail(
    harness: Harness, smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="starttls", auth={"relay": "s3cret"})
    harness.add("ops", **mail(server, test_ca, username="relay", password="s3cret"))
    event = event_of(
        "1a2b3c4d-5e6f",
        prompt="a red fox in the snow",
        outputs=[Output(kind="video", url="https://cdn.example/fox.mp4")],
    )
    [d] = await harness.ingest(event)
    await harness.run()

    assert (await harness.record(d)).state == "delivered"
    [got] = server.messages
    assert got.over_tls and got.auth_user == "relay"
    assert got.rcpt_tos == ("ops@example.com",)
    msg = got.message
    assert msg["Subject"].startswith("[relay] Kling video ready: task 1a2b3c4d")
    assert msg["From"] == "relay@example.com"
    assert msg["To"] == "ops@example.com"
    assert msg["Message-ID"] == f"<{d}@example.com>"
    assert msg["In-Reply-To"] is None
    assert msg["Auto-Submitted"] == "auto-generated"
    text, html = parts(msg)
    assert "a red fox in the snow" in text and "https://cdn.example/fox.mp4" in text
    assert "a red fox in the snow" in html and 'href="https://cdn.example/fox.mp4"' in html


async def test_implicit_tls(
    harness: Harness, smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="implicit")
    harness.add("ops", **mail(server, test_ca))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert server.messages[0].over_tls


async def test_payload_values_are_escaped_and_cannot_add_headers(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    harness.add("ops", **mail(server))
    event = event_of(
        "t-1",
        "failed",
        outputs=[],
        prompt="<script>alert(1)</script>",
        error=TaskError(message="boom\r\nBcc: victim@example.com\r\n\r\n<b>bold</b>"),
    )
    [d] = await harness.ingest(event)
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    [got] = server.messages
    assert got.rcpt_tos == ("ops@example.com",)
    assert got.message["Bcc"] is None
    assert "\n" not in got.message["Subject"]
    _, html = parts(got.message)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>bold</b>" not in html


# --- threading --------------------------------------------------------------------------------


async def test_later_mails_of_a_task_reply_to_the_first(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    harness.add("ops", **mail(server))
    [first] = await harness.ingest(event_of("t-1", "processing", progress=40, outputs=[]))
    [second] = await harness.ingest(event_of("t-1", "succeeded"))
    [other] = await harness.ingest(event_of("t-2", "succeeded"))
    await harness.run()

    by_id = {m.message["Message-ID"]: m.message for m in server.messages}
    root = f"<{first}@example.com>"
    assert set(by_id) == {root, f"<{second}@example.com>", f"<{other}@example.com>"}
    reply = by_id[f"<{second}@example.com>"]
    assert reply["In-Reply-To"] == root and reply["References"] == root
    assert by_id[f"<{other}@example.com>"]["In-Reply-To"] is None
    assert by_id[root]["In-Reply-To"] is None


# --- outcomes -----------------------------------------------------------------------------------


async def test_451_then_250_is_retried_and_sent_once(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    server.reply_next("DATA", "451 4.3.0 Try again later")
    harness.add("ops", **mail(server))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert "451 4.3.0 Try again later" in record.last_error
    harness.clock.now = record.next_attempt_at or 0.0
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert len(server.messages) == 1


async def test_one_refused_recipient_of_three(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    server.refuse_recipient("lead@example.com", "550 5.1.1 User unknown")
    harness.add("ops", **mail(server, to=TO))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()

    record = await harness.record(d)
    assert record.state == "dead"
    assert "refused lead@example.com: 550 5.1.1 User unknown" in record.last_error
    assert "delivered to ops@example.com, render@example.com" in record.last_error
    [got] = server.messages
    assert got.rcpt_tos == ("ops@example.com", "render@example.com")
    # The header still names everyone the mail was for.
    assert got.message["To"] == ", ".join(TO)


async def test_a_deferred_recipient_is_retried_alone(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    server.refuse_recipient("lead@example.com", "452 4.2.2 Mailbox full")
    harness.add("ops", **mail(server, to=TO))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert "deferred lead@example.com: 452 4.2.2 Mailbox full" in record.last_error

    server.clear_faults()
    harness.clock.now = record.next_attempt_at or 0.0
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert [m.rcpt_tos for m in server.messages] == [
        ("ops@example.com", "render@example.com"),
        ("lead@example.com",),
    ]
    # The same message both times.
    assert len({m.message["Message-ID"] for m in server.messages}) == 1


async def test_connection_closed_after_data_is_retried_with_the_same_message_id(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    server.drop_after_data(keep=True)  # the server may have queued it: the ID lets it dedupe
    harness.add("ops", **mail(server))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert "smtp:" in record.last_error
    harness.clock.now = record.next_attempt_at or 0.0
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    ids = [m.message["Message-ID"] for m in server.messages]
    assert ids == [f"<{d}@example.com>", f"<{d}@example.com>"]


async def test_required_starttls_is_never_skipped(
    harness: Harness, smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="none")
    # The destination asks for STARTTLS (the default); the server does not offer it.
    config = mail(server, test_ca)
    del config["starttls"]
    harness.add("ops", **config)
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "dead"
    assert "STARTTLS" in record.last_error and "starttls is required" in record.last_error
    assert server.messages == []


async def test_an_untrusted_certificate_is_refused(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server(tls_mode="starttls")
    harness.add("ops", **mail(server))  # no ca_file: the system store does not know the CA
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "dead"
    assert "certificate not trusted" in record.last_error
    assert server.messages == []


async def test_verify_false_accepts_any_certificate(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server(tls_mode="starttls")
    harness.add("ops", **mail(server, verify=False))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    assert (await harness.record(d)).state == "delivered"


async def test_535_on_auth_is_dead_with_the_reason(
    harness: Harness, smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="starttls", auth={"relay": "s3cret"})
    harness.add("ops", **mail(server, test_ca, username="relay", password="wrong"))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "dead"
    assert record.attempts == 1
    assert "smtp: login answered 535" in record.last_error
    assert "wrong" not in record.last_error
    assert server.messages == []


@pytest.mark.parametrize(
    ("command", "reply", "state"),
    [
        ("MAIL", "451 4.3.2 System not accepting messages", "pending"),
        ("MAIL", "550 5.7.1 Sender rejected", "dead"),
        ("DATA", "554 5.6.0 Message rejected", "dead"),
    ],
)
async def test_4xx_is_transient_and_5xx_permanent(
    harness: Harness, smtp_server: SmtpServerFactory, command: str, reply: str, state: str
) -> None:
    server = await smtp_server()
    server.reply_next(command, reply)
    harness.add("ops", **mail(server))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == state
    assert reply.split(" ", 1)[1] in record.last_error
    # Which mail: its recipients, and the sender when that is what the server refused.
    assert f"(mail to {TO[0]})" in record.last_error
    if command == "MAIL":
        assert "refusing sender relay@example.com" in record.last_error


async def test_connection_refused_is_transient(harness: Harness) -> None:
    harness.add(
        "ops",
        type="email",
        to=TO[:1],
        host="127.0.0.1",
        port=9,
        starttls=False,
        timeout="2s",
        **{"from": "relay@example.com"},
    )
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert "smtp:" in record.last_error


async def test_a_silent_server_times_out_transiently(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    server.delay_next("DATA", 5)
    harness.add("ops", **mail(server, timeout="0.5s"))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    record = await harness.record(d)
    assert record.state == "pending"
    assert "timed out" in record.last_error


def test_render_shows_the_headers_and_the_text_part() -> None:
    from relay.channels.base import ChannelDeps, Delivery
    from relay.channels.email import EmailChannel
    from relay.providers import default_providers
    from relay.routing.model import EmailDestination
    from relay.runtime import provider_names
    from relay.store.memory import MemoryStore

    dest = EmailDestination.model_validate(
        {"type": "email", "to": TO[:2], "from": "relay@example.com", "host": "smtp.example.com"}
    )
    deps = ChannelDeps(
        http=None,  # type: ignore[arg-type]
        clock=lambda: 0.0,
        state=MemoryStore(),
        names=provider_names(default_providers()),
    )
    shown = EmailChannel("ops", dest, deps).render(
        Delivery("dlv_1", "ops", 1, event_of("t-1", prompt="a fox"))
    )
    assert shown.startswith("Mail via smtp.example.com:587 (starttls)\n")
    assert "To: ops@example.com, render@example.com\n" in shown
    assert "Subject: [relay] Kling video ready: task t-1" in shown
    assert "Message-ID: <dlv_1@example.com>" in shown
    assert "a fox" in shown and "=E2" not in shown


async def test_a_replay_mails_only_the_recipients_that_were_refused(
    harness: Harness, smtp_server: SmtpServerFactory
) -> None:
    server = await smtp_server()
    server.refuse_recipient("lead@example.com")
    harness.add("ops", **mail(server, to=TO))
    [d] = await harness.ingest(event_of("t-1"))
    await harness.run()
    assert (await harness.record(d)).state == "dead"

    server.clear_faults()  # the mailbox was created; ops replay the delivery
    assert await harness.store.replay(d, harness.clock.now)
    await harness.run()
    assert (await harness.record(d)).state == "delivered"
    assert [m.rcpt_tos for m in server.messages] == [
        ("ops@example.com", "render@example.com"),
        ("lead@example.com",),
    ]
