"""The HTTP endpoints besides /hooks/ (see ``relay.hooks``): health, readiness, metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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


async def metrics(request: Request) -> Response:
    """The process's metrics in the Prometheus text format."""
    runtime = _state(request)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)


def routes() -> list[Route]:
    """Everything but /hooks/, which ``relay.hooks`` serves before these routes are tried."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
