"""App-level CPU per callback: relay's ASGI app next to the bare Starlette endpoint.

    python benchmarks/app_cost.py [--requests 4000] [--repeat 5] [--only relay|bare]

Calls each ASGI app directly in this process (no sockets, no HTTP parsing), 32 requests in
flight so relay's group commit batches as it does under load, with distinct GoAPI callbacks,
and reports the process CPU time per request (relay's SQLite thread included), the minimum
over the repeats. The HTTP benchmark (ingest.py) drifts with the shared machine's speed; this
number is steadier, so it is the one to watch while optimizing the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bare_app import app as bare_app  # noqa: E402

from relay.app import create_app  # noqa: E402
from relay.settings import Settings  # noqa: E402

FIXTURE = HERE.parent / "tests" / "fixtures" / "providers" / "goapi" / "image_success_flux.json"
RULES = """
sources:
  goapi: {provider: goapi, secret: bench-secret}
destinations:
  down: {type: webhook, url: "http://127.0.0.1:9/unused"}
routes:
  - to: [down]
"""
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
DEFAULT_DB = "sqlite:///{tmp}/relay.db"


def bodies(n: int, tag: str) -> list[bytes]:
    template = json.loads(FIXTURE.read_text())
    out = []
    for i in range(n):
        body = {**template, "timestamp": int(time.time()), "data": {**template["data"]}}
        body["data"]["task_id"] = f"{tag}-{i:07d}"
        out.append(json.dumps(body).encode())
    return out


async def drive(app: App, payloads: list[bytes], concurrency: int = 32) -> list[int]:
    """POST each payload to /hooks/goapi through the ASGI interface; the answers' statuses."""
    gate = asyncio.Semaphore(concurrency)
    statuses: list[int] = []

    async def one(body: bytes) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/hooks/goapi",
            "raw_path": b"/hooks/goapi",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"x-webhook-secret", b"bench-secret"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async with gate:
            await app(scope, receive, send)

    await asyncio.gather(*(one(b) for b in payloads))
    return statuses


async def started(app: App) -> Callable[[], Awaitable[None]]:
    """Run the app's lifespan startup; returns the shutdown."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    reply = await outbox.get()
    if reply["type"] != "lifespan.startup.complete":
        raise SystemExit(f"startup failed: {reply}")

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return stop


async def cost(name: str, app: App, requests: int, repeat: int) -> float:
    best = float("inf")
    for round_ in range(repeat):
        payloads = bodies(requests, f"{name}{round_}")
        before = time.process_time()
        statuses = await drive(app, payloads)
        spent = time.process_time() - before
        if set(statuses) != {200}:
            raise SystemExit(f"{name}: unexpected answers {sorted(set(statuses))}")
        best = min(best, spent / requests * 1e6)
    return best


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--only", choices=("relay", "bare"), help="measure one app (e.g. under a profiler)"
    )
    ap.add_argument(
        "--db",
        default=DEFAULT_DB,
        help="relay's database URL ({tmp} is a fresh directory), e.g. memory:// to see what "
        "the store costs, or sqlite:///{tmp}/relay.db?synchronous=NORMAL",
    )
    args = ap.parse_args()
    logging.basicConfig(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules"
        rules.mkdir()
        (rules / "bench.yaml").write_text(RULES)
        bare = relay = None
        if args.only != "relay":
            bare = await cost("bare", bare_app, args.requests, args.repeat)
        if args.only != "bare":
            relay_app = create_app(
                Settings(rules=rules, db=args.db.format(tmp=tmp), dispatch=False)
            )
            stop = await started(relay_app)
            try:
                relay = await cost("relay", relay_app, args.requests, args.repeat)
            finally:
                await stop()
    print("| app | CPU µs per callback (min of repeats) |")
    print("|---|---|")
    if bare is not None:
        print(f"| bare Starlette endpoint | {bare:.0f} |")
    if relay is not None:
        label = "SQLite, synchronous=FULL" if args.db == DEFAULT_DB else args.db.format(tmp="…")
        print(f"| relay ({label}) | {relay:.0f} |")
    if bare is not None and relay is not None:
        print(f"\nrelay costs {relay / bare:.1f}x the bare endpoint's app-level CPU")


if __name__ == "__main__":
    asyncio.run(main())
