"""Client addresses behind a proxy: `relay serve` believes X-Forwarded-For only from the proxies
RELAY_TRUSTED_PROXIES names, so allow_ips cannot be fooled by anything on the same host."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.cli import GOAPI_SECRET, Serve, base_env, write
from tests.fixtures_util import load

RULES = f"""
sources:
  inside:
    provider: goapi
    secret: {GOAPI_SECRET}
    allow_ips: [10.0.0.0/8]
"""


async def post(server: Serve, forwarded: str | None) -> httpx.Response:
    body, headers = load("goapi/image_success_flux.json")
    if forwarded is not None:
        headers["x-forwarded-for"] = forwarded
    async with httpx.AsyncClient(base_url=server.url) as client:
        return await client.post("/hooks/inside", json=body, headers=headers)


@pytest.mark.parametrize(
    ("trusted", "forwarded", "status"),
    [
        # Off by default: a forged header from this host changes nothing.
        (None, "10.1.2.3", 401),
        (None, None, 401),
        # The proxy is trusted: the client it names is the one checked.
        ("127.0.0.1", "10.1.2.3", 200),
        ("127.0.0.0/8, 192.168.0.0/16", "203.0.113.9, 10.1.2.3", 200),
        ("127.0.0.1", "203.0.113.9", 401),
        ("127.0.0.1", None, 401),
        # Trusting another proxy does not make this host one.
        ("192.168.0.0/16", "10.1.2.3", 401),
    ],
)
async def test_x_forwarded_for_counts_only_from_trusted_proxies(
    tmp_path: Path, trusted: str | None, forwarded: str | None, status: int
) -> None:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    env = base_env(RELAY_DISPATCH="0", RELAY_LOG_FORMAT="text")
    if trusted is not None:
        env["RELAY_TRUSTED_PROXIES"] = trusted
    server = await Serve(tmp_path, env, "serve").start()
    try:
        answer = await post(server, forwarded)
    finally:
        await server.stop()
    assert answer.status_code == status, answer.text
    if status == 401:
        assert "is not allowed" in answer.json()["error"]


async def test_a_bad_proxy_list_stops_serve_with_the_variable_named(tmp_path: Path) -> None:
    from tests.e2e.cli import arelay

    write(tmp_path / "rules", {"rules.yaml": RULES})
    done = await arelay(tmp_path, "serve", env=base_env(RELAY_TRUSTED_PROXIES="10.0.0.0/8,lb"))
    assert done.code == 2
    assert "RELAY_TRUSTED_PROXIES" in done.err and "'lb'" in done.err
    assert "Traceback" not in done.err
