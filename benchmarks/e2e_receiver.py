"""The end-to-end benchmark's downstream: a webhook receiver that answers 200 at once and counts
arrivals per target, run as its own process so that it never shares an event loop (or a core's
time slice) with the load generator.

    python benchmarks/e2e_receiver.py PORT

- ``POST /hook/{target}``: a delivery. An Alertmanager webhook message (it has ``alerts``)
  counts the ``task_id`` label of each of its alerts, anything else (relay's Standard Webhooks
  envelope) counts ``data.task_id``. Only task ids starting with the target's prefix count;
  the others (warm-up, a previous measurement's stragglers) are counted as ``ignored``.
- ``POST /reset/{target}?prefix=P``: forget the target's arrivals and count ids starting with P.
- ``GET /stats/{target}``: ``count`` (distinct task ids), ``requests``, ``duplicates``,
  ``ignored``, ``first`` and ``last`` (``time.monotonic()`` of the first and last counted
  arrival: CLOCK_MONOTONIC is one clock for every process of the machine, so the benchmark
  compares them with its own send times).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Target:
    prefix: str = "\x00"  # counts nothing until a reset names the prefix
    ids: set[str] = field(default_factory=set)
    requests: int = 0
    duplicates: int = 0
    ignored: int = 0
    first: float = 0.0
    last: float = 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "count": len(self.ids),
            "requests": self.requests,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "first": self.first,
            "last": self.last,
        }


targets: dict[str, Target] = {}


def task_ids(body: Any) -> list[str]:
    if isinstance(body, dict) and isinstance(body.get("alerts"), list):
        return [str(alert["labels"]["task_id"]) for alert in body["alerts"]]
    return [str(body["data"]["task_id"])]


async def hook(request: web.Request) -> web.Response:
    now = time.monotonic()
    target = targets.setdefault(request.match_info["target"], Target())
    target.requests += 1
    for task_id in task_ids(orjson.loads(await request.read())):
        if not task_id.startswith(target.prefix):
            target.ignored += 1
        elif task_id in target.ids:
            target.duplicates += 1
        else:
            if not target.ids:
                target.first = now
            target.ids.add(task_id)
            target.last = now
    return web.Response(text="ok")


async def reset(request: web.Request) -> web.Response:
    targets[request.match_info["target"]] = Target(prefix=request.query["prefix"])
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    target = targets.get(request.match_info["target"], Target())
    return web.json_response(target.stats())


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    with contextlib.suppress(ImportError):
        import uvloop  # the cheapest loop: the receiver should cost the servers little CPU

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/hook/{target}", hook)
    app.router.add_post("/reset/{target}", reset)
    app.router.add_get("/stats/{target}", stats)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
