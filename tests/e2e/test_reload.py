"""Rules reloads of a real ``relay serve``: a change to a file under rules/ takes effect, a
bad change is refused (every problem logged, counted failed) while the last good rules keep
routing, a fix takes effect again; SIGHUP reloads too; a Kubernetes ConfigMap update (a
symlink swap) is seen.

Files are replaced atomically (written aside, renamed in), as editors and ConfigMaps do, so
the watcher never reads a half-written file and every count below is exact.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.rulebook import rules_hash
from tests.downstream import Downstream
from tests.e2e.cli import GOAPI_SECRET, Serve, base_env, write
from tests.fixtures_util import load

WITHIN = 15.0
DOWN_SECRET = "whsec_" + base64.b64encode(b"reload-downstream-key-01").decode()

SOURCES = """
sources:
  goapi: {provider: goapi, secret: "${GOAPI_SECRET}"}
"""


def rules(*names: str, extra: str = "") -> str:
    """Webhook destinations ``names`` (each to /<name> on the downstream), all routed to."""
    lines = [SOURCES, "destinations:"]
    for name in names:
        lines.append(f"  {name}: {{type: webhook, url: '${{DOWN}}/{name}', secret: {DOWN_SECRET}}}")
    lines += ["routes:", f"  - to: [{', '.join(names)}]", extra]
    return "\n".join(lines) + "\n"


# Two problems at once: both must be logged.
BAD = rules("alpha", "beta", extra="  - to: [gamma]\n").replace(
    "  alpha: {type: webhook,", "  alpha: {type: webhook, colour: red,"
)


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` aside, then rename it over ``path`` (one atomic change)."""
    aside = path.parent.parent / f".{path.name}.{uuid.uuid4().hex}"
    aside.write_text(text)
    os.replace(aside, path)


async def until(check: Callable[[], Awaitable[bool]], what: str, serve: Serve) -> None:
    """Wait (bounded) until ``check()`` holds."""
    deadline = time.monotonic() + WITHIN
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}:\n{serve.output()}")
        await asyncio.sleep(0.05)


def logged(serve: Serve, text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in serve.output()

    return check


class Client:
    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.http = httpx.AsyncClient(base_url=serve.url, timeout=5)

    async def destinations(self) -> list[str]:
        r = await self.http.get("/readyz")
        assert r.status_code == 200, r.text
        names: list[str] = r.json()["destinations"]
        return names

    async def metrics(self) -> dict[str, Any]:
        """relay_rules_*: reloads by outcome, the hash in force, when it was loaded."""
        r = await self.http.get("/metrics")
        found: dict[str, Any] = {"hash": []}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name == "relay_rules_reloads_total":
                    found[sample.labels["outcome"]] = sample.value
                elif sample.name == "relay_rules_info":
                    found["hash"].append(sample.labels["hash"])
                elif sample.name == "relay_rules_loaded_timestamp_seconds":
                    found["loaded_at"] = sample.value
        return found

    async def post(self) -> None:
        body, headers = load("goapi/image_success_flux.json")
        body["data"]["task_id"] = f"reload-{uuid.uuid4().hex}"
        r = await self.http.post("/hooks/goapi", json=body, headers=headers)
        assert r.status_code == 200, r.text

    async def reloads(self, outcome: str, count: int, what: str) -> None:
        async def reached() -> bool:
            return (await self.metrics()).get(outcome) == count

        await until(reached, what, self.serve)


@pytest.fixture
async def serve(tmp_path: Path, downstream: Downstream) -> AsyncIterator[Serve]:
    write(tmp_path / "rules", {"rules.yaml": rules("alpha")})
    env = base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        DOWN=f"http://127.0.0.1:{downstream.port}",
        RELAY_LOG_LEVEL="info",
        RELAY_LOG_FORMAT="text",
    )
    server = await Serve(tmp_path, env, "serve").start()
    yield server
    await server.stop()


def paths(downstream: Downstream) -> list[str]:
    return sorted(r.path for r in downstream.received)


async def test_file_changes_reload_good_bad_and_fixed(
    tmp_path: Path, serve: Serve, downstream: Downstream
) -> None:
    folder = tmp_path / "rules"
    client = Client(serve)
    first = await client.metrics()
    assert await client.destinations() == ["alpha"]
    assert first["hash"] == [rules_hash(folder)]
    assert first["ok"] == 0 and first["failed"] == 0

    # A destination and its route added: in force without a restart.
    replace_file(folder / "rules.yaml", rules("alpha", "beta"))
    await client.reloads("ok", 1, "the new rules are loaded")
    second = await client.metrics()
    assert await client.destinations() == ["alpha", "beta"]
    assert second["hash"] == [rules_hash(folder)] and second["hash"] != first["hash"]
    assert second["loaded_at"] >= first["loaded_at"]
    await client.post()
    await downstream.wait_for(2, WITHIN)
    assert paths(downstream) == ["/alpha", "/beta"]

    # A bad change: refused, every problem logged, counted; the last good rules still route.
    replace_file(folder / "rules.yaml", BAD)
    await client.reloads("failed", 1, "the bad change is refused")
    log = serve.output()
    assert "rules/rules.yaml: destinations.alpha.colour: unknown key" in log
    assert "rules/rules.yaml: routes[1].to: unknown destination 'gamma'" in log
    after_bad = await client.metrics()
    assert after_bad["ok"] == 1 and after_bad["hash"] == second["hash"]
    assert await client.destinations() == ["alpha", "beta"]
    await client.post()
    await downstream.wait_for(4, WITHIN)
    assert paths(downstream) == ["/alpha", "/alpha", "/beta", "/beta"]

    # Fixed (alpha removed on the way): in force again.
    replace_file(folder / "rules.yaml", rules("beta"))
    await client.reloads("ok", 2, "the fixed rules are loaded")
    assert await client.destinations() == ["beta"]
    assert (await client.metrics())["hash"] == [rules_hash(folder)]
    await client.post()
    await downstream.wait_for(5, WITHIN)
    assert downstream.received[4].path == "/beta"

    # Rewritten byte for byte: seen, and nothing reloaded.
    replace_file(folder / "rules.yaml", rules("beta"))
    await until(logged(serve, "nothing to reload"), "the unchanged rewrite is noticed", serve)
    assert (await client.metrics())["ok"] == 2

    # SIGHUP always reloads (the files unchanged or not), and is counted.
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGHUP)
    await client.reloads("ok", 3, "SIGHUP reloads")
    final = await client.metrics()
    assert final["failed"] == 1 and final["hash"] == [rules_hash(folder)]
    await client.http.aclose()


async def test_an_editor_save_is_one_reload(
    tmp_path: Path, serve: Serve, downstream: Downstream
) -> None:
    # A save the way vim and most editors do it: a hidden swap file written beside the
    # original, renamed over it, plus a backup removed: several events, one reload. Every
    # state in between holds the old or the new bytes, so the count is exact whichever way
    # the events are grouped.
    folder = tmp_path / "rules"
    client = Client(serve)
    swap = folder / ".rules.yaml.swp"
    swap.write_text(rules("alpha", "beta"))
    (folder / "rules.yaml~").write_text(rules("alpha"))
    os.replace(swap, folder / "rules.yaml")
    (folder / "rules.yaml~").unlink()
    await client.reloads("ok", 1, "the save is loaded")
    assert await client.destinations() == ["alpha", "beta"]
    # A further change proves the watcher moved on past that save with exactly one reload.
    replace_file(folder / "rules.yaml", rules("beta"))
    await client.reloads("ok", 2, "the next change is loaded")
    assert (await client.metrics())["failed"] == 0
    await client.http.aclose()


async def test_a_configmap_update_is_seen(tmp_path: Path, downstream: Downstream) -> None:
    # The kubelet's layout: the visible file is a symlink through "..data" into a timestamped
    # folder; an update writes a new folder and renames a new "..data" link over the old one.
    folder = tmp_path / "rules"
    write(folder / "..2024_01_01", {"rules.yaml": rules("alpha")})
    (folder / "..data").symlink_to("..2024_01_01")
    (folder / "rules.yaml").symlink_to("..data/rules.yaml")
    env = base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        DOWN=f"http://127.0.0.1:{downstream.port}",
        RELAY_LOG_LEVEL="info",
        RELAY_LOG_FORMAT="text",
    )
    serve = await Serve(tmp_path, env, "serve").start()
    try:
        client = Client(serve)
        assert await client.destinations() == ["alpha"]
        write(folder / "..2024_01_02", {"rules.yaml": rules("alpha", "beta")})
        (folder / "..data_tmp").symlink_to("..2024_01_02")
        os.replace(folder / "..data_tmp", folder / "..data")
        await client.reloads("ok", 1, "the ConfigMap update is loaded")
        assert await client.destinations() == ["alpha", "beta"]
        assert (await client.metrics())["hash"] == [rules_hash(folder)]
        await client.http.aclose()
    finally:
        await serve.stop()
