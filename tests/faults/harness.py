"""The fault suite's harness: real ``relay serve`` / ``relay worker`` processes on 127.0.0.1,
a ledger of every callback relay acknowledged, and the check every case ends with: each
acknowledged callback's deliveries end delivered, or dead with a reason, read back through the
admin API of a running ``relay serve``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.cli import GOAPI_SECRET, Serve, Worker, base_env, write

ADMIN_TOKEN = "fault-suite-admin-token-0123456789"
SETTLED = frozenset({"delivered", "dead"})
__all__ = ["ADMIN_TOKEN", "GOAPI_SECRET", "Ledger", "Relay", "Serve", "Worker", "settled"]


@dataclass
class Relay:
    """One relay installation in ``home``: its rules, its SQLite file (or ``db``), the
    environment its processes get. ``serve()`` / ``worker()`` start real processes."""

    home: Path
    rules: str
    env: dict[str, str] = field(default_factory=dict)
    db: str = ""
    processes: list[Serve] = field(default_factory=list)

    def __post_init__(self) -> None:
        write(self.home / "rules", {"rules.yaml": self.rules})
        self.db = self.db or f"sqlite:///{self.home / 'relay.db'}"

    def environment(self, **extra: str) -> dict[str, str]:
        defaults = {
            "RELAY_DB": self.db,
            "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "RELAY_LOG_FORMAT": "json",
        }
        return base_env(**{**defaults, **self.env, **extra})

    async def serve(self, *args: str, name: str = "serve", **extra: str) -> Serve:
        server = await Serve(self.home, self.environment(**extra), name, *args).start()
        self.processes.append(server)
        return server

    async def worker(self, *args: str, name: str = "worker", **extra: str) -> Worker:
        worker = await Worker(self.home, self.environment(**extra), name, *args).start()
        self.processes.append(worker)
        return worker

    async def stop(self) -> None:
        for process in reversed(self.processes):
            await process.stop()
        self.processes.clear()

    def logs(self) -> str:
        """What every process started in ``home`` wrote, stopped ones included."""
        return "".join(log.read_text() for log in sorted(self.home.glob("*.log")))


@dataclass
class Ledger:
    """Every callback relay acknowledged (a 2xx with an ``event_id``), by event id."""

    acked: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def post(
        self,
        client: httpx.AsyncClient,
        url: str,
        body: bytes | Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> httpx.Response:
        """POST a callback; a 2xx answer must name the stored event, which is then owed."""
        if isinstance(body, bytes):
            answer = await client.post(url, content=body, headers=dict(headers))
        else:
            answer = await client.post(url, json=dict(body), headers=dict(headers))
        assert answer.status_code < 500 or answer.status_code == 503, (
            f"{answer.status_code} for {url}: {answer.text}"
        )
        if 200 <= answer.status_code < 300:
            reply = answer.json()
            assert reply.get("event_id"), f"acknowledged without an event id: {reply}"
            self.acked[reply["event_id"]] = reply
        return answer


async def settled(
    server: Serve, ledger: Ledger, *, within: float = 30.0, routed: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Wait (bounded) until every delivery of every acknowledged event is delivered or dead,
    and return them by event id. A dead delivery must say why; ``routed``: every event must
    have at least one delivery (the rules route everything)."""
    deadline = time.monotonic() + within
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    open_ = set(ledger.acked)
    found: dict[str, list[dict[str, Any]]] = {}
    last: dict[str, list[str]] = {}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=5) as client:
        while open_:
            for event_id in sorted(open_):
                answer = await client.get(f"/admin/events/{event_id}")
                assert answer.status_code == 200, f"acknowledged {event_id}: {answer.text}"
                deliveries: list[dict[str, Any]] = answer.json()["deliveries"]
                if routed:
                    assert deliveries, f"acknowledged {event_id} has no delivery"
                last[event_id] = [d["state"] for d in deliveries]
                if all(d["state"] in SETTLED for d in deliveries):
                    found[event_id] = deliveries
                    open_.discard(event_id)
            if not open_:
                break
            if time.monotonic() > deadline:
                states = {e: last.get(e) for e in sorted(open_)}
                raise AssertionError(f"not settled within {within} s: {states}")
            await asyncio.sleep(0.1)
    for event_id, deliveries in found.items():
        for d in deliveries:
            if d["state"] == "dead":
                assert d["last_error"].strip(), f"{event_id}: {d['id']} dead without a reason"
    return found


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
