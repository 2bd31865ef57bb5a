"""The relay app called in-process over ASGI, its lifespan run: every request any bytes.

httpx's ASGI transport normalizes what it sends (paths, header names, Content-Length); this
hands the app exactly the scope a server would after parsing, so a fuzzer controls all of it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class InProcessApp:
    """``async with InProcessApp(create_app(...)) as app: await app.request(...)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcessApp:
        async def receive() -> Message:
            return await self._to_app.get()

        async def send(message: Message) -> None:
            await self._from_app.put(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, receive, send))
        await self._lifespan("startup")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._lifespan("shutdown")
        assert self._task is not None
        async with asyncio.timeout(10):
            await self._task

    async def _lifespan(self, phase: str) -> None:
        await self._to_app.put({"type": f"lifespan.{phase}"})
        async with asyncio.timeout(10):
            message = await self._from_app.get()
        assert message["type"] == f"lifespan.{phase}.complete", message

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        chunks: list[bytes] | None = None,
    ) -> Answer:
        """One request; ``path`` as a server hands it on (percent-decoded), the body in
        ``chunks`` (each an ``http.request`` message)."""
        parts = list(chunks or [b""]) or [b""]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": quote(path, safe="/").encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers or [],
            "client": ("127.0.0.1", 50123),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        answered = asyncio.Event()
        sent: list[Message] = []

        async def receive() -> Message:
            if parts:
                body = parts.pop(0)
                return {"type": "http.request", "body": body, "more_body": bool(parts)}
            # The client waits for its answer; it "leaves" only once answered.
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        async with asyncio.timeout(10):
            await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Answer(start["status"], list(start.get("headers", [])), body)
