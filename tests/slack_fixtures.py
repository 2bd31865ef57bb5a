"""Pytest fixture for the Slack stand-in (import it from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.slack_standin import SlackStandIn


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    """A started Slack stand-in with the defaults: token "xoxb-test", channel C0RENDERS
    ("#renders"), webhook "default"; stopped after the test."""
    standin = await SlackStandIn().start()
    try:
        yield standin
    finally:
        await standin.stop()
