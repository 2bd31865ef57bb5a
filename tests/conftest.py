from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.downstream import Downstream


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    server = await Downstream().start()
    yield server
    await server.stop()
