"""create_app(): the Starlette app. Its lifespan builds and closes every dependency."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import cast

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from relay import __version__
from relay.app_state import AppState
from relay.channels import ChannelFactory, default_channel_types
from relay.channels.base import ChannelDeps
from relay.crosscheck import CrossChecker
from relay.dispatcher import Dispatcher
from relay.endpoints import routes
from relay.hooks import HookRouter
from relay.providers import default_providers
from relay.providers.base import Provider
from relay.receiver import Receiver
from relay.rulebook import RuleBook
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import Store

log = logging.getLogger("relay")


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
) -> ASGIApp:
    """Build the app. Dependencies not given are built from ``settings`` at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        the_store = store if store is not None else open_store(settings.db)
        await the_store.open()
        # Delivery deadlines are per attempt (each channel's timeout); the session is shared
        # by every outbound call, Slack's client included.
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=settings.concurrency * 2))
        # Provider status look-ups (verify: fetch) are low volume: httpx is enough there.
        lookups = httpx.AsyncClient(headers={"user-agent": f"relay/{__version__}"})
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        try:
            rulebook = RuleBook(
                settings.rules,
                providers if providers is not None else default_providers(),
                channel_types if channel_types is not None else default_channel_types(),
                ChannelDeps(http=http, clock=clock, state=the_store),
                env=env,
            )
            dispatcher = None
            if settings.dispatch:
                dispatcher = Dispatcher(
                    the_store,
                    lambda: rulebook.routing,
                    clock=clock,
                    concurrency=settings.concurrency,
                    lease_seconds=settings.lease_seconds,
                )
            receiver = Receiver(
                rulebook,
                the_store,
                clock=clock,
                max_depth=settings.max_depth,
                on_stored=dispatcher.wake if dispatcher else None,
                crosscheck=CrossChecker(lookups),
            )
            app.state.relay = AppState(settings, the_store, rulebook, receiver, http, dispatcher)
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, rulebook.reload)
            if dispatcher is not None:
                task = asyncio.create_task(dispatcher.run_forever(stop), name="dispatcher")
            # Everything built so far lives as long as the process: keep it out of the cyclic
            # collector's scans, which otherwise cost a measurable share of every request.
            gc.freeze()
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await http.close()
            await lookups.aclose()
            await the_store.close()

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={Exception: _internal_error},
    )
    return HookRouter(app, lambda: cast(AppState, app.state.relay))
