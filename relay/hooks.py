"""POST /hooks/{source}[/{token}][/callback]: the ingest endpoint, as a plain ASGI app.

Every provider callback comes through here, so it skips the framework's per-request layers
(request objects, route matching, middleware wrappers): measured under load, they cost about
as much as relay's own work. It maps errors to status codes exactly as the README's "Answers
to providers" says, and never lets an exception reach the client as a traceback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

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
from relay.runtime import Runtime

log = logging.getLogger("relay.hooks")

PREFIX = "/hooks/"
_JSON = (b"content-type", b"application/json")
# Built once: json.dumps with any keyword builds a new encoder on every call.
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


# The reason class of each refusal, for the metrics.
_REFUSED = {
    401: "refused_auth",
    400: "refused_payload",
    404: "refused_unknown_source",
    413: "refused_too_large",
}


async def hook(state: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    where = parse_path(scope["path"])
    known = where is not None and where[0] in state.rulebook.rules.sources
    source = where[0] if where is not None and known else UNKNOWN_SOURCE

    def count(outcome: str) -> None:
        state.metrics.callback(source, outcome, time.perf_counter() - started)

    if scope["method"] != "POST":
        await respond(send, 405, {"error": "use POST"}, [(b"allow", b"POST")])
        count("refused_method")
        return
    if where is None:
        await respond(send, 404, {"error": f"no hook at {scope['path']}"})
        count("refused_unknown_source")
        return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    query = scope.get("query_string", b"")
    client = scope.get("client")
    try:
        body = await read_body(receive, headers.get("content-length"), state.settings.max_body)
        result = await state.receiver.receive(
            Request(
                source=where[0],
                token=where[1],
                headers=headers,
                body=body,
                query=dict(parse_qsl(query.decode("latin-1"))) if query else {},
                client_ip=client[0] if client else None,
            )
        )
    except Disconnected:
        return
    except RequestError as exc:
        if exc.status != 404:
            log.info("refused %s: %d %s", scope["path"], exc.status, exc.reason)
        await respond(send, exc.status, {"error": exc.reason})
        count(_REFUSED.get(exc.status, "refused_payload"))
        return
    except UpstreamUnavailableError as exc:
        log.warning("cross-check failed, answered 503: %s", exc)
        await respond(send, 503, {"error": str(exc)}, [(b"retry-after", b"5")])
        count("crosscheck_unavailable")
        return
    except StoreUnavailableError as exc:
        # 503, never 4xx: providers such as APIMart give up at once on a 4xx.
        log.error("store unavailable, answered 503: %s", exc)
        await respond(
            send, 503, {"error": "store unavailable, retry later"}, [(b"retry-after", b"5")]
        )
        count("store_unavailable")
        return
    except Exception:
        log.exception("unhandled error on %s", scope["path"])
        await respond(send, 500, {"error": "internal error"})
        return
    if isinstance(result, Ignored):
        await respond(send, 200, {"ignored": result.reason})
        count("ignored")
    elif isinstance(result, Quarantined):
        # 200: it is stored, and a 4xx would make the provider give it up for good.
        await respond(send, 200, {"quarantined": result.quarantine_id, "reason": result.reason})
        count("quarantined")
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
        count("duplicate" if result.duplicate else "accepted")


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
    body = _ENCODER.encode(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
