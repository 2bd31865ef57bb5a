"""The test SMTP server (tests/smtp_server.py), driven by aiosmtplib itself.

Besides proving the server, these tests pin down which aiosmtplib exception each
fault produces, which is what the email channel classifies as retry or give up.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from aiosmtplib import SMTPResponse

from tests.smtp_fixtures import SmtpServerFactory
from tests.smtp_server import SmtpServer, TestCA

SENDER = "relay@example.com"


def make_message(*to: str, subject: str = "Task done") -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = ", ".join(to or ("ops@example.com",))
    message["Subject"] = subject
    message.set_content("Your task finished. Ünïcödé body.\n.leading dot line\n")
    return message


def trusting(ca: TestCA) -> ssl.SSLContext:
    """What the email channel builds from its ``ca_file`` option."""
    assert ca.ca_file is not None
    return ssl.create_default_context(cafile=str(ca.ca_file))


async def send(
    server: SmtpServer, message: EmailMessage | None = None, **kwargs: Any
) -> tuple[dict[str, SMTPResponse], str]:
    kwargs.setdefault("timeout", 5)
    return await aiosmtplib.send(
        message or make_message(), hostname=server.host, port=server.port, **kwargs
    )


# -- delivery --------------------------------------------------------------------


async def test_plain_send_is_received_and_parsed(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    errors, reply = await send(server, make_message("a@example.com", "b@example.com"))

    assert errors == {}
    assert reply.startswith("OK")
    [got] = server.messages
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ("a@example.com", "b@example.com")
    assert got.message["Subject"] == "Task done"
    assert got.message["To"] == "a@example.com, b@example.com"
    # 8bit bodies keep the wire's CRLF line ends when parsed; the dot was unstuffed.
    assert got.message.get_content() == "Your task finished. Ünïcödé body.\r\n.leading dot line\r\n"
    assert got.content.startswith(b"From: relay@example.com\r\n")
    assert not got.over_tls
    assert got.auth_user is None
    assert server.connections == 1
    assert server.sessions[0].messages == 1
    assert server.errors == []


async def test_plain_server_offers_neither_starttls_nor_auth(
    smtp_server: SmtpServerFactory,
) -> None:
    server = await smtp_server()
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False) as client:
        await client.ehlo()
        assert not client.supports_extension("starttls")
        assert not client.supports_extension("auth")


async def test_starttls_with_the_ca_file(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="starttls")
    await send(server, start_tls=True, tls_context=trusting(test_ca))

    [got] = server.messages
    assert got.over_tls
    assert server.starttls_count == 1
    assert server.sessions[0].starttls
    assert not server.sessions[0].implicit_tls


async def test_starttls_with_cert_bundle(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="starttls")
    await send(server, start_tls=True, cert_bundle=str(test_ca.ca_file))
    assert server.messages[0].over_tls


async def test_starttls_is_required_before_mail(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server(tls_mode="starttls")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await send(server, start_tls=False)
    assert caught.value.code == 530
    assert server.messages == []


async def test_starttls_can_be_optional(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server(tls_mode="starttls", require_starttls=False)
    await send(server, start_tls=False)
    assert not server.messages[0].over_tls


async def test_implicit_tls(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="implicit")
    await send(server, use_tls=True, tls_context=trusting(test_ca))

    [got] = server.messages
    assert got.over_tls
    assert server.sessions[0].implicit_tls
    assert server.starttls_count == 0


async def test_starttls_certificate_not_trusted(smtp_server: SmtpServerFactory) -> None:
    """Without the CA file the system trust store rejects the certificate; aiosmtplib
    lets ssl.SSLCertVerificationError through unwrapped (not an SMTPException)."""
    server = await smtp_server(tls_mode="starttls")
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        await send(server, start_tls=True)
    assert not isinstance(caught.value, aiosmtplib.SMTPException)
    assert caught.value.verify_message == "unable to get local issuer certificate"
    assert server.messages == []
    await server.wait_until(lambda: server.errors != [])  # the server side notices a bit later
    assert [type(e).__name__ for e in server.errors] == ["TLSSetupException"]


async def test_starttls_certificate_from_another_ca(
    smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="starttls", ca=TestCA())
    with pytest.raises(ssl.SSLCertVerificationError):
        await send(server, start_tls=True, tls_context=trusting(test_ca))
    assert server.messages == []


async def test_implicit_tls_certificate_not_trusted(smtp_server: SmtpServerFactory) -> None:
    """With implicit TLS the same failure happens inside connect(), which wraps every
    OSError: SMTPConnectError, caused by ssl.SSLCertVerificationError."""
    server = await smtp_server(tls_mode="implicit")
    with pytest.raises(aiosmtplib.SMTPConnectError) as caught:
        await send(server, use_tls=True)
    assert type(caught.value) is aiosmtplib.SMTPConnectError
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert server.messages == []
    assert server.connections == 0  # the SMTP session never started


async def test_client_requiring_starttls_refuses_a_plain_server(
    smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="none")
    with pytest.raises(aiosmtplib.SMTPException) as caught:
        await send(server, start_tls=True, tls_context=trusting(test_ca))
    assert type(caught.value) is aiosmtplib.SMTPException
    assert caught.value.message == "SMTP STARTTLS extension not supported by server."
    assert server.messages == []
    assert server.sessions[0].ehlo is not None  # it got as far as EHLO, then gave up


# -- AUTH ------------------------------------------------------------------------


async def test_auth_success(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="starttls", auth={"mailer": "s3cret"})
    await send(
        server,
        start_tls=True,
        tls_context=trusting(test_ca),
        username="mailer",
        password="s3cret",
    )
    [got] = server.messages
    assert got.auth_user == "mailer"
    assert got.over_tls
    assert [(a.mechanism, a.username, a.success) for a in server.auth_attempts] == [
        ("PLAIN", "mailer", True)
    ]


async def test_auth_login_mechanism(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="starttls", auth={"mailer": "s3cret"})
    async with aiosmtplib.SMTP(
        hostname=server.host, port=server.port, start_tls=True, tls_context=trusting(test_ca)
    ) as client:
        await client.ehlo()  # STARTTLS reset the session: EHLO again before AUTH
        response = await client.auth_login("mailer", "s3cret")
        assert response.code == 235
        await client.send_message(make_message())
    assert server.messages[0].auth_user == "mailer"
    assert server.auth_attempts[0].mechanism == "LOGIN"


async def test_auth_wrong_password(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="starttls", auth={"mailer": "s3cret"})
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        await send(
            server,
            start_tls=True,
            tls_context=trusting(test_ca),
            username="mailer",
            password="wrong",
        )
    assert caught.value.code == 535
    assert caught.value.message == "5.7.8 Authentication credentials invalid"
    # aiosmtplib's login() tries every offered mechanism before giving up.
    assert [(a.mechanism, a.success) for a in server.auth_attempts] == [
        ("PLAIN", False),
        ("LOGIN", False),
    ]
    assert server.messages == []


async def test_auth_is_required_before_mail(
    smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="starttls", auth={"mailer": "s3cret"})
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await send(server, start_tls=True, tls_context=trusting(test_ca))
    assert caught.value.code == 530
    assert server.messages == []


async def test_auth_is_not_offered_before_tls(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server(
        tls_mode="starttls", require_starttls=False, auth={"mailer": "s3cret"}
    )
    with pytest.raises(aiosmtplib.SMTPException) as caught:
        await send(server, start_tls=False, username="mailer", password="s3cret")
    assert type(caught.value) is aiosmtplib.SMTPException
    assert "AUTH extension is not supported" in caught.value.message
    assert server.auth_attempts == []


async def test_auth_over_plaintext_when_allowed(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server(auth={"mailer": "s3cret"}, auth_require_tls=False)
    await send(server, username="mailer", password="s3cret")
    assert server.messages[0].auth_user == "mailer"
    assert not server.messages[0].over_tls


async def test_auth_with_implicit_tls(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="implicit", auth={"mailer": "s3cret"})
    await send(
        server,
        use_tls=True,
        tls_context=trusting(test_ca),
        username="mailer",
        password="s3cret",
    )
    assert server.messages[0].auth_user == "mailer"


async def test_scripted_temporary_auth_failure(
    smtp_server: SmtpServerFactory, test_ca: TestCA
) -> None:
    server = await smtp_server(tls_mode="starttls", auth={"mailer": "s3cret"})
    server.reply_next("AUTH", "454 4.7.0 Temporary authentication failure", times=2)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        await send(
            server,
            start_tls=True,
            tls_context=trusting(test_ca),
            username="mailer",
            password="s3cret",
        )
    assert caught.value.code == 454
    assert server.messages == []


# -- scripted faults -------------------------------------------------------------


async def test_451_on_data_then_accepted(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    server.reply_next("DATA", "451 4.3.0 Try again later")

    with pytest.raises(aiosmtplib.SMTPDataError) as caught:
        await send(server)
    assert caught.value.code == 451
    assert caught.value.message == "4.3.0 Try again later"
    assert server.messages == []

    await send(server)
    assert len(server.messages) == 1


async def test_554_on_data(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    server.reply_next("DATA", "554 5.6.0 Message rejected")
    with pytest.raises(aiosmtplib.SMTPDataError) as caught:
        await send(server)
    assert caught.value.code == 554
    assert server.messages == []


@pytest.mark.parametrize(
    "reply", ["451 4.3.2 System not accepting messages", "550 5.7.1 Sender rejected"]
)
async def test_refused_mail_from(smtp_server: SmtpServerFactory, reply: str) -> None:
    server = await smtp_server()
    server.reply_next("MAIL", reply)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await send(server)
    assert caught.value.code == int(reply[:3])
    assert caught.value.sender == SENDER
    assert server.messages == []


async def test_421_on_mail_closes_the_connection(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    server.reply_next("MAIL", "421 4.3.2 Service shutting down")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await send(server)
    assert caught.value.code == 421
    await server.wait_until(lambda: server.sessions[0].closed)
    await send(server)  # the fault was for the next MAIL only
    assert len(server.messages) == 1


async def test_one_of_three_recipients_refused(smtp_server: SmtpServerFactory) -> None:
    """Partial refusal does not raise: send() returns ({refused: response}, reply)."""
    server = await smtp_server()
    server.refuse_recipient("Nobody@Example.com")
    errors, reply = await send(
        server, make_message("a@example.com", "nobody@example.com", "c@example.com")
    )

    assert errors == {"nobody@example.com": SMTPResponse(550, "5.1.1 User unknown")}
    assert reply.startswith("OK")
    [got] = server.messages
    assert got.rcpt_tos == ("a@example.com", "c@example.com")


async def test_all_recipients_refused(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    server.refuse_recipient("a@example.com")
    server.refuse_recipient("b@example.com", "450 4.2.1 Mailbox busy")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        await send(server, make_message("a@example.com", "b@example.com"))
    assert not isinstance(caught.value, aiosmtplib.SMTPResponseException)  # no .code
    assert [(r.recipient, r.code) for r in caught.value.recipients] == [
        ("a@example.com", 550),
        ("b@example.com", 450),
    ]
    assert server.messages == []


async def test_scripted_rcpt_reply(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    server.reply_next("RCPT", "452 4.5.3 Too many recipients")
    errors, _ = await send(server, make_message("a@example.com", "b@example.com"))
    assert errors == {"a@example.com": SMTPResponse(452, "4.5.3 Too many recipients")}
    assert server.messages[0].rcpt_tos == ("b@example.com",)


@pytest.mark.parametrize("keep", [False, True])
async def test_drop_after_data(smtp_server: SmtpServerFactory, keep: bool) -> None:
    server = await smtp_server()
    server.drop_after_data(keep=keep)

    with pytest.raises(aiosmtplib.SMTPServerDisconnected) as caught:
        await send(server)
    assert type(caught.value) is aiosmtplib.SMTPServerDisconnected
    assert isinstance(caught.value, ConnectionError)
    assert server.sessions[0].dropped
    assert len(server.messages) == (1 if keep else 0)
    if keep:
        assert server.messages[0].dropped

    await send(server)  # the retry
    assert len(server.messages) == (2 if keep else 1)
    assert not server.messages[-1].dropped


async def test_drop_after_data_over_tls(smtp_server: SmtpServerFactory, test_ca: TestCA) -> None:
    server = await smtp_server(tls_mode="starttls")
    server.drop_after_data()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(server, start_tls=True, tls_context=trusting(test_ca))
    assert server.messages == []


async def test_read_timeout(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    server.delay_next("DATA", 5)
    with pytest.raises(aiosmtplib.SMTPReadTimeoutError) as caught:
        await send(server, timeout=0.2)
    assert isinstance(caught.value, aiosmtplib.SMTPTimeoutError)
    assert isinstance(caught.value, TimeoutError)
    await server.wait_until(lambda: server.sessions[0].closed)  # the client hung up...
    assert server.messages == []  # ...so the message was not queued


async def test_connection_refused() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(aiosmtplib.SMTPConnectError) as caught:
        await aiosmtplib.send(make_message(), hostname="127.0.0.1", port=port, timeout=5)
    assert type(caught.value) is aiosmtplib.SMTPConnectError
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_connect_timeout_when_no_greeting() -> None:
    """Not a feature of SmtpServer: a listener that accepts but never says 220."""
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        with pytest.raises(aiosmtplib.SMTPConnectTimeoutError) as caught:
            await aiosmtplib.send(make_message(), hostname="127.0.0.1", port=port, timeout=0.2)
        assert isinstance(caught.value, aiosmtplib.SMTPTimeoutError)
        assert isinstance(caught.value, aiosmtplib.SMTPConnectError)
    finally:
        silent.close()
        for writer in accepted:  # Server.close() leaves accepted connections open
            writer.close()
            await writer.wait_closed()
        await silent.wait_closed()


# -- the server itself -----------------------------------------------------------


async def test_several_messages_on_one_connection(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    server.reply_next("DATA", "451 4.3.0 Try again later")
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port) as client:
        with pytest.raises(aiosmtplib.SMTPDataError):
            await client.send_message(make_message(subject="one"))
        await client.send_message(make_message(subject="two"))
        await client.send_message(make_message("z@example.com", subject="three"))
    assert [m.message["Subject"] for m in server.messages] == ["two", "three"]
    assert server.messages[1].rcpt_tos == ("z@example.com",)
    assert server.connections == 1


async def test_wait_for_messages(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    sending = asyncio.create_task(send(server))
    [got] = await server.wait_for_messages(1, within=5)
    await sending
    assert got.message["Subject"] == "Task done"


async def test_stop_drops_open_connections(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server(tls_mode="starttls", require_starttls=False)
    client = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False, timeout=5)
    await client.connect()
    await server.stop()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()
    assert server.sessions[0].closed
    await server.stop()  # idempotent


async def test_bad_scripts_are_rejected(smtp_server: SmtpServerFactory) -> None:
    server = await smtp_server()
    with pytest.raises(ValueError, match="cannot be scripted"):
        server.reply_next("STARTTLS", "454 4.7.0 TLS not available")
    with pytest.raises(ValueError, match="single-line SMTP reply"):
        server.reply_next("DATA", "try again")
    with pytest.raises(ValueError, match="tls_mode"):
        SmtpServer(tls_mode="tls")  # type: ignore[arg-type]
