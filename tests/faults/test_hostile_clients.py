"""Hostile clients against a real ``relay serve`` that delivers to a real downstream: heads and
bodies that are too big or never end, idle connections, a flood of header bytes, more
connections than RELAY_MAX_CONNECTIONS. Each gets
its refusal, while the normal callbacks sent all along are acknowledged within a second, and
every acknowledged callback ends delivered (``settled``).

tests/e2e/test_slow_clients.py proves the refusals one at a time, without traffic; this is the
whole path under attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.downstream import Downstream
from tests.e2e.test_slow_clients import answer_to
from tests.faults.harness import ADMIN_TOKEN, GOAPI_SECRET, Ledger, Relay, Serve, settled
from tests.fixtures_util import load

RULES = f"""
sources:
  goapi: {{provider: goapi, secret: {GOAPI_SECRET}}}
destinations:
  downstream:
    type: webhook
    url: ${{DOWN_URL}}
    retry: {{schedule: [50ms], jitter: 0}}
routes:
  - to: [downstream]
"""
# Tight limits, so each refusal comes within the test's few seconds.
LIMITS = {
    "RELAY_HEADER_TIMEOUT": "1",
    "RELAY_BODY_TIMEOUT": "1",
    "RELAY_MAX_HEADER_BYTES": "8192",
    "RELAY_MAX_BODY": "65536",
}
# The promise: a provider's callback is answered within a second while the attack
# runs. A normal answer takes milliseconds; a second is still far below the 5 s after which
# providers (Novita) give up, and an event loop kept busy by an attack would miss it.
ANSWER_WITHIN = 1.0


def callback(task_id: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A valid GoAPI callback of its own task (so never a duplicate), and its headers."""
    body, headers = load("goapi/image_success_flux.json")
    body["data"]["task_id"] = task_id or f"fault-{uuid.uuid4().hex}"
    return body, headers


def head(extra: bytes = b"", *, length: int | None = None) -> bytes:
    """The head of a signed GoAPI callback, with ``extra`` header lines."""
    lines = [
        b"POST /hooks/goapi HTTP/1.1",
        b"host: 127.0.0.1",
        b"content-type: application/json",
        b"x-webhook-secret: " + GOAPI_SECRET.encode(),
    ]
    if length is not None:
        lines.append(b"content-length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n" + extra + (b"\r\n" if length is not None else b"")


@dataclass
class Traffic:
    """Normal callbacks, one after the other with ``pause`` between, each on a new connection
    as providers send them; ``times`` holds each one's answer time (all were 200)."""

    server: Serve
    ledger: Ledger
    pause: float = 0.05
    times: list[float] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        # No kept-alive connections: each callback has to be accepted anew, beside the attack.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=10, limits=limits) as c:
            while not stop.is_set():
                body, headers = callback()
                started = time.perf_counter()
                answer = await self.ledger.post(c, "/hooks/goapi", body, headers)
                self.times.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.pause)

    def check(self, at_least: int) -> None:
        assert len(self.times) >= at_least, f"only {len(self.times)} callbacks sent"
        slowest = max(self.times)
        assert slowest < ANSWER_WITHIN, f"a callback took {slowest:.3f} s: {self.times}"


@contextlib.asynccontextmanager
async def traffic(server: Serve, ledger: Ledger) -> AsyncIterator[Traffic]:
    """Normal callbacks for as long as the block runs (its failures are raised after)."""
    running = Traffic(server, ledger)
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    try:
        yield running
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


@pytest.fixture
async def downstream_url(downstream: Downstream) -> str:
    return downstream.url


async def started(make_relay: Callable[..., Relay], url: str, **env: str) -> Serve:
    relay = make_relay(RULES, DOWN_URL=url)
    return await relay.serve(**env)


async def timed(answer: Any) -> tuple[bytes, float]:
    began = time.monotonic()
    got: bytes = await answer
    return got, time.monotonic() - began


async def dribble(
    server: Serve, data: bytes, pause: float, *, first: bytes = b""
) -> tuple[bytes, float]:
    """Send ``first`` at once, then ``data`` a byte at a time, ``pause`` s apart, until the
    server answers; what it answered (read to its close, bounded) and after how long."""
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(first)
        reading = asyncio.create_task(reader.read())  # to EOF: the server closed it
        for byte in data:
            if reading.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.wait([reading], timeout=pause)
        async with asyncio.timeout(15):
            answer = await reading
        return answer, time.monotonic() - began
    finally:
        writer.close()


async def idle_after_an_answer(server: Serve) -> tuple[bytes, float]:
    """One complete request on a kept-alive connection, then silence: what came back, and
    how long after the answer the server closed the connection (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answered = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in answered.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answered += await reader.readexactly(length)
        began = time.monotonic()
        async with asyncio.timeout(5):
            rest = await reader.read()  # to EOF
        return answered + rest, time.monotonic() - began
    finally:
        writer.close()


async def stored_events(server: Serve) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=5) as client:
        answer = await client.get("/admin/events", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


async def test_bad_heads_and_bodies_are_refused_while_callbacks_are_acknowledged(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    """Under traffic: a head over RELAY_MAX_HEADER_BYTES (whole or dribbled) is a 431; a head
    dribbled a byte at a time that never ends, and a connection that sends nothing, a 408
    once RELAY_HEADER_TIMEOUT has passed, and closed; a kept-alive connection left idle after
    its answer is closed as soon; a body dribbled in is a 408 after RELAY_BODY_TIMEOUT; a body
    over RELAY_MAX_BODY (declared, or chunked and lying) a 413. None of them is stored, every
    normal callback is answered 200 within a second, and each ends delivered."""
    server = await started(make_relay, downstream.url, **LIMITS)
    ledger = Ledger()
    refused_task = f"refused-{uuid.uuid4().hex}"
    body = callback(refused_task)[0]
    raw = httpx.Request("POST", "/", json=body).content
    async with traffic(server, ledger) as normal:
        big_head = head(b"x-big: " + b"a" * 65536 + b"\r\n\r\n")
        lines = [head()] + [b"x-h%d: %s\r\n" % (i, b"b" * 900) for i in range(20)]
        never = b"POST /hooks/goapi HTTP/1.1\r\nhost: 127.0.0.1\r\n" + b"x" * 1000
        over = b"a" * 70_000
        chunked = head(b"transfer-encoding: chunked\r\n\r\n") + b"".join(
            b"%x\r\n%s\r\n" % (len(over[i : i + 8192]), over[i : i + 8192])
            for i in range(0, len(over), 8192)
        )
        results = await asyncio.gather(
            timed(answer_to(server, big_head)),
            timed(answer_to(server, *lines, pause=0.01)),
            dribble(server, never, pause=0.02),
            timed(answer_to(server)),
            idle_after_an_answer(server),
            dribble(server, raw, pause=0.3, first=head(length=len(raw))),
            timed(answer_to(server, head(length=len(raw)) + raw[:10])),
            timed(answer_to(server, head(length=len(over)) + over)),
            timed(answer_to(server, chunked + b"0\r\n\r\n")),
        )
    (
        (oversized, _),
        (dribbled_big, _),
        (never_ends, never_after),
        (silent, silent_after),
        (idle, idle_after),
        (slow_body, slow_body_after),
        (stalled_body, stalled_after),
        (declared, _),
        (lying, _),
    ) = results
    for answer in (oversized, dribbled_big):
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert answer.endswith(b"request head over 8192 bytes"), answer[-200:]
    for answer, after in ((never_ends, never_after), (silent, silent_after)):
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert answer.endswith(b"request head not received within 1 s"), answer[-200:]
        # Refused when the deadline ran out, not before; closed within the linger after.
        assert 0.9 < after < 4, after
    assert idle.startswith(b"HTTP/1.1 200 ") and idle.endswith(b'{"ok":true}'), idle[-200:]
    # Timed from the answer's arrival, a little after the server's clock started; uvicorn's
    # own keep-alive timeout (30 s) would fail the upper bound.
    assert 0.5 < idle_after < 3, f"an idle kept-alive connection was kept {idle_after:.1f} s"
    for answer, after in ((slow_body, slow_body_after), (stalled_body, stalled_after)):
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'{"error":"body not received within 1 s"}' in answer, answer[-200:]
        assert 0.9 < after < 4, after
    assert declared.startswith(b"HTTP/1.1 413 "), declared[:200]
    assert b"body of 70000 bytes is over the 65536 byte limit" in declared, declared[-200:]
    assert lying.startswith(b"HTTP/1.1 413 "), lying[:200]
    assert b"body is over the 65536 byte limit" in lying, lying[-200:]
    # The normal callbacks ran throughout (the 408s took a second or more).
    normal.check(at_least=10)
    found = await settled(server, ledger)
    assert all(d["state"] == "delivered" for ds in found.values() for d in ds), found
    events = await stored_events(server)
    assert sorted(e["id"] for e in events) == sorted(ledger.acked)
    assert refused_task not in {e["task_id"] for e in events}


def rss(pid: int) -> int:
    """The process's resident set size in bytes (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# 20 floods at the default limits (16 KB heads, 10 s) hold 20 x 16 KB of head at once: the
# process must not grow by more than this. Generous: the normal callbacks and the store's
# cache grow it too by a few MB, and the allocator keeps what it once took; without the
# limits the issue saw 66 MB become 250 MB, many times the bound.
MEMORY_BOUND = 30 * 1024 * 1024
FLOODS = 20


async def flood(server: Serve, stop: asyncio.Event, refused: list[bytes]) -> None:
    """Header bytes on one unauthenticated connection as fast as the server takes them; when
    the server answers and closes, again on a new connection, until ``stop``."""
    lines = (b"x-flood: " + b"f" * 1000 + b"\r\n") * 8
    while not stop.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"POST /hooks/goapi HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            reading = asyncio.create_task(reader.read())
            while not reading.done() and not stop.is_set():
                try:
                    writer.write(lines)
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0)  # the answer, if any, is read before more is sent
            if reading.done() or not stop.is_set():
                async with asyncio.timeout(15):
                    with contextlib.suppress(ConnectionError):
                        refused.append(await reading)
            reading.cancel()
        finally:
            writer.close()


async def test_twenty_header_floods_leave_memory_and_callbacks_alone(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    """Twenty unauthenticated connections that keep sending header bytes, at the default
    limits: each is cut off with a 431 at RELAY_MAX_HEADER_BYTES and starts again, the serve
    process's resident memory grows by less than 30 MB while they run, and the normal
    callbacks meanwhile are each answered 200 within a second and delivered."""
    server = await started(make_relay, downstream.url)
    assert server.proc is not None
    ledger = Ledger()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for _ in range(5):  # warmed up: the first callbacks' imports and caches are not growth
            body, headers = callback()
            assert (await ledger.post(client, "/hooks/goapi", body, headers)).status_code == 200
    before = rss(server.proc.pid)
    peak = before
    refused: list[bytes] = []
    stop = asyncio.Event()
    floods = [asyncio.create_task(flood(server, stop, refused)) for _ in range(FLOODS)]
    try:
        async with traffic(server, ledger) as normal:
            until = time.monotonic() + 3
            while time.monotonic() < until:
                peak = max(peak, rss(server.proc.pid))
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*floods)
    grown = peak - before
    assert grown < MEMORY_BOUND, f"serve grew {grown / 2**20:.1f} MB under the floods"
    # The floods did run into the limit, many times each.
    assert len(refused) >= 2 * FLOODS, len(refused)
    assert all(r.startswith(b"HTTP/1.1 431 ") for r in refused), {r[:40] for r in refused}
    normal.check(at_least=10)
    await settled(server, ledger)


async def test_beyond_max_connections_new_ones_are_503_until_a_slot_frees(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    """RELAY_MAX_CONNECTIONS connections are served at once: with one fewer held by
    unfinished heads a callback is acknowledged; with all of them held a new callback is
    answered 503 (which providers retry), not left waiting. Once the held connections are
    refused (408, RELAY_HEADER_TIMEOUT) the retry is acknowledged, and both end delivered."""
    limit = 4
    server = await started(
        make_relay, downstream.url, RELAY_MAX_CONNECTIONS=str(limit), RELAY_HEADER_TIMEOUT="2"
    )
    ledger = Ledger()
    partial = b"POST /hooks/goapi HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    holders = [asyncio.create_task(answer_to(server, partial)) for _ in range(limit - 1)]
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        await asyncio.sleep(0.3)  # the held connections are accepted
        body, headers = callback()
        within = await ledger.post(client, "/hooks/goapi", body, headers)
        assert within.status_code == 200, f"the {limit}th connection: {within.text}"
        holders.append(asyncio.create_task(answer_to(server, partial)))
        await asyncio.sleep(0.3)
        body, headers = callback()
        refused = await ledger.post(client, "/hooks/goapi", body, headers)
        assert refused.status_code == 503, f"the {limit + 1}th connection: {refused.text}"
        assert refused.headers["retry-after"] == "1"
        assert refused.text == "too many connections at once: retry later"
        assert len(ledger.acked) == 1
        async with asyncio.timeout(10):
            held = await asyncio.gather(*holders)
        assert all(h.startswith(b"HTTP/1.1 408 ") for h in held), held
        # The provider's retry of the refused callback, now that the slots are free.
        answer = await ledger.post(client, "/hooks/goapi", body, headers)
        assert answer.status_code == 200, answer.text
        metrics = (await client.get("/metrics")).text
    found = await settled(server, ledger)
    assert len(found) == 2
    # Counted, not logged once per request (an attack would flood the log).
    assert "Exceeded concurrency limit" not in server.output()
    assert 'relay_http_refused_total{status="503"} 1.0' in metrics
    assert f'relay_http_refused_total{{status="408"}} {float(limit)}' in metrics
