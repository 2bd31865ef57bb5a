"""Limits on the request head for `relay serve`, which faces the internet.

uvicorn's httptools protocol sets none: a head may be any size and may take for ever, and a
connection that never sends a byte is kept open. ``guarded_protocol`` is that protocol with a
size limit on the head (431) and a deadline for it (408), counted from the connection (or, on
a kept-alive connection, from the next request's first byte). A kept-alive connection idle
after its answer is closed after the same deadline (or uvicorn's keep-alive timeout, if
shorter): idle, it holds a connection slot as surely as a head that never comes. The body's
deadline is the hook endpoint's (``relay.hooks``), which reads it. A request beyond
uvicorn's ``limit_concurrency`` (RELAY_MAX_CONNECTIONS) gets its 503 here too, with a
Retry-After, and without uvicorn's warning per request (an attack would flood the log: the
``refused`` callback counts each refusal instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
# Seconds a client over the connection limit is asked to wait.
_RETRY_AFTER = 1
# Seconds a refused connection is kept to discard what the client still sends.
_LINGER = 1.0


def guarded_protocol(
    max_head: int, head_timeout: float, refused: Callable[[int], None] | None = None
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol refusing heads over ``max_head`` bytes (431) or not
    complete within ``head_timeout`` seconds (408), and requests over its concurrency limit
    (503). ``refused`` is called with the status of each refusal. Pass it as
    ``uvicorn.Config(http=...)``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # uvicorn closes a kept-alive connection idle this long after an answer (it types
            # it int; call_later takes a float).
            idle = min(self.timeout_keep_alive, head_timeout)
            self.timeout_keep_alive = idle  # type: ignore[assignment]
            # uvicorn answers 503 once its connections reach ``limit_concurrency``, counting
            # the one asking: so that RELAY_MAX_CONNECTIONS connections are served at once,
            # as documented, not one fewer. (Requests in progress never outnumber
            # connections, so they stay bounded by the same number.)
            if self.limit_concurrency is not None:
                self.limit_concurrency += 1
            self._in_head = True
            self._head_bytes = 0  # of the head so far: URL and headers, as parsed
            self._raw_bytes = 0  # received since the head began
            self._head_timer: asyncio.TimerHandle | None = None
            self._refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._refuse(408, f"request head not received within {head_timeout:g} s")

        def _refuse(self, status: int, message: str) -> None:
            self._refused = True
            self._disarm()
            if refused is not None:
                refused(status)
            body = message.encode()
            retry = b"retry-after: %d\r\n" % _RETRY_AFTER if status == 503 else b""
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\n%sconnection: close\r\n\r\n%s"
                % (status, _REASONS[status], len(body), retry, body)
            )
            # Closing at once with unread bytes from the client makes the kernel answer with
            # a reset, which can destroy our answer before the client reads it: send it and a
            # FIN, discard what still comes, and close shortly after.
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(_LINGER, self.transport.close)
            else:
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            self._raw_bytes += len(data) if self._in_head else 0
            super().data_received(data)
            if self._refused:
                return
            # A head still incomplete after this many bytes is over the limit, however it
            # is dribbled in (the parser reports a header only once it is complete).
            if self._in_head and (self._raw_bytes > max_head or self._head_bytes > max_head):
                self._refuse(431, f"request head over {max_head} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_bytes = 0
            if self._head_timer is None:
                self._arm()  # the next request of a kept-alive connection

        def on_url(self, url: bytes) -> None:
            self._head_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_bytes += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._raw_bytes = 0
            self._disarm()
            if self._head_bytes > max_head:
                # The whole head came in one read: refused here, before the app sees it.
                self._refuse(431, f"request head over {max_head} bytes")
                return
            # uvicorn's own check (the same test, after its +1 above), answered here.
            limit = self.limit_concurrency
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
                self._refuse(503, "too many connections at once: retry later")
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

    return GuardedHttpToolsProtocol
