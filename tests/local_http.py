"""Starting an aiohttp app on a free port of 127.0.0.1: what every local HTTP stand-in of the
tests (downstreams, provider status APIs) does."""

from __future__ import annotations

from aiohttp import web


async def serve_app(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    """Start ``app`` on 127.0.0.1 (``port`` 0: any free one); its runner (``cleanup()`` stops
    it) and the port it listens on."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    return runner, server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
