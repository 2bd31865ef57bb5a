"""``relay worker``: the dispatcher alone, no HTTP server.

With PostgreSQL, receivers (``relay serve --no-dispatch``) and workers scale apart: any number
of each on one database. Everything a worker needs (due deliveries, leases, Slack message
references, pacing) is in the store, so workers share nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping

import aiohttp

from relay.channels import ChannelFactory, default_channel_types
from relay.channels.base import ChannelDeps
from relay.dispatcher import Dispatcher
from relay.providers import default_providers
from relay.providers.base import Provider
from relay.rulebook import RuleBook
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import Store

log = logging.getLogger("relay.worker")


async def run_worker(
    settings: Settings,
    stop: asyncio.Event,
    *,
    providers: Mapping[str, Provider] | None = None,
    channel_types: Mapping[str, ChannelFactory] | None = None,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Dispatch until ``stop`` is set; in-flight sends finish and are recorded first."""
    the_store = store if store is not None else open_store(settings.db)
    await the_store.open()
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.concurrency * 2)
        ) as http:
            rulebook = RuleBook(
                settings.rules,
                providers if providers is not None else default_providers(),
                channel_types if channel_types is not None else default_channel_types(),
                ChannelDeps(http=http, clock=clock, state=the_store),
            )
            dispatcher = Dispatcher(
                the_store,
                lambda: rulebook.routing,
                clock=clock,
                concurrency=settings.concurrency,
                lease_seconds=settings.lease_seconds,
            )
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, rulebook.reload)
            log.info(
                "worker %s dispatching from %s (%d destinations)",
                dispatcher.worker_id,
                _safe_url(settings.db),
                len(rulebook.rules.destinations),
            )
            try:
                await dispatcher.run_forever(stop)
            finally:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signal.SIGHUP)
            stats = dispatcher.stats
            log.info(
                "worker %s stopped: %d delivered, %d retried, %d dead",
                dispatcher.worker_id,
                stats.delivered,
                stats.retried,
                stats.dead,
            )
    finally:
        await the_store.close()


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"


def main(settings: Settings) -> int:
    """Run a worker until SIGTERM or SIGINT."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(run())
    return 0
