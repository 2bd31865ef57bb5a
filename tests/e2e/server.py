"""The relay app served by uvicorn on 127.0.0.1, in the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from relay.app import create_app
from relay.providers.base import Provider
from relay.settings import Settings
from relay.store.base import Store


@dataclass
class RelayServer:
    settings: Settings
    store: Store | None = None
    clock: Callable[[], float] | None = None
    env: dict[str, str] = field(default_factory=dict)
    providers: dict[str, Provider] | None = None
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RelayServer:
        kwargs: dict[str, Any] = {"env": self.env}
        if self.store is not None:
            kwargs["store"] = self.store
        if self.clock is not None:
            kwargs["clock"] = self.clock
        if self.providers is not None:
            kwargs["providers"] = self.providers
        app = create_app(self.settings, **kwargs)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = None


def write_rules(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yaml").write_text(text)
    return directory
