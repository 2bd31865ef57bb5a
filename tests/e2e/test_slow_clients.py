"""Hostile clients against a real `relay serve`: oversized and never-ending request heads, idle
connections, dribbled bodies. Each gets its 431 or 408 and its connection closed, and callbacks
from everyone else are acknowledged meanwhile."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cli import GOAPI_SECRET, Serve, base_env, write
from tests.fixtures_util import load

RULES = f"""
sources:
  goapi: {{provider: goapi, secret: {GOAPI_SECRET}}}
"""


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    env = base_env(
        RELAY_DISPATCH="0",
        RELAY_HEADER_TIMEOUT="1",
        RELAY_BODY_TIMEOUT="1",
        RELAY_MAX_HEADER_BYTES="8192",
        RELAY_LOG_FORMAT="json",
    )
    server = await Serve(tmp_path, env, "serve").start()
    yield server
    await server.stop()
    assert "Traceback" not in server.output()


async def answer_to(server: Serve, *chunks: bytes, pause: float = 0.0) -> bytes:
    """Send ``chunks`` on a raw connection (``pause`` seconds apart) and read until the server
    closes it (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
            if reader.at_eof():
                break  # answered and closed: what is left is not read
        async with asyncio.timeout(15):
            return await reader.read()  # to EOF: the server closed the connection
    finally:
        writer.close()


async def acknowledged(server: Serve) -> None:
    body, headers = load("goapi/image_success_flux.json")
    async with httpx.AsyncClient(base_url=server.url) as client:
        answer = await client.post("/hooks/goapi", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


async def test_an_oversized_head_is_431(serve: Serve) -> None:
    head = b"POST /hooks/goapi HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 65536 + b"\r\n\r\n"
    answer = await answer_to(serve, head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"request head over 8192 bytes" in answer
    # Dribbled in, a header at a time, it is refused all the same.
    lines = [b"POST /hooks/goapi HTTP/1.1\r\n"] + [
        b"x-h%d: %s\r\n" % (i, b"b" * 900) for i in range(20)
    ]
    dribbled = await answer_to(serve, *lines)
    assert dribbled.startswith(b"HTTP/1.1 431 "), dribbled[:200]
    await acknowledged(serve)


async def test_a_head_that_never_ends_and_an_idle_connection_are_408(serve: Serve) -> None:
    never = asyncio.create_task(answer_to(serve, b"POST /hooks/goapi HTTP/1.1\r\nhost: x\r\n"))
    idle = asyncio.create_task(answer_to(serve))
    await acknowledged(serve)  # meanwhile, callbacks are taken as ever
    for task in (never, idle):
        answer = await task
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"request head not received within 1 s" in answer


async def test_a_dribbled_body_is_408_and_nothing_is_stored(serve: Serve, tmp_path: Path) -> None:
    body, headers = load("goapi/image_success_flux.json")
    raw = json.dumps(body).encode()
    head = (
        b"POST /hooks/goapi HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-webhook-secret: " + headers["x-webhook-secret"].encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(raw)
    )
    answer = await answer_to(serve, head, raw[:10])  # and then nothing more
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"body not received within 1 s" in answer
    await acknowledged(serve)
    lines = [json.loads(line) for line in serve.output().splitlines() if line.startswith("{")]
    outcomes = [r.get("outcome") for r in lines if r.get("logger") == "relay.hooks"]
    assert outcomes == ["refused_timeout", "accepted"]
