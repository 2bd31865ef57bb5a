"""The operations an operator runs on a relay, shared by the admin API and the CLI.

Each takes the store (and, where the rules matter, the runtime) and returns plain records;
``relay.admin.api`` and ``relay.operate`` only parse arguments and shape answers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from relay.admin.params import decode_cursor, encode_cursor
from relay.channels.base import Delivery
from relay.errors import DeliveryDeferred, DeliveryError
from relay.events import Output, TaskError, TaskEvent
from relay.runtime import Runtime
from relay.store.base import (
    AttemptRecord,
    Cursor,
    DeliveryFilter,
    DeliveryRecord,
    EventFilter,
    Store,
)

T = TypeVar("T")

# Rows replayed per page of a bulk replay: one listing, then one short write per row.
_REPLAY_PAGE = 500
# How many ids a bulk replay's answer lists.
_SHOWN_IDS = 100
# A test send is one request: it must not hang an operator's terminal.
_TEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


async def _page(
    fetch: Callable[[int, Cursor | None], Awaitable[list[T]]],
    key: Callable[[T], Cursor],
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """One page: a row more than asked says whether there is a next one."""
    before = decode_cursor(cursor) if cursor else None
    rows = await fetch(limit + 1, before)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(key(rows[-1])) if more and rows else None)


async def events_page(
    store: Store, where: EventFilter, limit: int, cursor: str | None
) -> Page[TaskEvent]:
    """Newest received first. Raises ValueError for a cursor we did not make."""
    return await _page(
        lambda n, before: store.find_events(where, n, before),
        lambda e: (e.received_at.timestamp(), e.id),
        limit,
        cursor,
    )


async def deliveries_page(
    store: Store, where: DeliveryFilter, limit: int, cursor: str | None
) -> Page[DeliveryRecord]:
    """Newest first. Raises ValueError for a cursor we did not make."""
    return await _page(
        lambda n, before: store.find_deliveries(where, n, before),
        lambda d: (d.created_at, d.id),
        limit,
        cursor,
    )


async def all_deliveries(store: Store, where: DeliveryFilter) -> list[DeliveryRecord]:
    """Every delivery ``where`` matches, a page at a time."""
    rows: list[DeliveryRecord] = []
    before: Cursor | None = None
    while True:
        page = await store.find_deliveries(where, _REPLAY_PAGE, before)
        rows.extend(page)
        if len(page) < _REPLAY_PAGE:
            return rows
        before = (page[-1].created_at, page[-1].id)


@dataclass(frozen=True)
class WithAttempts:
    delivery: DeliveryRecord
    attempts: list[AttemptRecord]


async def delivery_detail(store: Store, delivery_id: str) -> WithAttempts | None:
    record = await store.get_delivery(delivery_id)
    if record is None:
        return None
    return WithAttempts(record, await store.attempts(delivery_id))


@dataclass(frozen=True)
class EventDetail:
    event: TaskEvent
    deliveries: list[WithAttempts]


async def event_detail(store: Store, event_id: str) -> EventDetail | None:
    """The event with every delivery of it (oldest first) and each one's attempts."""
    event = await store.get_event(event_id)
    if event is None:
        return None
    records = await all_deliveries(store, DeliveryFilter(event_id=event_id))
    records.reverse()
    return EventDetail(event, [WithAttempts(r, await store.attempts(r.id)) for r in records])


ReplayAnswer = Literal["replayed", "unknown", "busy"]


async def replay_one(store: Store, delivery_id: str, now: float) -> ReplayAnswer:
    """Make a dead, delivered or silenced delivery pending and due now. "busy": it is pending or
    sending already (it will be sent anyway)."""
    if await store.replay(delivery_id, now, states=("dead", "delivered", "silenced")):
        return "replayed"
    return "unknown" if await store.get_delivery(delivery_id) is None else "busy"


@dataclass(frozen=True)
class BulkReplayResult:
    matched: int
    replayed: int
    ids: list[str]


async def replay_matching(
    store: Store, where: DeliveryFilter, now: float, *, dry_run: bool
) -> BulkReplayResult:
    """Replay every delivery ``where`` matches (its state dead or delivered).

    Replayed deliveries only become due: the dispatcher sends them with the same concurrency
    and per-destination pacing as any delivery, so a burst of replays cannot flood a
    destination. ``dry_run``: count, change nothing.
    """
    if where.state not in ("dead", "delivered", "silenced"):
        raise ValueError("only dead, delivered or silenced deliveries can be replayed")
    if dry_run:
        matched = await store.count_deliveries(where)
        shown = await store.find_deliveries(where, _SHOWN_IDS)
        return BulkReplayResult(matched, 0, [d.id for d in shown])
    rows = await all_deliveries(store, where)
    done = [r.id for r in rows if await store.replay(r.id, now, states=(where.state,))]
    return BulkReplayResult(len(rows), len(done), done[:_SHOWN_IDS])


@dataclass(frozen=True)
class RerouteResult:
    created: list[DeliveryRecord]
    unchanged: list[str]


async def reroute(runtime: Runtime, event_id: str) -> RerouteResult | None:
    """Route a stored event again under the rules in force: a new delivery, due now, to each
    matching destination the event has no delivery to yet (so running it twice adds nothing).
    None if there is no such event."""
    store = runtime.store
    event = await store.get_event(event_id)
    if event is None:
        return None
    have = {d.destination for d in await all_deliveries(store, DeliveryFilter(event_id=event_id))}
    planned = runtime.receiver.deliveries(event, runtime.receiver.targets(event))
    new = [d for d in planned if d.destination not in have]
    unchanged = sorted({d.destination for d in planned if d.destination in have})
    if new:
        if not await store.add_deliveries(event_id, new, runtime.clock()):
            return None
        if runtime.dispatcher is not None:
            runtime.dispatcher.wake()
    created = [r for d in new if (r := await store.get_delivery(d.id)) is not None]
    return RerouteResult(created, unchanged)


@dataclass(frozen=True)
class TestSend:
    delivered: bool
    transient: bool | None
    error: str | None
    seconds: float
    event: TaskEvent


def test_event(status: Literal["succeeded", "failed"], now: float) -> TaskEvent:
    """A recognisable sample event (``test: true``), with no URL a destination would fetch."""
    task_id = f"relay-test-{uuid.uuid4().hex[:12]}"
    failed = status == "failed"
    return TaskEvent(
        id=f"evt_test_{uuid.uuid4().hex[:20]}",
        source="relay-test",
        provider="relay",
        task_id=task_id,
        dedupe_key=task_id,
        model="relay-test",
        task_type="test",
        prompt="A test event sent from the relay admin API",
        test=True,
        status=status,
        provider_status=status,
        final=True,
        outputs=[] if failed else [Output(kind="text", text="This is a test event from relay.")],
        error=TaskError(code="test", message="This is a test failure from relay.")
        if failed
        else None,
        received_at=datetime.fromtimestamp(now, UTC),
    )


async def send_test(
    runtime: Runtime, destination: str, status: Literal["succeeded", "failed"]
) -> TestSend | None:
    """Send a test event straight through one destination's channel, once, now: not stored,
    not retried, its outcome answered. None if the rules have no such destination."""
    channel = runtime.rulebook.routing.channels.get(destination)
    if channel is None:
        return None
    event = test_event(status, runtime.clock())
    started = time.perf_counter()
    delivery = Delivery(f"dlv_test_{uuid.uuid4().hex[:20]}", destination, 1, event)
    try:
        async with asyncio.timeout(_TEST_TIMEOUT):
            await channel.send(delivery)
    except DeliveryDeferred as wait:
        error, transient = f"{wait.reason}: try again in {wait.seconds:.1f} s", True
    except DeliveryError as exc:
        error, transient = exc.reason, exc.transient
    except TimeoutError:
        error, transient = f"no answer within {_TEST_TIMEOUT:.0f} s", True
    else:
        return TestSend(True, None, None, time.perf_counter() - started, event)
    return TestSend(False, transient, error, time.perf_counter() - started, event)
