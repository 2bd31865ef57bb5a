"""``relay worker --metrics-port``: the worker's own ``GET /metrics`` and ``GET /healthz``.

A worker has no HTTP server of its own, so this small aiohttp one serves the same scrape as
``relay serve``'s ``/metrics`` (the process's counters, and the queue figures read from the
store) on ``Settings.host`` and the given port. A worker of ``relay serve`` serves its counters
alone (no queue figures: serve reads those) on the Unix socket serve names to it
(relay.metrics_peers).
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from relay.errors import RelayError
from relay.metrics import CONTENT_TYPE
from relay.runtime import Runtime, Service


class MetricsPortError(RelayError):
    """The metrics port could not be bound (in use, or not ours to take)."""


class MetricsServer:
    """A bound metrics server; ``service`` keeps it up until the worker stops."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @classmethod
    async def open(cls, runtime: Runtime, host: str, port: int) -> MetricsServer:
        """Bind ``host``:``port`` and start answering. Raises MetricsPortError (one line)
        if the port cannot be bound."""
        runner = await _runner(runtime, queue=True)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            # asyncio's strerror repeats the address; the errno's own text does not.
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise MetricsPortError(
                f"cannot serve metrics on {host}:{port} (--metrics-port, RELAY_METRICS_PORT): {why}"
            ) from None
        return cls(runner)

    @classmethod
    async def open_unix(cls, runtime: Runtime, path: str) -> MetricsServer:
        """Answer on the Unix socket ``path`` (a worker of ``relay serve``): the process's
        own counters, without the queue figures. Raises MetricsPortError if it cannot."""
        runner = await _runner(runtime, queue=False)
        try:
            await web.UnixSite(runner, path).start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsPortError(f"cannot serve metrics on {path}: {exc}") from None
        return cls(runner)

    @property
    def service(self) -> Service:
        """Runs until the worker stops, then closes the server."""
        return Service("metrics-server", self._run)

    async def _run(self, stop: asyncio.Event) -> None:
        try:
            await stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        await self._runner.cleanup()


async def _runner(runtime: Runtime, *, queue: bool) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        if queue:
            body = await runtime.metrics.scrape(
                runtime.store, runtime.clock(), runtime.rulebook.rules.destinations
            )
        else:
            body = runtime.metrics.render()
        # CONTENT_TYPE carries a charset, which aiohttp takes apart from content_type.
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    # The worker handles its own signals; no access log (a scrape every few seconds).
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    return runner
