"""create_app(): the Starlette app. Its lifespan asks the runtime for everything it runs with."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from relay.channels import ChannelFactory
from relay.endpoints import routes
from relay.hooks import HookRouter
from relay.metrics import Metrics
from relay.providers.base import Provider
from relay.runtime import Runtime, build_runtime, running_services
from relay.settings import Settings
from relay.store.base import Store

log = logging.getLogger("relay")


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404 and 405 (unknown paths, wrong methods), as JSON like every answer.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error"}, status_code=500)


def create_app(
    settings: Settings,
    *,
    providers: Mapping[str, Provider] | None = None,
    channel_types: Mapping[str, ChannelFactory] | None = None,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    env: Mapping[str, str] | None = None,
    metrics: Metrics | None = None,
) -> ASGIApp:
    """Build the app. Dependencies not given are built from ``settings`` at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        async with build_runtime(
            settings,
            store=store,
            clock=clock,
            env=env,
            providers=providers,
            channel_types=channel_types,
            metrics=metrics,
        ) as runtime:
            app.state.relay = runtime
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, runtime.rulebook.reload)
            try:
                if runtime.dispatcher is not None:
                    task = asyncio.create_task(
                        runtime.dispatcher.run_forever(stop), name="dispatcher"
                    )
                async with running_services(runtime, stop):
                    # Everything built so far lives as long as the process: keep it out of
                    # the cyclic collector's scans, which otherwise cost a measurable share
                    # of every request.
                    gc.freeze()
                    yield
            finally:
                stop.set()
                if task is not None:
                    await task
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signal.SIGHUP)

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return HookRouter(app, lambda: cast(Runtime, app.state.relay))
