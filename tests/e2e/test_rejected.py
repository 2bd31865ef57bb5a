"""Why did my callback not arrive? Refused requests of every kind through a real ``relay serve``,
then ``relay rejected`` shows them: token masked, body excerpt redacted, bounded per source."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from relay import signing
from tests.e2e.cli import GOAPI_SECRET, Serve, arelay, base_env, free_port, write
from tests.e2e.test_logs import STANDARD_SECRET, signed_body
from tests.fixtures_util import load

APIMART_TOKEN = "am-rejected-Token-4Kd9x"
CHECK_TOKEN = "tok-rejected-check-77"
GUESSED = "guessed-token-cafebabe99"
KEEP = 3

RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
  apimart:
    provider: apimart
    token: ${APIMART_TOKEN}
  signed:
    provider: standard
    secret: ${STANDARD_SECRET}
  checked:
    provider: goapi
    token: ${CHECK_TOKEN}
    verify: fetch
    api_key: status-api-key-0001
    api_url: ${STATUS_URL}
"""


def env_for(tmp_path: Path) -> dict[str, str]:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    return base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        APIMART_TOKEN=APIMART_TOKEN,
        STANDARD_SECRET=STANDARD_SECRET,
        CHECK_TOKEN=CHECK_TOKEN,
        # Nothing listens there: the cross-check cannot be made, so 503.
        STATUS_URL=f"http://127.0.0.1:{free_port()}",
        RELAY_REJECTED_KEEP=str(KEEP),
        RELAY_MAX_BODY="65536",
        RELAY_LOG_LEVEL="warning",
    )


async def refuse_everything(client: httpx.AsyncClient) -> dict[str, int]:
    """One refused request of each kind, then a scanner's flood; their statuses by name."""
    flux, flux_headers = load("goapi/image_success_flux.json")
    leaky = {"prompt": "a fox", "token": "leaky-body-token", "echo": f"?t={APIMART_TOKEN}"}
    body, _ = signed_body(STANDARD_SECRET)
    wrong = signing.headers([signing.decode_secret(SecretStr(STANDARD_SECRET))], "x", 1, body)
    answers = {
        "wrong token": await client.post(f"/hooks/apimart/{GUESSED}/callback", json=leaky),
        "bad signature": await client.post(
            "/hooks/signed", content=body, headers={"content-type": "application/json", **wrong}
        ),
        "bad json": await client.post(
            "/hooks/goapi",
            content=b"{nope\x1b[31m\r\nsecond line",
            headers={"x-webhook-secret": GOAPI_SECRET},
        ),
        "method": await client.get("/hooks/goapi"),
        "too large": await client.post("/hooks/goapi", content=b"x" * 70_000),
        "cross-check": await client.post(
            f"/hooks/checked/{CHECK_TOKEN}", json=flux, headers=flux_headers
        ),
    }
    for n in range(10):  # more than KEEP: only the newest KEEP stay
        answers[f"scan {n}"] = await client.post(f"/hooks/scan{n}/{GUESSED}", json={"n": n})
    return {name: r.status_code for name, r in answers.items()}


async def rejected(cwd: Path, env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    shown = await arelay(cwd, "rejected", "--json", *args, env=env)
    assert shown.code == 0, shown.err
    rows: list[dict[str, Any]] = json.loads(shown.out)
    return rows


async def test_relay_rejected_shows_each_refusal_masked_redacted_and_bounded(
    tmp_path: Path,
) -> None:
    env = env_for(tmp_path)
    server = await Serve(tmp_path, env, "serve").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            statuses = await refuse_everything(client)
        # Written in the background while serve runs: it shows up within a bounded wait.
        deadline = time.monotonic() + 15
        while True:
            rows = await rejected(tmp_path, env)
            if any(row["path"] == "/hooks/scan9/****" for row in rows):
                break
            assert time.monotonic() < deadline, f"not written: {rows}\n{server.output()}"
            await asyncio.sleep(0.1)
    finally:
        await server.stop()
    assert statuses == {
        "wrong token": 401,
        "bad signature": 401,
        "bad json": 400,
        "method": 405,
        "too large": 413,
        "cross-check": 503,
        **{f"scan {n}": 404 for n in range(10)},
    }

    rows = await rejected(tmp_path, env)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    # Each source keeps its newest KEEP; every unknown source shares one bucket.
    assert [r["path"] for r in by_source["(unknown)"]] == [
        "/hooks/scan9/****",
        "/hooks/scan8/****",
        "/hooks/scan7/****",
    ]
    assert sorted(by_source) == ["(unknown)", "apimart", "checked", "goapi", "signed"]
    assert [r["status"] for r in by_source["goapi"]] == [413, 405, 400]  # newest first

    [apimart] = by_source["apimart"]
    assert apimart["status"] == 401 and apimart["reason"] == "token does not match"
    assert apimart["path"] == "/hooks/apimart/****/callback"
    assert apimart["client_ip"] == "127.0.0.1"
    assert apimart["received_at"].endswith("Z")
    assert json.loads(apimart["excerpt"]) == {
        "prompt": "a fox",
        "token": "[redacted]",  # a credential-named field
        "echo": "?t=[redacted]",  # the source's configured token, wherever it appears
    }
    [signed] = by_source["signed"]
    assert signed["status"] == 401 and signed["reason"]
    too_large, method, bad_json = by_source["goapi"]
    assert "65536" in too_large["reason"] and too_large["excerpt"] == ""
    assert method["reason"] == "method GET (use POST)" and method["path"] == "/hooks/goapi"
    assert bad_json["excerpt"] == "{nope\\x1b[31m\\r\\nsecond line"
    assert "JSON" in bad_json["reason"]
    [checked] = by_source["checked"]
    assert checked["status"] == 503 and checked["path"] == "/hooks/checked/****"
    assert checked["reason"].startswith("cross-check failed")

    # One source; a limit.
    assert [r["source"] for r in await rejected(tmp_path, env, "--source", "apimart")] == [
        "apimart"
    ]
    assert len(await rejected(tmp_path, env, "--limit", "2")) == 2

    # The table, for a person.
    table = await arelay(tmp_path, "rejected", "--source", "goapi", env=env)
    assert table.code == 0, table.err
    header, *lines = table.out.splitlines()
    assert header.split() == ["RECEIVED", "SOURCE", "CLIENT", "STATUS", "PATH", "REASON"]
    assert "405" in lines[1] and "/hooks/goapi" in lines[1] and "method GET" in lines[1]
    none = await arelay(tmp_path, "rejected", "--source", "nosuch", env=env)
    assert none.code == 0 and none.out.strip() == "no refused requests to source nosuch"

    everything = json.dumps(rows) + table.out + server.output()
    for secret in (APIMART_TOKEN, GUESSED, CHECK_TOKEN, GOAPI_SECRET, "leaky-body-token"):
        assert secret not in everything, secret


async def test_rejected_keep_0_keeps_none(tmp_path: Path) -> None:
    env = {**env_for(tmp_path), "RELAY_REJECTED_KEEP": "0"}
    server = await Serve(tmp_path, env, "serve").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            assert (await client.post("/hooks/nosuch", json={})).status_code == 404
    finally:
        await server.stop()  # what was noted is written at shutdown: nothing here
    assert await rejected(tmp_path, env) == []
