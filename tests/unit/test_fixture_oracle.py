"""Every provider fixture normalizes to what its oracle entry says, through the registered
adapter of its provider, and every fixture has an entry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from relay.providers import default_providers
from relay.providers.base import Inbound
from relay.routing.model import SourceConfig
from tests.fixtures_util import load
from tests.oracle import check, fixture_files, oracle

ORACLE = oracle()
# The fixtures' folders, by the provider that sends them.
PROVIDER_OF_FOLDER = {"goapi_account": "goapi-account"}
NOW = datetime(2025, 9, 14, 12, 0, 0, tzinfo=UTC)


def provider_of(name: str) -> str:
    folder = name.split("/", 1)[0]
    return PROVIDER_OF_FOLDER.get(folder, folder)


def test_every_fixture_has_an_oracle_entry_and_every_entry_a_fixture() -> None:
    assert fixture_files() == sorted(ORACLE)


@pytest.mark.parametrize("name", sorted(ORACLE))
def test_fixture_matches_its_oracle(name: str) -> None:
    provider_name = provider_of(name)
    provider = default_providers()[provider_name]
    payload, headers = load(name)
    settings: dict[str, Any] = {"provider": provider_name}
    settings["secret" if "x-webhook-secret" in headers else "token"] = SecretStr(
        headers.get("x-webhook-secret", "oracle-token")
    )
    inbound = Inbound(
        source=f"{provider_name}-main",
        config=SourceConfig(**settings),
        headers=headers,
        body=b"",
        received_at=NOW,
        verify=False,
    )
    check(provider.normalize(inbound, payload, "evt_oracle"), ORACLE[name])
