"""A real HTTP receiver on 127.0.0.1 standing in for a downstream service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.local_http import serve_app


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Downstream:
    """Records every request; ``responses`` (a queue of (status, headers)) answers them,
    then 200 once it is empty. ``delay`` holds each answer that many seconds; ``hold``, if
    set, is awaited before each answer (a test keeps a request open until it says so)."""

    received: list[Received] = field(default_factory=list)
    responses: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    on_request: Callable[[Received], None] | None = None
    hold: Callable[[Received], Awaitable[None]] | None = None
    port: int = 0
    _runner: web.AppRunner | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        item = Received(request.path, dict(request.headers), await request.read())
        self.received.append(item)
        self.arrived.set()
        if self.on_request:
            self.on_request(item)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold:
            await self.hold(item)
        status, headers = self.responses.pop(0) if self.responses else (200, {})
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "nope")

    async def start(self, port: int = 0) -> Downstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve_app(app, port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        """Wait until ``count`` requests have arrived (bounded)."""
        async with asyncio.timeout(within):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
