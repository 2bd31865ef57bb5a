"""``relay worker``: the dispatcher alone, no HTTP server.

With PostgreSQL, receivers (``relay serve --no-dispatch``) and workers scale apart: any number
of each on one database. Everything a worker needs (due deliveries, leases, Slack message
references, pacing) is in the store, so workers share nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from relay.channels import ChannelFactory
from relay.metrics_peers import SOCKET_VARIABLE
from relay.metrics_server import MetricsPortError, MetricsServer
from relay.providers.base import Provider
from relay.runtime import build_runtime, running_services
from relay.settings import Settings
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
    env: Mapping[str, str] | None = None,
    metrics_socket: str | None = None,
    prune: bool = True,
    notes: bool = True,
) -> None:
    """Dispatch until ``stop`` is set; in-flight sends finish and are recorded first.
    ``metrics_socket``: also serve this process's counters there (for ``relay serve``);
    ``prune=False``: leave retention to another process (the worker's ``relay serve``);
    ``notes=False``: do not log the rules' notes (defaults in use), which that server logs."""
    async with build_runtime(
        settings,
        store=store,
        clock=clock,
        env=env,
        providers=providers,
        channel_types=channel_types,
        dispatch=True,
        prune=prune,
        notes=notes,
    ) as runtime:
        dispatcher, rulebook = runtime.dispatcher, runtime.rulebook
        assert dispatcher is not None  # dispatch=True
        if settings.metrics_port is not None:
            # Bound before dispatching starts: a port in use stops the worker at once.
            server = await MetricsServer.open(runtime, settings.host, settings.metrics_port)
            runtime = replace(runtime, services=(*runtime.services, server.service))
        if metrics_socket is not None:
            server = await MetricsServer.open_unix(runtime, metrics_socket)
            runtime = replace(runtime, services=(*runtime.services, server.service))
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
            async with running_services(runtime, stop):
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


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"


# Set by `relay serve` for its workers: the serving process's pid. A worker whose server is gone
# (killed, never to stop it) stops too, rather than deliver on unwatched.
PARENT_VARIABLE = "RELAY_SERVE_PID"


async def _parent_gone(pid: int, stop: asyncio.Event) -> None:
    # Checked every second (an orphan is adopted by another process: its parent pid changes).
    while os.getppid() == pid:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
            return
        except TimeoutError:
            continue
    log.warning("worker: relay serve (pid %d) is gone: stopping", pid)
    stop.set()


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on every platform (pyproject.toml): asyncio's own loop
        return None
    return uvloop.new_event_loop


def main(settings: Settings) -> int:
    """Run a worker until SIGTERM or SIGINT."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        parent = os.environ.get(PARENT_VARIABLE)
        watch = asyncio.create_task(_parent_gone(int(parent), stop)) if parent else None
        try:
            # A worker of `relay serve` leaves retention, and the rules' notes, to its server:
            # one pruner per relay, and each note in its log once.
            await run_worker(
                settings,
                stop,
                metrics_socket=os.environ.get(SOCKET_VARIABLE) or None,
                prune=not parent,
                notes=not parent,
            )
        finally:
            if watch is not None:
                watch.cancel()

    try:
        # uvloop where it is installed, as uvicorn runs `relay serve` on it: the worker's
        # loop (sockets, timers, the store thread's wake-ups) is most of its CPU (measured).
        with asyncio.Runner(loop_factory=_fast_loop()) as runner:
            runner.run(run())
    except MetricsPortError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    return 0
