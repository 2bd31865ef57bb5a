"""The HTTP endpoints besides /hooks/ (see ``relay.hooks``): health, readiness, metrics, and
the admin API (``relay.admin``)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from relay.admin.api import admin_app
from relay.breaker import read_views
from relay.errors import StoreUnavailableError
from relay.metrics import CONTENT_TYPE
from relay.runtime import Runtime


def _state(request: Request) -> Runtime:
    state: Runtime = request.app.state.relay
    return state


async def healthz(request: Request) -> Response:
    """The process is up."""
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    """Ready to accept callbacks: rules loaded and the store reachable."""
    state = _state(request)
    limit = state.settings.answer_timeout
    try:
        # A write, within the time a callback gets: ready means callbacks are stored now.
        async with asyncio.timeout(limit):
            await state.store.ping()
    except StoreUnavailableError as exc:
        return JSONResponse({"ready": False, "reason": str(exc)}, status_code=503)
    except TimeoutError:
        reason = f"store: ping: no answer within {limit:g} s"
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)
    rules = state.rulebook.rules
    # A paused destination is shown, not counted against readiness: callbacks are still
    # stored, and its deliveries wait for it.
    try:
        async with asyncio.timeout(limit):
            breakers = await read_views(state.store, sorted(rules.destinations), state.clock())
        detail = {name: b.as_json() for name, b in breakers.items()}
    except (StoreUnavailableError, TimeoutError):
        detail = {name: {"state": "unknown"} for name in sorted(rules.destinations)}
    return JSONResponse(
        {
            "ready": True,
            "sources": sorted(rules.sources),
            "destinations": sorted(rules.destinations),
            "breakers": detail,
            "routes": len(rules.routes),
            "rules_hash": state.rulebook.hash,
        }
    )


async def metrics(request: Request) -> Response:
    """The process's metrics in the Prometheus text format."""
    rt = _state(request)
    body = await rt.metrics.scrape(rt.store, rt.clock(), rt.rulebook.rules.destinations)
    return Response(body, media_type=CONTENT_TYPE)


def routes() -> list[BaseRoute]:
    """Everything but /hooks/, which ``relay.hooks`` serves before these routes are tried."""
    admin = admin_app()
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # /admin itself too, so it answers like every admin path (no redirect giving the
        # API away while it is off).
        Route("/admin", admin, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Mount("/admin", app=admin),
    ]
