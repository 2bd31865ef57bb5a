"""HTTP endpoints. They read the request, call the receiver and map errors to status codes."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.app_state import AppState
from relay.bodies import read_limited
from relay.errors import RequestError, StoreUnavailableError
from relay.providers.base import Ignored
from relay.receiver import Request as Inbound

log = logging.getLogger("relay.endpoints")


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.relay
    return state


def error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def hook(request: Request) -> Response:
    """POST /hooks/{source}[/{token}][/callback]."""
    state = _state(request)
    try:
        body = await _body(request, state.settings.max_body)
        result = await state.receiver.receive(
            Inbound(
                source=request.path_params["source"],
                token=request.path_params.get("token"),
                headers=request.headers,  # case-insensitive already
                body=body,
                # Parsed only when there is one: most callbacks have no query string.
                query=request.query_params if request.scope.get("query_string") else {},
                client_ip=request.client.host if request.client else None,
            )
        )
    except RequestError as exc:
        if exc.status != 404:
            log.info("refused %s: %d %s", request.url.path, exc.status, exc.reason)
        return error(exc.status, exc.reason)
    except StoreUnavailableError as exc:
        # 503, never 4xx: providers such as APIMart give up at once on a 4xx.
        log.error("store unavailable, answered 503: %s", exc)
        return error(503, "store unavailable, retry later", {"retry-after": "5"})
    if isinstance(result, Ignored):
        return JSONResponse({"ignored": result.reason})
    return JSONResponse(
        {
            "event_id": result.event_id,
            "duplicate": result.duplicate,
            "deliveries": result.deliveries,
        }
    )


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) <= limit:
        # The server reads exactly Content-Length bytes, so the limit already holds.
        return await request.body()
    return await read_limited(request.stream(), declared or None, limit)


async def healthz(request: Request) -> Response:
    """The process is up."""
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    """Ready to accept callbacks: rules loaded and the store reachable."""
    state = _state(request)
    try:
        await state.store.ping()
    except StoreUnavailableError as exc:
        return JSONResponse({"ready": False, "reason": str(exc)}, status_code=503)
    rules = state.rulebook.rules
    return JSONResponse(
        {
            "ready": True,
            "sources": sorted(rules.sources),
            "destinations": sorted(rules.destinations),
            "routes": len(rules.routes),
        }
    )


def routes() -> list[Route]:
    hook_paths = [
        "/hooks/{source}",
        "/hooks/{source}/callback",
        "/hooks/{source}/{token}",
        "/hooks/{source}/{token}/callback",
    ]
    return [
        *(Route(path, hook, methods=["POST"]) for path in hook_paths),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
