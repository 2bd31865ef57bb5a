"""Email destination: one multipart mail per event, threaded per task (aiosmtplib).

Every delivery has its own ``Message-ID``, the same on every retry; the first mail of a task
is the thread's root, and later mails carry ``In-Reply-To``/``References`` to it, so a mail
client shows one thread per task. Outcomes are per recipient: the recipients the server took
are kept in the store and not mailed again when the delivery is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import ssl
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from relay import __version__
from relay.channels.base import ChannelDeps, Delivery
from relay.digest_view import DigestView
from relay.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from relay.render.digest import digest_mail
from relay.render.mail import MailContent, mail_content
from relay.routing.model import EmailDestination
from relay.store.base import MailThread, RecipientOutcomes
from relay.templating import context, destination_templates

DEFAULT_TIMEOUT = 30.0


class EmailChannel:
    """Sends one delivery as one mail to every recipient not yet served."""

    def __init__(self, name: str, config: EmailDestination, deps: ChannelDeps) -> None:
        self.name = name
        self._config = config
        self._deps = deps
        self._timeout = config.timeout or DEFAULT_TIMEOUT
        self._tls = _tls_context(config) if config.security != "none" else None
        self._domain = (config.from_ or "relay@relay.invalid").rpartition("@")[2]
        self._templates = destination_templates(name, config)

    def message_id(self, delivery: Delivery) -> str:
        """Stable per delivery: a retry is the same message, which servers and clients dedupe."""
        return f"<{delivery.id}@{self._domain}>"

    def recipients(self, delivery: Delivery) -> list[str]:
        """Who the mail goes to: ``to``, each templated address rendered and checked."""
        templated = any(not isinstance(a, str) for a in self._templates.to)
        values = context(delivery.event, self._deps.names) if templated else {}
        return self._templates.render_to(values)

    def _content(self, delivery: Delivery) -> MailContent:
        templates = self._templates.for_delivery(delivery.template)
        if templates.subject is None and templates.paragraph_html is None:
            return mail_content(delivery.event, self._deps.names)
        values = context(delivery.event, self._deps.names)
        return mail_content(delivery.event, self._deps.names, templates.mail(values))

    def build(
        self, delivery: Delivery, root: str | None, to: list[str] | None = None
    ) -> EmailMessage:
        """The mail; ``root`` is the Message-ID of the task's first mail, if this is not it;
        ``to``: the recipients (rendered), else ``recipients(delivery)``."""
        content = self._content(delivery)
        msg = EmailMessage()
        # EmailMessage refuses CR/LF in any header value: a payload cannot add headers even
        # if rendering let one through.
        msg["Subject"] = content.subject
        msg["From"] = self._config.from_ or ""
        msg["To"] = ", ".join(to if to is not None else self.recipients(delivery))
        msg["Date"] = email.utils.formatdate(self._deps.clock(), usegmt=True)
        msg["Message-ID"] = self.message_id(delivery)
        if root is not None and root != msg["Message-ID"]:
            msg["In-Reply-To"] = root
            msg["References"] = root
        # Tells mail servers and autoresponders that no human wrote this.
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Relay-Event"] = delivery.event.id
        msg["User-Agent"] = f"relay/{__version__}"
        msg.set_content(content.text)
        msg.add_alternative(content.html, subtype="html")
        return msg

    def render(self, delivery: Delivery) -> str:
        """The headers and the text part, decoded (the HTML part says the same)."""
        config = self._config
        content = self._content(delivery)
        to = self.recipients(delivery)
        return (
            f"Mail via {config.host}:{config.effective_port} ({config.security})\n"
            f"From: {config.from_}\nTo: {', '.join(to)}\n"
            f"Subject: {content.subject}\nMessage-ID: {self.message_id(delivery)}\n\n"
            f"{content.text}"
        )

    # Digests: one mail, when the window closes.
    live = False

    async def send_digest(self, delivery: Delivery, view: DigestView) -> None:
        """Mail the digest once to every recipient not yet served (per recipient, like any
        delivery); its Message-ID is the window's, the same on every retry."""
        to = self.recipients(delivery)
        content = digest_mail(view)
        msg = EmailMessage()
        msg["Subject"] = content.subject
        msg["From"] = self._config.from_ or ""
        msg["To"] = ", ".join(to)
        msg["Date"] = email.utils.formatdate(self._deps.clock(), usegmt=True)
        window = hashlib.sha256(view.key.encode()).hexdigest()[:32]
        msg["Message-ID"] = f"<digest-{window}@{self._domain}>"
        msg["Auto-Submitted"] = "auto-generated"
        msg["User-Agent"] = f"relay/{__version__}"
        msg.set_content(content.text)
        msg.add_alternative(content.html, subtype="html")
        await self._send_once(delivery, msg, to)

    async def _send_once(self, delivery: Delivery, message: EmailMessage, to: list[str]) -> None:
        """``message`` to the recipients of ``to`` this delivery has not served yet."""
        outcome_key = RecipientOutcomes.key(delivery.id)
        done = await self._outcomes(outcome_key)
        accepted = list(done.accepted)
        refused: dict[str, str] = {} if delivery.attempt == 1 else dict(done.refused)
        waiting = [r for r in to if r not in accepted and r not in refused]
        if waiting:
            later = await self._mail(message, waiting, refused)
            accepted += [r for r in waiting if r not in later and r not in refused]
            outcomes = RecipientOutcomes(tuple(accepted), refused)
            await self._deps.state.put_state(
                self.name, outcome_key, outcomes.to_json(), self._now()
            )
            if later:
                raise TransientDeliveryError(_summary(accepted, refused, later))
        if refused:
            raise PermanentDeliveryError(_summary(accepted, refused, {}))

    async def send(self, delivery: Delivery) -> None:
        event = delivery.event
        to = self.recipients(delivery)
        state = self._deps.state
        thread_key = MailThread.key(event)
        outcome_key = RecipientOutcomes.key(delivery.id)
        # A thread row of another shape reads as None: this mail starts a new thread (and
        # becomes its root), the most such a row can cost.
        thread = MailThread.from_json(await state.get_state(self.name, thread_key))
        done = await self._outcomes(outcome_key)
        accepted = list(done.accepted)
        # Attempt 1 is a first try or a replay (`relay replay` resets the count): recipients
        # refused before get another chance then; the ones that got the mail still do not.
        refused: dict[str, str] = {} if delivery.attempt == 1 else dict(done.refused)
        waiting = [r for r in to if r not in accepted and r not in refused]
        if waiting:
            root = thread.message_id if thread else None
            message = self.build(delivery, root, to)
            later = await self._mail(message, waiting, refused)
            accepted += [r for r in waiting if r not in later and r not in refused]
            outcomes = RecipientOutcomes(tuple(accepted), refused)
            await state.put_state(self.name, outcome_key, outcomes.to_json(), self._now())
            if thread is None and accepted:
                # The first mail anyone got is the root every later mail of the task replies to.
                root_thread = MailThread(str(message["Message-ID"]))
                await state.put_state(self.name, thread_key, root_thread.to_json(), self._now())
            if later:
                raise TransientDeliveryError(_summary(accepted, refused, later))
        if refused:
            raise PermanentDeliveryError(_summary(accepted, refused, {}))

    async def _outcomes(self, key: str) -> RecipientOutcomes:
        """What became of this delivery's recipients so far; none served if nothing is kept.

        A row that is there but unreadable fails the delivery for good instead: who got the
        mail is unknown, and mailing everyone again could mail some twice. The dead delivery
        names the row; deleting it from ``channel_state`` lets ``relay replay`` mail everyone."""
        raw = await self._deps.state.get_state(self.name, key)
        if raw is None:
            return RecipientOutcomes()
        outcomes = RecipientOutcomes.from_json(raw)
        if outcomes is None:
            raise PermanentDeliveryError(
                f"smtp: unreadable recipient outcomes in channel state {self.name}/{key}: "
                "not sent, so no recipient gets the mail twice"
            )
        return outcomes

    async def _mail(
        self, message: EmailMessage, recipients: list[str], refused: dict[str, str]
    ) -> dict[str, str]:
        """Send to ``recipients``; permanent refusals go into ``refused``; the recipients to
        try again later, with why, are returned. Failures of the whole mail raise."""
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.effective_port,
            use_tls=config.security == "tls",
            # True: STARTTLS is required; aiosmtplib fails rather than go on in plain text.
            start_tls=config.security == "starttls",
            tls_context=self._tls,
            timeout=self._timeout,
        )
        try:
            # The whole session, like a webhook attempt: connect to QUIT.
            async with asyncio.timeout(self._timeout):
                await client.connect()
                if config.username is not None:
                    password = config.password.get_secret_value() if config.password else ""
                    await client.login(config.username, password)
                sent, _ = await client.send_message(
                    message, sender=config.from_, recipients=recipients
                )
                errors: dict[str, Any] = dict(sent)
                # The server has taken the mail: a failing QUIT changes nothing.
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()
        except aiosmtplib.SMTPRecipientsRefused as exc:
            errors = {r.recipient: r for r in exc.recipients}
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _failure(exc, recipients) from None
        finally:
            client.close()
        later: dict[str, str] = {}
        for recipient, answer in errors.items():
            code, text = _code_and_text(answer)
            line = f"{code} {text}".strip()
            if 400 <= code < 500:
                later[recipient] = line
            else:
                refused[recipient] = line
        return later

    def _now(self) -> float:
        return self._deps.clock()


def _tls_context(config: EmailDestination) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _code_and_text(answer: Any) -> tuple[int, str]:
    code = int(getattr(answer, "code", 0) or 0)
    text = str(getattr(answer, "message", "") or "")
    return code, " ".join(text.split())


def _failure(exc: Exception, recipients: list[str]) -> DeliveryError:
    """Classify a failure of the whole mail: 5xx replies are permanent, 4xx and anything on the
    connection (refused, reset, timed out, closed) are transient. The reason names the
    recipients: which mail it was, beside other destinations' reasons in a list."""
    reason, transient = _why(exc)
    reason = f"{reason} (mail to {', '.join(recipients)})"
    return TransientDeliveryError(reason) if transient else PermanentDeliveryError(reason)


def _why(exc: Exception) -> tuple[str, bool]:
    """The reason of a whole-mail failure, and whether it is transient."""
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(
        exc.__cause__, ssl.SSLCertVerificationError
    ):
        cause = exc if isinstance(exc, ssl.SSLCertVerificationError) else exc.__cause__
        return (
            f"smtp: server certificate not trusted ({getattr(cause, 'verify_message', cause)}); "
            "set ca_file, or verify: false for a test server",
            False,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code, text = _code_and_text(exc)
        what = "login" if isinstance(exc, aiosmtplib.SMTPAuthenticationError) else "server"
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            what = f"server, refusing sender {exc.sender},"
        return f"smtp: {what} answered {code} {text}".rstrip(), 400 <= code < 500
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in str(exc):
        # Never a plain-text fallback: the server must offer STARTTLS or the mail waits.
        return (
            f"smtp: {exc} (starttls is required; set tls: true, or starttls: false "
            "for a plain local smarthost)",
            False,
        )
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "smtp: timed out", True
    return f"smtp: {type(exc).__name__}: {exc}", True


def _summary(accepted: list[str], refused: dict[str, str], later: dict[str, str]) -> str:
    parts = []
    if refused:
        parts.append("refused " + "; ".join(f"{r}: {why}" for r, why in refused.items()))
    if later:
        parts.append("deferred " + "; ".join(f"{r}: {why}" for r, why in later.items()))
    if accepted:
        parts.append("delivered to " + ", ".join(accepted))
    return "smtp: " + " · ".join(parts)
