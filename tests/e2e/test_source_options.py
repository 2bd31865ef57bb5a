"""Source options every provider shares: allow_ips and URL tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.settings import Settings
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load

RULES = """
sources:
  inside:
    provider: goapi
    secret: s
    allow_ips: [10.0.0.0/8, "127.0.0.0/8"]
  outside:
    provider: goapi
    secret: s
    allow_ips: [10.0.0.0/8, "2001:db8::/32"]
  tokened:
    provider: goapi
    token: abc123
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    rules = write_rules(tmp_path / "rules", RULES)
    server = await RelayServer(
        Settings(rules=rules, db=f"sqlite:///{tmp_path / 'relay.db'}", dispatch=False)
    ).start()
    async with httpx.AsyncClient(base_url=server.url) as c:
        yield c
    await server.stop()


async def test_allow_ips_lets_listed_networks_in(client: httpx.AsyncClient) -> None:
    body, _ = load("goapi/image_success_flux.json")
    r = await client.post("/hooks/inside", json=body, headers={"x-webhook-secret": "s"})
    assert r.status_code == 200, r.text


async def test_allow_ips_refuses_everyone_else(client: httpx.AsyncClient) -> None:
    body, _ = load("goapi/image_success_flux.json")
    r = await client.post("/hooks/outside", json=body, headers={"x-webhook-secret": "s"})
    assert r.status_code == 401
    assert r.json() == {"error": "client address 127.0.0.1 is not allowed"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/hooks/tokened/abc123", 200),
        ("/hooks/tokened?token=abc123", 200),  # MuAPI-style: the token in the query
        ("/hooks/tokened/abc124", 401),
        ("/hooks/tokened/abc12", 401),
        ("/hooks/tokened?token=nope", 401),
        ("/hooks/tokened", 401),
    ],
)
async def test_url_tokens(client: httpx.AsyncClient, path: str, status: int) -> None:
    body, _ = load("goapi/text_success_joycaption.json")
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text


async def test_a_token_the_body_echoes_is_scrubbed_from_what_is_stored(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    import sqlite3

    body, _ = load("goapi/text_success_joycaption.json")
    body["data"]["config"]["webhook_config"]["endpoint"] = (
        "https://relay.example/hooks/tokened/abc123"
    )
    body["data"]["logs"] = ["POST /hooks/tokened/abc123 -> 200", {"url": "x?token=abc123"}]
    r = await client.post("/hooks/tokened/abc123", json=body)
    assert r.status_code == 200, r.text
    conn = sqlite3.connect(tmp_path / "relay.db")
    try:
        [(stored,)] = conn.execute("SELECT event_json FROM events").fetchall()
    finally:
        conn.close()
    assert "abc123" not in stored
    assert "https://relay.example/hooks/tokened/[redacted]" in stored
