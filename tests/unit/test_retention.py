"""Retention: the ``retention:`` rules key, RELAY_RETENTION over it, and the pruning loop.

The loop runs on a MemoryStore (the store contract, tests/store, covers every backend) with a
clock of the test's own, so an event is old because the test says so.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.events import TaskEvent
from relay.retention import Pruner, delivered_retention, in_batches
from relay.routing.loader import load_rules
from relay.routing.model import Rules
from relay.settings import Settings
from relay.store.base import PruneCount
from relay.store.memory import MemoryStore

DAY = 86400.0
SOURCE = """
sources:
  goapi:
    provider: goapi
    secret: s3cret
"""


def rules_with(tmp_path: Path, *files: str) -> Rules:
    for n, text in enumerate(files):
        (tmp_path / f"{n}.yaml").write_text(textwrap.dedent(text))
    return load_rules(tmp_path, {}, {"goapi"}).rules


def problems(tmp_path: Path, *files: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        rules_with(tmp_path, *files)
    return caught.value.problems


# --- the policy -----------------------------------------------------------------------------


def test_seven_days_unless_told(tmp_path: Path) -> None:
    assert delivered_retention(Settings(), rules_with(tmp_path, SOURCE)) == 7 * DAY


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("3d", 3 * DAY), ("36h", 1.5 * DAY), ("1h", 3600.0), ("7200", 7200.0), ("off", None)],
)
def test_the_rules_retention(tmp_path: Path, written: str, seconds: float | None) -> None:
    rules = rules_with(tmp_path, SOURCE, f"retention:\n  delivered: {written}\n")
    assert delivered_retention(Settings(), rules) == seconds


def test_off_quoted_or_not(tmp_path: Path) -> None:
    # YAML reads a bare `off` as false; quoted, it is the word.
    rules = rules_with(tmp_path, SOURCE, 'retention: {delivered: "OFF"}\n')
    assert delivered_retention(Settings(), rules) is None


def test_relay_retention_wins_over_the_rules(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, SOURCE, "retention: {delivered: 3d}\n")
    assert delivered_retention(Settings.from_env({"RELAY_RETENTION": "12h"}), rules) == 12 * 3600
    assert delivered_retention(Settings.from_env({"RELAY_RETENTION": "off"}), rules) is None
    assert delivered_retention(Settings.from_env({}), rules) == 3 * DAY


def test_an_empty_retention_block_is_the_default(tmp_path: Path) -> None:
    assert delivered_retention(Settings(), rules_with(tmp_path, SOURCE, "retention:\n")) == 7 * DAY


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("retention: {delivered: soon}", "retention.delivered: bad duration 'soon'"),
        ("retention: {delivered: -1d}", "retention.delivered: bad duration '-1d': must not be"),
        ("retention: {delivered: 10m}", "retention.delivered: must be at least 1h"),
        ("retention: {delivered: true}", "retention.delivered: must be a duration like '7d'"),
        ("retention: {kept: 3d}", "retention.kept: unknown key"),
        ("retention: 7d", "retention: must be a mapping of keys to values"),
    ],
)
def test_a_bad_retention_names_the_file_and_the_key(
    tmp_path: Path, block: str, problem: str
) -> None:
    [found] = problems(tmp_path, SOURCE, block + "\n")
    assert found.startswith(f"{tmp_path / '1.yaml'}: {problem}"), found


def test_retention_is_defined_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path, SOURCE + "retention: {delivered: 3d}\n", "retention: {delivered: 5d}\n"
    )
    assert found == [f"{tmp_path / '1.yaml'}: retention: already defined in {tmp_path / '0.yaml'}"]


# --- the pruning loop -----------------------------------------------------------------------


def event(key: str, at: float) -> TaskEvent:
    return TaskEvent(
        id=f"ev-{key}",
        source="goapi",
        provider="goapi",
        task_id=f"task-{key}",
        dedupe_key=key,
        status="succeeded",
        provider_status="completed",
        final=True,
        received_at=datetime.fromtimestamp(at, UTC),
    )


T0 = 1_700_000_000.0


async def store_with(*ages: float, now: float = T0) -> MemoryStore:
    """Events without deliveries (prunable once old), received ``ages`` seconds before ``now``."""
    store = MemoryStore()
    await store.open()
    for n, age in enumerate(ages):
        await store.ingest(event(f"k{n}", now - age), [])
    return store


async def test_a_pass_prunes_every_old_event_batch_by_batch() -> None:
    store = await store_with(*[8 * DAY] * 5, 6 * DAY)
    pruner = Pruner(store, lambda: 7 * DAY, clock=lambda: T0, batch=2, pause=0)

    assert await pruner.prune_once() == PruneCount(events=5)
    assert [e.id for e in await store.list_events()] == ["ev-k5"]
    assert await pruner.prune_once() == PruneCount()


async def test_retention_off_prunes_nothing() -> None:
    store = await store_with(400 * DAY)
    assert await Pruner(store, lambda: None, clock=lambda: T0).prune_once() == PruneCount()
    assert len(await store.list_events()) == 1


async def test_a_store_that_cannot_be_reached_ends_the_pass_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = await store_with(8 * DAY)
    await store.close()
    pruner = Pruner(store, lambda: 7 * DAY, clock=lambda: T0)
    with caplog.at_level(logging.WARNING, logger="relay.retention"):
        assert await pruner.prune_once() == PruneCount()
    assert "retention: pass stopped" in caplog.text and "not open" in caplog.text


async def test_the_loop_prunes_at_start_and_again_with_the_retention_then_in_force() -> None:
    now = [T0]
    retention: list[float | None] = [7 * DAY]
    store = await store_with(8 * DAY, 3 * DAY, 1 * DAY)
    pruner = Pruner(store, lambda: retention[0], clock=lambda: now[0], interval=0.01, pause=0)
    stop = asyncio.Event()
    task = asyncio.create_task(pruner.run(stop))
    try:
        await until(store, {"ev-k1", "ev-k2"})
        # A reload shortens the retention: the next pass takes the 3-day-old event.
        retention[0] = 2 * DAY
        await until(store, {"ev-k2"})
        # Time passes: the last one grows old.
        now[0] += 2 * DAY
        await until(store, set())
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def until(store: MemoryStore, ids: set[str]) -> None:
    deadline = time.monotonic() + 5
    while {e.id for e in await store.list_events()} != ids:
        assert time.monotonic() < deadline, f"still {await store.list_events()}"
        await asyncio.sleep(0.01)


async def test_batches_end_when_stopped_or_at_their_bound() -> None:
    calls: list[float] = []

    async def full(before: float, size: int) -> PruneCount:
        calls.append(before)
        return PruneCount(events=size)

    assert await in_batches(full, T0, size=3, pause=0, max_batches=4) == PruneCount(events=12)
    assert len(calls) == 4
    stop = asyncio.Event()
    stop.set()
    assert await in_batches(full, T0, size=3, pause=0, stop=stop) == PruneCount()
    assert len(calls) == 4


def test_a_pruner_needs_a_positive_interval_and_batch() -> None:
    with pytest.raises(ValueError):
        Pruner(MemoryStore(), lambda: None, interval=0)
    with pytest.raises(ValueError):
        Pruner(MemoryStore(), lambda: None, batch=0)
