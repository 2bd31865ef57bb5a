"""The CLI's filtered operations (`relay replay --destination X --since 2h [--dry-run]`,
`relay events --status …`, `relay deliveries --destination …`) on the database of a running
relay: the same operations as the admin API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.cli import arelay, base_env
from tests.e2e.server import RelayServer, write_rules
from tests.e2e.test_admin import RULES
from tests.fixtures_util import load


@pytest.fixture
async def relay(tmp_path: Path, downstream: Downstream) -> AsyncIterator[RelayServer]:
    settings = Settings(
        rules=write_rules(tmp_path / "rules", RULES), db=f"sqlite:///{tmp_path / 'relay.db'}"
    )
    server = await RelayServer(settings, env={"DOWN_URL": downstream.url}).start()
    yield server
    await server.stop()


async def cli(server: RelayServer, *args: str) -> tuple[int, str, str]:
    env = base_env(RELAY_DB=server.settings.db)
    done = await arelay(server.settings.rules.parent, *args, env=env)
    return done.code, done.out, done.err


async def deliveries(server: RelayServer, *args: str) -> list[dict[str, Any]]:
    code, out, err = await cli(server, "deliveries", "--json", *args)
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


async def wait_deliveries(server: RelayServer, count: int, *args: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(20):
        while True:
            rows = await deliveries(server, *args)
            if len(rows) == count:
                return rows
            await asyncio.sleep(0.1)


async def post(server: RelayServer, name: str, **change: Any) -> None:
    body, _ = load(name)
    _, headers = load("goapi/image_success_flux.json")
    body["data"].update(change)
    async with httpx.AsyncClient(base_url=server.url) as client:
        answer = await client.post("/hooks/goapi", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


async def test_replay_by_destination_and_age(relay: RelayServer, downstream: Downstream) -> None:
    downstream.responses = [(400, {})] * 4
    for n in range(3):
        await post(relay, "goapi/image_success_flux.json", task_id=f"cli-{n}")
    await post(relay, "goapi/failed_midjourney.json")
    await wait_deliveries(relay, 4, "--state", "dead")

    to_other = await deliveries(relay, "--destination", "other")
    assert [(d["destination"], d["state"]) for d in to_other] == [("other", "dead")]
    assert await deliveries(relay, "--destination", "down", "--until", "1h") == []

    code, out, err = await cli(
        relay, "replay", "--destination", "down", "--since", "2h", "--dry-run"
    )
    assert code == 0, err
    assert out.startswith("would replay 3 dead deliveries to down created from ")
    assert len(out.strip().splitlines()) == 4  # the summary, then each id
    assert len(await deliveries(relay, "--state", "dead")) == 4  # a dry run changes nothing

    code, out, err = await cli(relay, "replay", "--destination", "down", "--since", "2h")
    assert code == 0, err
    assert out.startswith("replayed 3 of 3 dead deliveries to down")
    await wait_deliveries(relay, 3, "--state", "delivered", "--destination", "down")
    left = await deliveries(relay, "--state", "dead")
    assert [d["destination"] for d in left] == ["other"]

    code, out, _ = await cli(relay, "replay", "--destination", "down", "--since", "2h")
    assert code == 0
    assert out.startswith("no dead deliveries to down created from ")

    # Sent again on purpose: delivered ones, by filter.
    code, out, err = await cli(
        relay, "replay", "--state", "delivered", "--destination", "down", "--dry-run"
    )
    assert code == 0 and out.startswith("would replay 3 delivered deliveries to down"), err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("replay",), "name delivery ids, or filter"),
        (("replay", "--since", "soon"), "--since: bad time 'soon'"),
        (("replay", "dlv_1", "--destination", "down"), "not both"),
        (("deliveries", "--until", "tomorrow"), "--until: bad time"),
        (("events", "--since", "x"), "--since: bad time"),
    ],
)
async def test_bad_filters_are_usage_errors(
    relay: RelayServer, args: tuple[str, ...], says: str
) -> None:
    code, _, err = await cli(relay, *args)
    assert code == 2
    assert says in err
    assert "Traceback" not in err


async def test_events_by_status_and_source(relay: RelayServer) -> None:
    await post(relay, "goapi/image_success_flux.json")
    await post(relay, "goapi/failed_midjourney.json")
    code, out, err = await cli(relay, "events", "--status", "failed", "--json")
    assert code == 0, err
    failed = json.loads(out)
    assert [e["status"] for e in failed] == ["failed"]
    code, out, _ = await cli(relay, "events", "--source", "goapi", "--since", "1h")
    assert code == 0
    assert len(out.strip().splitlines()) == 3  # header and two events
    code, out, _ = await cli(relay, "events", "--model", "no-such-model")
    assert (code, out.strip()) == (0, "no events")


async def test_outside_text_cannot_forge_rows_of_the_tables(
    relay: RelayServer, downstream: Downstream
) -> None:
    downstream.responses = [(400, {})]
    forged = "t-1\r\nevt_forged  2026-01-01 00:00:00Z  goapi  x  succeeded  \x1b[31mred"
    await post(relay, "goapi/image_success_flux.json", task_id=forged)
    await wait_deliveries(relay, 1, "--state", "dead")
    for command in (("events",), ("deliveries",)):
        code, out, err = await cli(relay, *command)
        assert code == 0, err
        lines = out.splitlines()
        assert len(lines) == 2, out  # the header and the one row
        assert "\x1b" not in out and "\r" not in out
        assert "t-1\\r\\nevt_forged" in lines[1]
        assert "\\x1b[31mred" in lines[1]
