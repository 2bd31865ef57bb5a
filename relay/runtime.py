"""build_runtime(): the one place that wires a relay process together.

``relay serve`` (the app's lifespan), ``relay worker``, ``relay reprocess`` and the dry run
(``relay test``) all take their store, HTTP clients, rules, channels, receiver and dispatcher
from here, so a dependency added once reaches every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import aiohttp
import httpx

from relay import __version__
from relay.breaker import Breakers
from relay.channels import ChannelFactory, default_channel_types
from relay.channels.base import ChannelDeps
from relay.crosscheck import CrossChecker
from relay.dispatcher import Dispatcher
from relay.logs import follow_in_logs
from relay.metrics import Metrics
from relay.providers import default_providers
from relay.providers.base import Provider
from relay.receiver import Receiver
from relay.redaction import Secrets, settings_secrets
from relay.rejected import RejectedLog
from relay.reload import RulesWatcher
from relay.render.names import ProviderInfo, ProviderNames
from relay.retention import Pruner, delivered_retention
from relay.routing.model import DEFAULT_DESTINATION_CONCURRENCY
from relay.rulebook import RuleBook
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import Store
from relay.store.memory import MemoryStore

log = logging.getLogger("relay")


@dataclass(frozen=True)
class Service:
    """A background loop of a long-running process (serve, worker): ``run(stop)`` works until
    ``stop`` is set, then returns."""

    name: str
    run: Callable[[asyncio.Event], Awaitable[None]]


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
    # Refused requests, noted by the hook endpoint (``relay rejected``, GET /admin/rejected).
    rejected: RejectedLog
    # Started by long-running processes only (not by a dry run or a one-shot command).
    services: tuple[Service, ...] = field(default=())


@contextlib.asynccontextmanager
async def running_services(runtime: Runtime, stop: asyncio.Event) -> AsyncIterator[None]:
    """Run every background service of ``runtime`` until ``stop`` is set and the block ends;
    then wait for each to return. A service that crashes is logged, never silently gone."""

    async def guarded(service: Service) -> None:
        try:
            await service.run(stop)
        except Exception:
            log.exception("background service %s stopped with an error", service.name)

    tasks = [asyncio.create_task(guarded(s), name=s.name) for s in runtime.services]
    try:
        yield
    finally:
        stop.set()
        if tasks:
            await asyncio.gather(*tasks)


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
    notes: bool = True,
    metrics: Metrics | None = None,
    prune: bool = True,
) -> AsyncIterator[Runtime]:
    """Open the store and the HTTP clients, load the rules, build the channels, the receiver
    and (with ``dispatch``, by default ``settings.dispatch``) the dispatcher; close everything
    on the way out. Raises ConfigError for broken rules, StoreUnavailableError for a store
    that cannot be opened.

    ``dry_run``: nothing is stored or sent: the store is an empty in-memory one and there is
    no dispatcher. ``notes=False``: the rules' notes (defaults in use) are not logged (a
    check before the real start, which logs them). ``prune=False``: no retention loop (a worker of
    ``relay serve``, whose server prunes). Dependencies not given are built from
    ``settings`` and ``env`` (the process environment by default).
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
        metrics = metrics if metrics is not None else Metrics()
        rulebook = RuleBook(
            settings.rules,
            registry,
            channel_types if channel_types is not None else default_channel_types(),
            ChannelDeps(http=http, clock=clock, state=the_store, names=provider_names(registry)),
            env=env,
            metrics=metrics.rules,
            notes=notes,
        )
        # Every secret of the settings and of the rules in force (followed across reloads):
        # scrubbed from the log and from what the refused-request log keeps.
        secrets = Secrets(settings_secrets(settings), lambda: rulebook.rules)
        stack.callback(follow_in_logs(secrets))
        # After the rules: broken rules are reported without touching (or creating) a database.
        await the_store.open()
        stack.push_async_callback(the_store.close)
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
                shutdown_grace=settings.shutdown_grace,
                # Shared with every process on this store through its channel state.
                breakers=Breakers(the_store, clock=clock, metrics=metrics),
                destination_concurrency=DEFAULT_DESTINATION_CONCURRENCY,
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
        rejected = RejectedLog(
            the_store,
            keep=settings.rejected_keep,
            secrets=secrets,
            clock=clock,
            max_depth=settings.max_depth,
        )
        metrics.watch_rejected(lambda: rejected.dropped)
        # Background loops of long-running processes (see ``running_services``).
        services: list[Service] = []
        if not dry_run:
            services.append(Service("rejected-log", rejected.run))
            services.append(Service("rules-watcher", RulesWatcher(rulebook).run))
        if not dry_run and prune:
            pruner = Pruner(
                the_store,
                lambda: delivered_retention(settings, rulebook.rules),
                clock=clock,
                on_pruned=lambda n: metrics.prune(n.events, n.deliveries, n.attempts),
            )
            services.append(Service("retention", pruner.run))
        yield Runtime(
            settings,
            the_store,
            rulebook,
            receiver,
            dispatcher,
            http,
            clock,
            metrics,
            rejected=rejected,
            services=tuple(services),
        )
