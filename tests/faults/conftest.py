"""Each fault case gets a ``make_relay`` factory; every process it started is stopped after
the case, and none may have written a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.faults.harness import Relay


@pytest.fixture
async def make_relay(tmp_path: Path) -> AsyncIterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(rules: str, *, name: str = "relay", **env: str) -> Relay:
        relay = Relay(tmp_path / name, rules, env=env)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        await relay.stop()
        logs = relay.logs()
        assert "Traceback" not in logs, logs[-4000:]
