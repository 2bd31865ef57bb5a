"""POST /hooks/{source}[/{token}][/callback]: the ingest endpoint, as a plain ASGI app.

Every provider callback comes through here, so it skips the framework's per-request layers
(request objects, route matching, middleware wrappers): measured under load, they cost about
as much as relay's own work. It maps errors to status codes exactly as the README's "Answers
to providers" says, and never lets an exception reach the client as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.errors import (
    BodyTooLargeError,
    RequestError,
    StoreUnavailableError,
    UpstreamUnavailableError,
)
from relay.metrics import UNKNOWN_SOURCE
from relay.providers.base import Ignored
from relay.receiver import Quarantined, Request
from relay.redaction import mask_path
from relay.runtime import Runtime

log = logging.getLogger("relay.hooks")

PREFIX = "/hooks/"
_JSON = (b"content-type", b"application/json")
# The stdlib's encoder, built once, for what orjson refuses: a reason quoting outside text
# may hold a lone surrogate.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class Disconnected(Exception):
    """The client went away before sending its whole body: nothing to answer."""


class HookRouter:
    """Sends ``/hooks/...`` to the ingest endpoint and everything else to ``app``."""

    def __init__(self, app: ASGIApp, state: Callable[[], Runtime]) -> None:
        self.app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await hook(self._state(), scope, receive, send)
        else:
            await self.app(scope, receive, send)


def parse_path(path: str) -> tuple[str, str | None] | None:
    """(source, token) from the path after /hooks/, or None if it is not a hook URL."""
    parts = path[len(PREFIX) :].split("/")
    if parts[-1] == "callback" and len(parts) > 1:
        parts.pop()
    if not 1 <= len(parts) <= 2 or not all(parts):
        return None
    return parts[0], (parts[1] if len(parts) == 2 else None)


# How much of a path or a reason a log line shows.
_SHOWN = 300
# The reason class of each refusal, for the metrics and the log.
_REFUSED = {
    401: "refused_auth",
    400: "refused_payload",
    404: "refused_unknown_source",
    413: "refused_too_large",
}


async def hook(state: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    path: str = scope["path"]
    where = parse_path(path)
    known = where is not None and where[0] in state.rulebook.rules.sources
    source = where[0] if where is not None and known else UNKNOWN_SOURCE
    client = scope.get("client")
    client_ip: str | None = client[0] if client else None
    body = b""
    # One timer bounds both the body's reading and then the answer (one timer a request,
    # not two: this is every callback's path); ``answering`` says which it bounds.
    timer: asyncio.Timeout | None = None
    answering = False

    def done(
        outcome: str,
        status: int,
        level: int = logging.INFO,
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """After the answer: count it, keep a refusal, and log the callback's one line."""
        state.metrics.callback(source, outcome, time.perf_counter() - started)
        if reason is not None:
            state.rejected.note(source, client_ip, path, status, reason, body)
        if log.isEnabledFor(level):
            fields = {"source": source, "outcome": outcome, "status": status}
            if extra is not None:
                fields.update(extra)
            # Cut: a scanner's path (and the reason quoting it) can be kilobytes long.
            if reason is not None:
                fields["reason"] = reason[:_SHOWN]
            fields["client"] = client_ip
            fields["path"] = mask_path(path[: _SHOWN * 2])[:_SHOWN]
            log.log(level, "callback %s", outcome, extra=fields)

    if scope["method"] != "POST":
        await respond(send, 405, {"error": "use POST"}, [(b"allow", b"POST")])
        done("refused_method", 405, reason=f"method {scope['method']} (use POST)")
        return
    if where is None:
        await respond(send, 404, {"error": f"no hook at {path}"})
        done("refused_unknown_source", 404, reason=f"no hook at {mask_path(path)}")
        return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    query = scope.get("query_string", b"")
    try:
        # A body dribbled in for ever would hold its connection and memory: bounded.
        timer = asyncio.timeout(state.settings.body_timeout)
        async with timer:
            body = await read_body(receive, headers.get("content-length"), state.settings.max_body)
            # A bounded answer whatever the store or a status API does: a provider that waits
            # too long counts the callback as failed anyway, and retries it.
            answering = True
            timer.reschedule(asyncio.get_running_loop().time() + state.settings.answer_timeout)
            result = await state.receiver.receive(
                Request(
                    source=where[0],
                    token=where[1],
                    headers=headers,
                    body=body,
                    query=dict(parse_qsl(query.decode("latin-1"))) if query else {},
                    client_ip=client_ip,
                )
            )
    except Disconnected:
        return
    except TimeoutError:
        if timer is None or not timer.expired():
            raise
        if not answering:
            why = f"body not received within {state.settings.body_timeout:g} s"
            await respond(send, 408, {"error": why}, [(b"connection", b"close")])
            done("refused_timeout", 408, reason=why)
            return
        # Possibly stored after all: the provider's retry is then a duplicate, answered 200.
        why = f"not stored within {state.settings.answer_timeout:g} s, retry later"
        await respond(send, 503, {"error": why}, [(b"retry-after", b"5")])
        done("timed_out", 503, logging.ERROR, why)
        return
    except RequestError as exc:
        await respond(send, exc.status, {"error": exc.reason})
        done(_REFUSED.get(exc.status, "refused_payload"), exc.status, reason=exc.reason)
        return
    except UpstreamUnavailableError as exc:
        await respond(send, 503, {"error": str(exc)}, [(b"retry-after", b"5")])
        done("crosscheck_unavailable", 503, logging.WARNING, f"cross-check failed: {exc}")
        return
    except StoreUnavailableError as exc:
        # 503, never 4xx: providers such as APIMart give up at once on a 4xx.
        await respond(
            send, 503, {"error": "store unavailable, retry later"}, [(b"retry-after", b"5")]
        )
        done("store_unavailable", 503, logging.ERROR, f"store unavailable: {exc}")
        return
    except Exception:
        log.exception(
            "unhandled error on %s", mask_path(path), extra={"source": source, "status": 500}
        )
        await respond(send, 500, {"error": "internal error"})
        state.rejected.note(source, client_ip, path, 500, "internal error", body)
        return
    if isinstance(result, Ignored):
        await respond(send, 200, {"ignored": result.reason})
        done("ignored", 200, extra={"ignored": result.reason})
    elif isinstance(result, Quarantined):
        # 200: it is stored, and a 4xx would make the provider give it up for good.
        await respond(send, 200, {"quarantined": result.quarantine_id, "reason": result.reason})
        done("quarantined", 200, extra={"quarantine_id": result.quarantine_id})
    else:
        await respond(
            send,
            200,
            {
                "event_id": result.event_id,
                "duplicate": result.duplicate,
                "deliveries": result.deliveries,
            },
        )
        done(
            "duplicate" if result.duplicate else "accepted",
            200,
            extra={
                "event_id": result.event_id,
                "task_id": result.task_id,
                "task_status": result.status,
                "deliveries": result.deliveries,
                "duplicate": result.duplicate,
            },
        )


async def read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to exceed ``limit`` bytes.

    A declared Content-Length over the limit is refused before reading; a chunked or lying
    body once the bytes read pass the limit.
    """
    declared = content_length.strip() if content_length is not None else ""
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"body of {int(declared)} bytes is over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"body is over the {limit} byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    payload: dict[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    try:
        body = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        body = _ENCODER.encode(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
