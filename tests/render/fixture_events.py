"""Every shared provider fixture as the TaskEvent its provider makes of it, with fixed ids and
times so rendered snapshots are stable; and the snapshot comparison the render tests share."""

from __future__ import annotations

import difflib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.events import TaskEvent
from relay.providers import default_providers
from relay.providers.base import Ignored, Inbound
from relay.routing.model import SourceConfig
from relay.runtime import provider_names

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
# When an event has no time of its own to be received after.
DEFAULT_RECEIVED_AT = datetime(2025, 7, 1, 12, 0, 0, tzinfo=UTC)
# How long after a task's last own time its callback is taken to arrive.
DELIVERY_LAG = timedelta(seconds=2)
# What the renderers know about providers, built as the runtime builds it.
PROVIDER_NAMES = provider_names(default_providers())


def fixture_files() -> list[Path]:
    """Every fixture body (not its headers, not an oracle), sorted."""
    return sorted(
        path
        for path in FIXTURES.glob("*/*.json")
        if not path.name.endswith(".headers.json") and path.name != "expected.json"
    )


def _normalize(path: Path, received_at: datetime) -> TaskEvent | Ignored:
    provider_name = path.parent.name.replace("_", "-")
    provider = default_providers()[provider_name]
    body = path.read_bytes()
    source = provider_name if provider_name == "goapi-account" else f"{provider_name}-main"
    inbound = Inbound(
        source=source,
        config=SourceConfig(provider=provider_name),
        headers={"content-type": "application/json"},
        body=body,
        received_at=received_at,
        # A dry run, as `relay test` does on a recorded sample: no secrets, no replay window.
        verify=False,
    )
    name = f"{path.parent.name}__{path.stem}"
    return provider.normalize(inbound, json.loads(body), f"evt_{name}")


def fixture_event(path: Path) -> TaskEvent | Ignored:
    """The fixture's event, received just after the task's own last time (or at a fixed time)."""
    first = _normalize(path, DEFAULT_RECEIVED_AT)
    if isinstance(first, Ignored):
        return first
    own = first.finished_at or first.created_at
    if own is None:
        return first
    return _normalize(path, own + DELIVERY_LAG)


def fixture_events() -> list[tuple[str, TaskEvent]]:
    """(``<provider dir>__<fixture stem>``, event) for every fixture that is not Ignored."""
    found = []
    for path in fixture_files():
        event = fixture_event(path)
        if isinstance(event, TaskEvent):
            found.append((f"{path.parent.name}__{path.stem}", event))
    return found


SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"


def check_snapshot(path: Path, actual: str) -> None:
    """Compare ``actual`` with the checked-in file; UPDATE_SNAPSHOTS=1 rewrites it instead."""
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"{path} is missing: run with UPDATE_SNAPSHOTS=1 to write it")
    expected = path.read_text(encoding="utf-8")
    if expected != actual:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=str(path.relative_to(SNAPSHOTS.parent)),
                tofile="rendered now",
            )
        )
        pytest.fail(f"rendering changed (UPDATE_SNAPSHOTS=1 accepts it):\n{diff}", pytrace=False)
