"""build_runtime(): the one place that wires a relay process together.

``relay serve`` (the app's lifespan), ``relay worker``, ``relay reprocess`` and the dry run
(``relay test``) all take their store, HTTP clients, rules, channels, receiver and dispatcher
from here, so a dependency added once reaches every process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import aiohttp
import httpx

from relay import __version__
from relay.channels import ChannelFactory, default_channel_types
from relay.channels.base import ChannelDeps
from relay.crosscheck import CrossChecker
from relay.dispatcher import Dispatcher
from relay.metrics import Metrics
from relay.providers import default_providers
from relay.providers.base import Provider
from relay.receiver import Receiver
from relay.render.names import ProviderInfo, ProviderNames
from relay.rulebook import RuleBook
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import Store
from relay.store.memory import MemoryStore


@dataclass(frozen=True)
class Runtime:
    """Everything one process runs with. ``dispatcher`` is None where this process does not
    deliver (``serve --no-dispatch``, a dry run)."""

    settings: Settings
    store: Store
    rulebook: RuleBook
    receiver: Receiver
    dispatcher: Dispatcher | None
    http: aiohttp.ClientSession
    clock: Callable[[], float]
    metrics: Metrics


def provider_names(providers: Mapping[str, Provider]) -> ProviderNames:
    """What the renderers know about ``providers`` (the registry, by the name events carry):
    each one's declared display name and alert phrasing, copied so render imports no provider."""
    return ProviderNames(
        {
            name: ProviderInfo(
                display_name=provider.display_name,
                alerts=provider.alerts,
                alert_phrases=MappingProxyType(dict(provider.alert_phrases)),
            )
            for name, provider in providers.items()
        }
    )


@contextlib.asynccontextmanager
async def build_runtime(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    env: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
    channel_types: Mapping[str, ChannelFactory] | None = None,
    dispatch: bool | None = None,
    dry_run: bool = False,
) -> AsyncIterator[Runtime]:
    """Open the store and the HTTP clients, load the rules, build the channels, the receiver
    and (with ``dispatch``, by default ``settings.dispatch``) the dispatcher; close everything
    on the way out. Raises ConfigError for broken rules, StoreUnavailableError for a store
    that cannot be opened.

    ``dry_run``: nothing is stored or sent: the store is an empty in-memory one and there is
    no dispatcher. Dependencies not given are built from ``settings`` and ``env`` (the process
    environment by default).
    """
    if dry_run:
        store, dispatch = MemoryStore(), False
    the_store = store if store is not None else open_store(settings.db)
    delivering = settings.dispatch if dispatch is None else dispatch
    async with contextlib.AsyncExitStack() as stack:
        # Delivery deadlines are per attempt (each channel's timeout); the session is shared
        # by every outbound call, Slack's client included.
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=settings.concurrency * 2))
        )
        # Provider status look-ups (verify: fetch) are low volume: httpx is enough there.
        lookups = await stack.enter_async_context(
            httpx.AsyncClient(headers={"user-agent": f"relay/{__version__}"})
        )
        registry = providers if providers is not None else default_providers()
        rulebook = RuleBook(
            settings.rules,
            registry,
            channel_types if channel_types is not None else default_channel_types(),
            ChannelDeps(http=http, clock=clock, state=the_store, names=provider_names(registry)),
            env=env,
        )
        # After the rules: broken rules are reported without touching (or creating) a database.
        await the_store.open()
        stack.push_async_callback(the_store.close)
        metrics = Metrics()
        metrics.watch_store(the_store)
        dispatcher = None
        if delivering:
            dispatcher = Dispatcher(
                the_store,
                lambda: rulebook.routing,
                clock=clock,
                concurrency=settings.concurrency,
                lease_seconds=settings.lease_seconds,
                metrics=metrics,
            )
        receiver = Receiver(
            rulebook,
            the_store,
            clock=clock,
            max_depth=settings.max_depth,
            on_stored=dispatcher.wake if dispatcher else None,
            crosscheck=CrossChecker(lookups),
            metrics=metrics,
        )
        yield Runtime(settings, the_store, rulebook, receiver, dispatcher, http, clock, metrics)
