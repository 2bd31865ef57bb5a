"""A real SMTP server on 127.0.0.1 for tests, built on aiosmtpd.

It speaks real SMTP (plain, STARTTLS or implicit TLS, AUTH PLAIN/LOGIN) with
certificates from a throwaway trustme CA, records every message and session, and
can be scripted to misbehave: a given reply for the next command(s), a refused
recipient, a slow reply, or a connection dropped after DATA.

Why ``loop.create_server`` on the test's own event loop rather than aiosmtpd's
``Controller`` (which runs a second event loop in a thread):

* the records (``messages``, ``sessions``) and the scripted faults are read and
  written from one thread only, so there is no locking and no "did the server
  thread see my ``reply_next`` yet?" race: a fault scripted before the client
  sends is always in effect;
* ``start()`` and ``stop()`` are plain awaits; ``stop()`` aborts the live
  connections and waits for their handler tasks, so nothing is left for the garbage
  collector to warn about once pytest-asyncio closes the loop (with
  ``filterwarnings = error`` a late ``ResourceWarning`` fails some other test);
* ``Controller`` finds its loop through ``asyncio.get_event_loop()`` and, with
  implicit TLS, connects to itself with an unverified client context just to
  trigger start-up, both needless here.

The cost: the server shares the loop with the code under test, so code that blocks
the loop blocks the server too. That hangs the test (bounded by the client's
timeout) instead of hiding the bug, which is what we want from an async code base.
"""

from __future__ import annotations

import asyncio
import email.policy
import re
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from os import PathLike
from pathlib import Path
from typing import Any, Literal, cast

import trustme
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "AuthAttempt",
    "ReceivedMessage",
    "SessionRecord",
    "SmtpServer",
    "TestCA",
    "TlsMode",
]

TlsMode = Literal["none", "starttls", "implicit"]

HOST = "127.0.0.1"
SERVER_NAME = "localhost"  # the EHLO/greeting name; avoids a socket.getfqdn() DNS lookup

# Commands whose reply can be scripted: the ones aiosmtpd calls a handler hook for.
# (DATA's hook runs after the content has been received, so a scripted DATA reply is
# the reply to the end of data, which is where real servers refuse messages.)
SCRIPTABLE = frozenset({"EHLO", "HELO", "MAIL", "RCPT", "DATA", "AUTH", "RSET", "NOOP", "QUIT"})
_REPLY = re.compile(r"[2-5]\d\d( [^\r\n]*)?")


class TestCA:
    """A throwaway certificate authority and one server certificate it issued.

    The server certificate covers 127.0.0.1 and localhost, so a client that checks the
    host name accepts it for either, provided it trusts this CA (``ca_file``).
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, hosts: Sequence[str] = (HOST, "localhost")) -> None:
        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert(*hosts)
        self.ca_file: Path | None = None

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    def write_ca_file(self, path: str | PathLike[str]) -> Path:
        """Write the CA certificate (PEM) to ``path``, remember it as ``ca_file``."""
        target = Path(path)
        target.write_bytes(self.ca_pem)
        self.ca_file = target
        return target

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the 127.0.0.1/localhost certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this CA (and only it)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._ca.configure_trust(context)
        return context


@dataclass(frozen=True)
class AuthAttempt:
    session: int
    mechanism: str
    username: str
    success: bool


@dataclass
class SessionRecord:
    """One accepted connection (recorded once the SMTP session has started, that is
    after the TLS handshake with implicit TLS)."""

    id: int
    peer: Any
    implicit_tls: bool
    starttls: bool = False
    ehlo: str | None = None
    auth_user: str | None = None
    messages: int = 0
    dropped: bool = False  # closed by ``drop_after_data``
    closed: bool = False

    @property
    def over_tls(self) -> bool:
        return self.implicit_tls or self.starttls


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes  # exactly as received after DATA (CRLF line ends, dots unstuffed)
    message: EmailMessage
    over_tls: bool
    auth_user: str | None
    session: int
    dropped: bool = False  # kept although the connection was then dropped (keep=True)


class _Smtp(SMTP):
    """aiosmtpd's per-connection protocol, tied to its session record and server."""

    def __init__(self, owner: SmtpServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        self.record: SessionRecord | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.record is None  # called again, on the TLS transport, after STARTTLS
        super().connection_made(transport)
        if first:
            self.record = self.owner._session_started(self, transport)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self.record is not None:
            self.record.closed = True
            self.owner._changed()

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine


def _record(smtp: SMTP) -> SessionRecord:
    record = cast(_Smtp, smtp).record
    assert record is not None
    return record


def _over_tls(smtp: SMTP) -> bool:
    transport = smtp.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None


class _Handler:
    """aiosmtpd handler hooks. Careful: aiosmtpd takes every attribute named
    ``handle_*`` for a hook and every ``auth_*`` for an AUTH mechanism."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def _scripted(self, smtp: SMTP, command: str) -> str | None:
        """Apply a scripted delay, then return a scripted reply (or None)."""
        owner = self.owner
        delays = owner._delays.get(command)
        if delays:
            await asyncio.sleep(delays.popleft())
        replies = owner._replies.get(command)
        if not replies:
            return None
        reply = replies.popleft()
        if reply.startswith("421"):
            # A 421 closes the session (RFC 5321 3.8). The close runs on a later turn,
            # after aiosmtpd has written the reply (and close() flushes what is written).
            transport = smtp.transport
            if transport is not None:
                asyncio.get_running_loop().call_soon(transport.close)
        return reply

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        scripted = await self._scripted(server, "EHLO")
        if scripted is not None:
            return [scripted]
        # With this (5-argument) hook, setting host_name is the hook's job.
        session.host_name = hostname
        _record(server).ehlo = hostname
        if self.owner.auth is None:
            # aiosmtpd always offers its built-in PLAIN and LOGIN; a server without
            # accounts should not advertise AUTH at all.
            responses = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> Any:
        scripted = await self._scripted(server, "HELO")
        if scripted is None:
            _record(server).ehlo = hostname
            return MISSING  # aiosmtpd sets host_name and answers 250
        return scripted

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        scripted = await self._scripted(server, "AUTH")
        if scripted is not None:
            if scripted.startswith("535"):
                mechanism = args[0].upper() if args else ""
                self.owner.auth_attempts.append(
                    AuthAttempt(_record(server).id, mechanism, "", False)
                )
                self.owner._changed()
            return scripted
        if self.owner.auth is None:
            return "502 5.5.1 AUTH not supported"
        return MISSING  # aiosmtpd runs PLAIN/LOGIN, then calls SmtpServer._authenticate

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> Any:
        scripted = await self._scripted(server, "MAIL")
        if scripted is not None:
            return scripted
        owner = self.owner
        if owner.auth is not None and owner.auth_required and not session.authenticated:
            # Enforced here instead of aiosmtpd's auth_required=True, which warns
            # (UserWarning) when combined with auth_require_tls=False.
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> Any:
        scripted = await self._scripted(server, "RCPT")
        if scripted is not None:
            return scripted
        refused = self.owner._refused.get(address.lower())
        if refused is not None:
            return refused
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        if owner._drops:
            keep = owner._drops.popleft()
            record = _record(server)
            record.dropped = True
            if keep:
                owner._store(server, envelope, dropped=True)
            transport = cast(asyncio.Transport, server.transport)
            transport.abort()  # no reply, no TLS close_notify: the socket just closes
            # aiosmtpd's connection_lost() cancels this handler task; wait for that.
            await asyncio.sleep(30)
            return "421 4.3.0 Connection should have been dropped"
        scripted = await self._scripted(server, "DATA")
        if scripted is not None:
            return scripted
        owner._store(server, envelope, dropped=False)
        return "250 OK: queued"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        scripted = await self._scripted(server, "RSET")
        return MISSING if scripted is None else scripted

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> Any:
        scripted = await self._scripted(server, "NOOP")
        return MISSING if scripted is None else scripted

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        scripted = await self._scripted(server, "QUIT")
        return MISSING if scripted is None else scripted

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        # aiosmtpd calls this hook synchronously (it must not be a coroutine) once the
        # STARTTLS handshake has succeeded; returning False would refuse the session.
        _record(server).starttls = True
        self.owner.starttls_count += 1
        self.owner._changed()
        return True

    async def handle_exception(self, error: Exception) -> str:
        # Replaces aiosmtpd's log.exception(); a failed STARTTLS handshake (e.g. the
        # client rejected our certificate) ends up here as TLSSetupException.
        self.owner.errors.append(error)
        self.owner._changed()
        return f"500 Error: ({error.__class__.__name__}) {error}"


class SmtpServer:
    """A real SMTP server on 127.0.0.1 (``host``/``port``, a free port).

    ``tls_mode``: "none" (STARTTLS not even advertised), "starttls" (advertised, and
    by default required before MAIL: ``require_starttls``) or "implicit" (TLS from the
    first byte, as on port 465). The certificate comes from ``ca`` (a fresh TestCA if
    not given). ``auth``: username -> password; when given, AUTH PLAIN and LOGIN are
    offered (only over TLS unless ``auth_require_tls=False``) and, with
    ``auth_required`` (the default), required before MAIL; wrong credentials get
    "535 5.7.8 Authentication credentials invalid".
    """

    def __init__(
        self,
        *,
        tls_mode: TlsMode = "none",
        ca: TestCA | None = None,
        require_starttls: bool | None = None,
        auth: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_required: bool = True,
        smtputf8: bool = True,
        data_size_limit: int | None = 2**25,
        port: int = 0,
    ) -> None:
        if tls_mode not in ("none", "starttls", "implicit"):
            raise ValueError(f"tls_mode must be none, starttls or implicit, not {tls_mode!r}")
        if require_starttls and tls_mode != "starttls":
            raise ValueError("require_starttls needs tls_mode='starttls'")
        self.tls_mode: TlsMode = tls_mode
        self.ca: TestCA | None = ca if ca is not None or tls_mode == "none" else TestCA()
        self.require_starttls = tls_mode == "starttls" and require_starttls is not False
        self.auth = dict(auth) if auth is not None else None
        self.auth_require_tls = auth_require_tls
        self.auth_required = auth_required
        self.smtputf8 = smtputf8
        self.data_size_limit = data_size_limit
        self.host = HOST
        self.port = port
        self._tls_context = self.ca.server_context() if self.ca is not None else None

        self.messages: list[ReceivedMessage] = []
        self.sessions: list[SessionRecord] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.starttls_count = 0
        self.errors: list[Exception] = []  # exceptions aiosmtpd handed to handle_exception

        self._replies: dict[str, deque[str]] = {}
        self._delays: dict[str, deque[float]] = {}
        self._refused: dict[str, str] = {}
        self._drops: deque[bool] = deque()

        self._handler = _Handler(self)
        self._server: asyncio.Server | None = None
        self._protocols: list[_Smtp] = []
        self._change: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> SmtpServer:
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        self._change = asyncio.Event()
        self._server = await loop.create_server(
            self._make_protocol,
            self.host,
            self.port,
            ssl=self._tls_context if self.tls_mode == "implicit" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening, abort the open connections and wait for their handlers."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for smtp in self._protocols:
            if smtp.transport is not None:
                cast(asyncio.Transport, smtp.transport).abort()
        tasks = [smtp.handler_task for smtp in self._protocols if smtp.handler_task is not None]
        if tasks:
            # Also retrieves their outcome, so no "Task exception was never retrieved".
            await asyncio.wait(tasks, timeout=5)
        await server.wait_closed()
        self._protocols.clear()

    async def __aenter__(self) -> SmtpServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- scripted faults ---------------------------------------------------------

    def reply_next(self, command: str, reply: str, times: int = 1) -> None:
        """Answer the next ``times`` ``command``s with ``reply`` (e.g. "451 4.3.0 Try
        again later") instead of handling them. A refused DATA stores nothing. A 421
        reply also closes the connection, as real servers do."""
        command = self._scriptable(command)
        if not _REPLY.fullmatch(reply):
            raise ValueError(f"not a single-line SMTP reply: {reply!r}")
        self._replies.setdefault(command, deque()).extend([reply] * times)

    def delay_next(self, command: str, seconds: float, times: int = 1) -> None:
        """Wait ``seconds`` before answering the next ``times`` ``command``s (for
        client timeouts). For DATA the wait is after the content, before the reply."""
        command = self._scriptable(command)
        self._delays.setdefault(command, deque()).extend([seconds] * times)

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 User unknown") -> None:
        """Always refuse RCPT TO ``address`` (case-insensitive) with ``reply``."""
        if not _REPLY.fullmatch(reply):
            raise ValueError(f"not a single-line SMTP reply: {reply!r}")
        self._refused[address.lower()] = reply

    def drop_after_data(self, times: int = 1, keep: bool = False) -> None:
        """For the next ``times`` messages: read the whole content, then close the
        connection without any reply. ``keep`` decides whether the message is stored
        anyway (the server queued it but the reply was lost, so a retry duplicates
        it) or not (the server crashed before queueing)."""
        self._drops.extend([keep] * times)

    def clear_faults(self) -> None:
        self._replies.clear()
        self._delays.clear()
        self._refused.clear()
        self._drops.clear()

    # -- inspection --------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self.sessions)

    async def wait_for_messages(self, count: int, within: float = 10.0) -> list[ReceivedMessage]:
        """Wait (bounded) until ``count`` messages have been stored; return them all."""
        await self.wait_until(lambda: len(self.messages) >= count, within)
        return self.messages

    async def wait_until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Wait (bounded: TimeoutError) until ``condition()`` holds; it is checked
        again whenever the records change (a session starts or closes, a message is
        stored, an AUTH attempt, a STARTTLS, an error)."""
        change = self._change
        assert change is not None, "server not started"
        async with asyncio.timeout(within):
            while not condition():
                change.clear()
                await change.wait()

    # -- internals ---------------------------------------------------------------

    @staticmethod
    def _scriptable(command: str) -> str:
        command = command.upper()
        if command not in SCRIPTABLE:
            raise ValueError(f"{command} cannot be scripted; choose from {sorted(SCRIPTABLE)}")
        return command

    def _make_protocol(self) -> _Smtp:
        starttls = self.tls_mode == "starttls"
        smtp = _Smtp(
            self,
            self._handler,
            hostname=SERVER_NAME,
            tls_context=self._tls_context if starttls else None,
            require_starttls=self.require_starttls,
            # aiosmtpd only counts a STARTTLS layer as TLS, so with implicit TLS it
            # would refuse AUTH; there every byte is encrypted, so relax it there.
            auth_require_tls=self.auth_require_tls and self.tls_mode != "implicit",
            authenticator=self._authenticate,
            enable_SMTPUTF8=self.smtputf8,
            data_size_limit=self.data_size_limit,
            loop=asyncio.get_running_loop(),
        )
        self._protocols.append(smtp)
        return smtp

    def _session_started(self, smtp: _Smtp, transport: asyncio.BaseTransport) -> SessionRecord:
        record = SessionRecord(
            id=len(self.sessions) + 1,
            peer=transport.get_extra_info("peername"),
            implicit_tls=transport.get_extra_info("sslcontext") is not None,
        )
        self.sessions.append(record)
        self._changed()
        return record

    def _authenticate(
        self,
        smtp: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        username = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = self.auth is not None and self.auth.get(username) == password
        record = _record(smtp)
        self.auth_attempts.append(AuthAttempt(record.id, mechanism, username, ok))
        self._changed()
        if not ok:
            return AuthResult(success=False, handled=False)  # 535 5.7.8 from aiosmtpd
        record.auth_user = username
        return AuthResult(success=True, auth_data=username)

    def _store(self, smtp: SMTP, envelope: Envelope, *, dropped: bool) -> None:
        content = envelope.original_content or b""
        record = _record(smtp)
        record.messages += 1
        parsed = BytesParser(policy=email.policy.default).parsebytes(content)
        self.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=content,
                message=parsed,
                over_tls=_over_tls(smtp),
                auth_user=record.auth_user,
                session=record.id,
                dropped=dropped,
            )
        )
        self._changed()

    def _changed(self) -> None:
        if self._change is not None:
            self._change.set()
