from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.downstream import Downstream
from tests.pg import pg_server, pg_url  # noqa: F401
from tests.slack_fixtures import slack  # noqa: F401
from tests.smtp_fixtures import smtp_server, test_ca  # noqa: F401


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every server a test talks to is on 127.0.0.1; slack_sdk sends through HTTPS_PROXY /
    # HTTP_PROXY whatever NO_PROXY says, so a CI machine's proxy must not be in the way.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    server = await Downstream().start()
    yield server
    await server.stop()
