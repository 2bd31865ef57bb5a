"""The in-memory store: the executable spec of the Store protocol.

Plain dicts and lists, no I/O. Every other backend must behave exactly like this one; the
contract suite in ``tests/store/test_contract.py`` runs the same tests against all of them.
It is also a real backend (``memory://``) for tests and demos, where losing data on exit is fine.
"""

from __future__ import annotations

import copy
import itertools
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store.base import (
    LOST_ATTEMPT,
    AttemptRecord,
    Claim,
    Cursor,
    DeliveryFilter,
    DeliveryRecord,
    DeliveryState,
    EventFilter,
    IngestResult,
    NewDelivery,
    Outcome,
    PruneCount,
    QuarantinedCallback,
    QueueStats,
    RejectedRequest,
    Silence,
)

# What replay may start again, whatever it is asked: never a delivery under way or waiting.
REPLAYABLE: frozenset[DeliveryState] = frozenset({"dead", "delivered", "silenced"})
# The states queue_stats counts (delivered ones would grow with the whole history).
QUEUED: tuple[DeliveryState, ...] = ("pending", "sending", "dead", "silenced")


@dataclass
class _Delivery:
    id: str
    event_id: str
    destination: str
    route: int
    created_at: float
    seq: int  # creation order: the tie-break wherever two rows share a timestamp
    group: str | None = None
    state: DeliveryState = "pending"
    attempts: int = 0
    next_attempt_at: float | None = None
    lease_token: str | None = None
    lease_until: float | None = None
    last_error: str = ""
    updated_at: float = 0.0
    held_by: str | None = None

    def due_at(self) -> float | None:
        """When this delivery may be claimed: its retry time, or when its lease runs out."""
        if self.state == "pending":
            return self.next_attempt_at
        if self.state == "sending":
            return self.lease_until
        return None


@dataclass
class _Data:
    events: dict[str, TaskEvent] = field(default_factory=dict)
    by_key: dict[tuple[str, str], str] = field(default_factory=dict)
    deliveries: dict[str, _Delivery] = field(default_factory=dict)
    attempts: list[AttemptRecord] = field(default_factory=list)
    state: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pacing: dict[str, float] = field(default_factory=dict)
    quarantine: dict[str, QuarantinedCallback] = field(default_factory=dict)
    # (insertion number, request): the number breaks ties of received_at, as a sequence would.
    rejected: list[tuple[int, RejectedRequest]] = field(default_factory=list)
    silences: dict[str, Silence] = field(default_factory=dict)


class MemoryStore:
    """A Store kept in process memory. Not shared between processes; gone on exit."""

    def __init__(self) -> None:
        self._data: _Data | None = None
        self._seq = itertools.count()

    async def open(self) -> None:
        """Start with empty tables (keeps the data if already open)."""
        if self._data is None:
            self._data = _Data()

    async def close(self) -> None:
        self._data = None

    def _require(self, what: str) -> _Data:
        if self._data is None:
            raise StoreUnavailableError(f"store: {what}: not open")
        return self._data

    async def ping(self) -> None:
        self._require("ping")

    async def ingest(self, event: TaskEvent, deliveries: list[NewDelivery]) -> IngestResult:
        data = self._require("ingest")
        key = (event.source, event.dedupe_key)
        existing = data.by_key.get(key)
        if existing is not None:
            return IngestResult(event_id=existing, duplicate=True)
        # Ids are ours and unique by construction; a clash is a bug, refused like the
        # database's primary key would refuse it, and nothing is stored.
        if event.id in data.events:
            raise StoreUnavailableError(f"store: ingest: event id {event.id} already exists")
        _check_new_ids(data, "ingest", deliveries)
        # Store a copy so later changes to the caller's object cannot alter what was stored.
        data.events[event.id] = event.model_copy(deep=True)
        data.by_key[key] = event.id
        self._add(data, event.id, deliveries, event.received_at.timestamp())
        return IngestResult(event_id=event.id, duplicate=False)

    def _add(self, data: _Data, event_id: str, deliveries: list[NewDelivery], at: float) -> None:
        """New deliveries of ``event_id``, created and due at ``at``, in the order given."""
        for d in deliveries:
            data.deliveries[d.id] = _Delivery(
                id=d.id,
                event_id=event_id,
                destination=d.destination,
                route=d.route,
                created_at=at,
                seq=next(self._seq),
                group=d.group,
                next_attempt_at=at,
                updated_at=at,
            )

    async def claim(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        *,
        skip: Collection[str] = (),
        caps: Mapping[str, int] | None = None,
        quota: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        data = self._require("claim")
        skipped = frozenset(skip)
        due = [
            d
            for d in data.deliveries.values()
            if (at := d.due_at()) is not None
            and at <= now
            and d.destination not in skipped
            and not _held_back(data, d)
        ]
        due.sort(key=lambda d: (d.due_at(), d.seq))
        room = dict(caps or {})
        for d in data.deliveries.values():
            if d.destination in room and d.state == "sending" and (d.lease_until or 0) > now:
                room[d.destination] -= 1
        room = with_quota(room, quota)
        claims: list[Claim] = []
        for d in due:
            if len(claims) >= limit:
                break
            if d.destination in room:
                if room[d.destination] <= 0:
                    continue
                room[d.destination] -= 1
            if d.state == "sending":  # taken over: its lost attempt gets the row it never wrote
                data.attempts.append(
                    AttemptRecord(
                        delivery_id=d.id,
                        attempt=d.attempts,
                        started_at=d.updated_at,
                        finished_at=d.lease_until or now,
                        state="pending",
                        detail=LOST_ATTEMPT,
                    )
                )
            d.state = "sending"
            d.attempts += 1
            d.lease_token = secrets.token_hex(16)
            d.lease_until = now + lease_seconds
            d.updated_at = now
            claims.append(
                Claim(
                    delivery_id=d.id,
                    event_data=data.events[d.event_id].model_copy(deep=True),
                    destination=d.destination,
                    route=d.route,
                    attempt=d.attempts,
                    lease_token=d.lease_token,
                    lease_until=d.lease_until,
                )
            )
        return claims

    async def finish(self, claim: Claim, outcome: Outcome, started_at: float, now: float) -> bool:
        data = self._require("finish")
        retry_at = next_attempt_for(outcome)
        d = data.deliveries.get(claim.delivery_id)
        if d is None or d.state != "sending" or d.lease_token != claim.lease_token:
            return False
        d.state = outcome.state
        d.next_attempt_at = retry_at
        d.lease_token = None
        d.lease_until = None
        d.last_error = outcome.detail
        d.updated_at = now
        d.held_by = outcome.held_by if outcome.state == "silenced" else None
        if outcome.deferred:
            d.attempts -= 1
            return True
        data.attempts.append(
            AttemptRecord(
                delivery_id=d.id,
                attempt=claim.attempt,
                started_at=started_at,
                finished_at=now,
                state=outcome.state,
                detail=outcome.detail,
            )
        )
        return True

    async def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        """``find_deliveries`` by state alone: newest first, ties by id."""
        self._require("list deliveries")
        return await self.find_deliveries(DeliveryFilter(state=state), limit)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        data = self._require("get delivery")
        d = data.deliveries.get(delivery_id)
        return None if d is None else self._record(data, d)

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        data = self._require("attempts")
        return [a for a in data.attempts if a.delivery_id == delivery_id]

    async def get_event(self, event_id: str) -> TaskEvent | None:
        data = self._require("get event")
        event = data.events.get(event_id)
        return None if event is None else event.model_copy(deep=True)

    async def list_events(self, limit: int = 100) -> list[TaskEvent]:
        """``find_events`` of every event: newest received first, ties by id."""
        self._require("list events")
        return await self.find_events(EventFilter(), limit)

    async def quarantine(self, callback: QuarantinedCallback) -> None:
        data = self._require("quarantine")
        if callback.id in data.quarantine:
            raise StoreUnavailableError(f"store: quarantine: id {callback.id} already exists")
        data.quarantine[callback.id] = replace(
            callback, headers=dict(callback.headers), query=dict(callback.query)
        )

    async def list_quarantined(
        self, limit: int = 100, *, include_reprocessed: bool = False
    ) -> list[QuarantinedCallback]:
        data = self._require("list quarantined")
        rows = [
            (n, q)
            for n, q in enumerate(data.quarantine.values())
            if include_reprocessed or q.state == "quarantined"
        ]
        rows.sort(key=lambda pair: (pair[1].received_at, pair[0]), reverse=True)
        return [q for _, q in rows[: max(limit, 0)]]

    async def get_quarantined(self, quarantine_id: str) -> QuarantinedCallback | None:
        return self._require("get quarantined").quarantine.get(quarantine_id)

    async def settle_quarantined(
        self, quarantine_id: str, *, event_id: str | None, reason: str, now: float
    ) -> bool:
        data = self._require("settle quarantined")
        current = data.quarantine.get(quarantine_id)
        if current is None or current.state != "quarantined":
            return False
        data.quarantine[quarantine_id] = replace(
            current,
            state="quarantined" if event_id is None else "reprocessed",
            event_id=event_id,
            reason=reason,
            updated_at=now,
        )
        return True

    async def replay(
        self, delivery_id: str, now: float, *, states: Sequence[DeliveryState] = ("dead",)
    ) -> bool:
        data = self._require("replay")
        d = data.deliveries.get(delivery_id)
        if d is None or d.state not in REPLAYABLE.intersection(states):
            return False
        # last_error stays: it says why the delivery died until the next attempt says otherwise.
        d.state = "pending"
        d.attempts = 0
        d.next_attempt_at = now
        d.updated_at = now
        d.held_by = None
        return True

    async def add_silence(self, silence: Silence) -> bool:
        data = self._require("add silence")
        if silence.id in data.silences:
            return False
        data.silences[silence.id] = silence
        return True

    async def list_silences(self, now: float, *, include_ended: bool = False) -> list[Silence]:
        data = self._require("list silences")
        found = [s for s in data.silences.values() if include_ended or s.ends_at > now]
        return sorted(found, key=lambda s: (s.ends_at, s.id), reverse=True)

    async def get_silence(self, silence_id: str) -> Silence | None:
        return self._require("get silence").silences.get(silence_id)

    async def expire_silence(self, silence_id: str, now: float) -> bool:
        data = self._require("expire silence")
        silence = data.silences.get(silence_id)
        if silence is None or silence.ends_at <= now:
            return False
        data.silences[silence_id] = replace(silence, ends_at=now)
        return True

    async def held_counts(self) -> dict[str, int]:
        data = self._require("held counts")
        return dict(
            Counter(
                d.held_by
                for d in data.deliveries.values()
                if d.state == "silenced" and d.held_by is not None
            )
        )

    async def release_held(self, held_by: str, now: float) -> int:
        data = self._require("release held")
        held = [
            d for d in data.deliveries.values() if d.state == "silenced" and d.held_by == held_by
        ]
        for d in held:
            d.state, d.attempts, d.next_attempt_at, d.updated_at = "pending", 0, now, now
            d.held_by = None
        return len(held)

    async def group_pending(
        self, destination: str, group: str, *, after: str, limit: int
    ) -> list[tuple[str, TaskEvent]]:
        data = self._require("group pending")
        head = data.deliveries.get(after)
        start = head.seq if head is not None else -1
        found = sorted(
            (
                d
                for d in data.deliveries.values()
                if d.group == group
                and d.destination == destination
                and d.state == "pending"
                and d.seq > start
            ),
            key=lambda d: d.seq,
        )[: max(limit, 0)]
        return [(d.id, data.events[d.event_id].model_copy(deep=True)) for d in found]

    async def fold(self, delivery_ids: Sequence[str], outcome: Outcome, now: float) -> int:
        data = self._require("fold")
        changed = 0
        for delivery_id in delivery_ids:
            d = data.deliveries.get(delivery_id)
            if d is None or d.state != "pending":
                continue
            d.state, d.next_attempt_at, d.last_error, d.updated_at = (
                outcome.state,
                next_attempt_for(outcome),
                outcome.detail,
                now,
            )
            d.held_by = outcome.held_by if outcome.state == "silenced" else None
            changed += 1
        return changed

    async def find_events(
        self, where: EventFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[TaskEvent]:
        data = self._require("find events")
        rows = [
            e
            for e in data.events.values()
            if _event_matches(where, e) and (before is None or _event_key(e) < before)
        ]
        rows.sort(key=_event_key, reverse=True)
        return [e.model_copy(deep=True) for e in rows[: max(limit, 0)]]

    async def find_deliveries(
        self, where: DeliveryFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[DeliveryRecord]:
        data = self._require("find deliveries")
        rows = [
            d
            for d in data.deliveries.values()
            if _delivery_matches(where, d) and (before is None or (d.created_at, d.id) < before)
        ]
        rows.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return [self._record(data, d) for d in rows[: max(limit, 0)]]

    async def count_deliveries(self, where: DeliveryFilter) -> int:
        data = self._require("count deliveries")
        return sum(_delivery_matches(where, d) for d in data.deliveries.values())

    async def add_deliveries(
        self, event_id: str, deliveries: list[NewDelivery], now: float
    ) -> bool:
        """The new deliveries are created at ``now`` (``created_at``), not at the event's
        arrival: a re-route lists as new, and ``since``/``until`` find it by when it was made.
        In a group they come after every delivery made before them."""
        data = self._require("add deliveries")
        if event_id not in data.events:
            return False
        _check_new_ids(data, "add deliveries", deliveries)
        self._add(data, event_id, deliveries, now)
        return True

    async def release(self, claim: Claim, now: float) -> bool:
        data = self._require("release")
        d = data.deliveries.get(claim.delivery_id)
        if d is None or d.state != "sending" or d.lease_token != claim.lease_token:
            return False
        # Like a deferred outcome, less its detail: last_error still tells the last attempt.
        d.state = "pending"
        d.attempts -= 1
        d.next_attempt_at = now
        d.lease_token = None
        d.lease_until = None
        d.updated_at = now
        return True

    async def queue_stats(self, now: float) -> QueueStats:
        data = self._require("queue stats")
        rows = data.deliveries.values()
        depth: Counter[tuple[str, str]] = Counter(
            (d.destination, d.state) for d in rows if d.state in QUEUED
        )
        overdue = [
            d.next_attempt_at
            for d in rows
            if d.state == "pending" and d.next_attempt_at is not None and d.next_attempt_at <= now
        ]
        return QueueStats(depth=dict(depth), oldest_due=min(overdue, default=None))

    async def record_rejected(self, requests: Sequence[RejectedRequest], keep: int) -> None:
        data = self._require("record rejected")
        data.rejected.extend((next(self._seq), r) for r in requests)
        # Newest first; of each of the batch's sources, all past the first ``keep`` go.
        trimmed = {r.source for r in requests}
        seen: Counter[str] = Counter()
        kept = []
        for n, r in sorted(data.rejected, key=_rejected_key, reverse=True):
            seen[r.source] += 1
            if r.source not in trimmed or seen[r.source] <= keep:
                kept.append((n, r))
        data.rejected = kept

    async def list_rejected(
        self, source: str | None = None, limit: int = 100
    ) -> list[RejectedRequest]:
        data = self._require("list rejected")
        rows = [pair for pair in data.rejected if source is None or pair[1].source == source]
        rows.sort(key=_rejected_key, reverse=True)
        return [r for _, r in rows[: max(limit, 0)]]

    def watch(self, wake: Callable[[], None]) -> None:
        """Nothing to watch: in one process the receiver wakes the dispatcher itself, and
        other processes on this file find new deliveries by polling."""

    async def next_due(self) -> float | None:
        data = self._require("next due")
        times = [
            at
            for d in data.deliveries.values()
            if (at := d.due_at()) is not None and not _held_back(data, d)
        ]
        return min(times, default=None)

    async def get_state(self, destination: str, key: str) -> dict[str, Any] | None:
        data = self._require("get state")
        value = data.state.get((destination, key))
        return None if value is None else copy.deepcopy(value)

    async def put_state(
        self, destination: str, key: str, value: dict[str, Any], now: float
    ) -> None:
        data = self._require("put state")
        data.state[(destination, key)] = copy.deepcopy(value)

    async def pace(self, key: str, interval: float, now: float) -> float:
        data = self._require("pace")
        free_at = data.pacing.get(key, 0.0)
        if free_at > now:
            return free_at - now
        data.pacing[key] = now + interval
        return 0.0

    @staticmethod
    def _record(data: _Data, d: _Delivery) -> DeliveryRecord:
        event = data.events[d.event_id]
        return DeliveryRecord(
            id=d.id,
            event_id=d.event_id,
            source=event.source,
            task_id=event.task_id,
            status=event.status,
            destination=d.destination,
            route=d.route,
            state=d.state,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_error=d.last_error,
            created_at=d.created_at,
            updated_at=d.updated_at,
        )

    async def prune(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """Oldest received first (ties in arrival order)."""
        data = self._require("prune")
        by_event: dict[str, list[_Delivery]] = {}
        for d in data.deliveries.values():
            by_event.setdefault(d.event_id, []).append(d)
        # sorted() is stable: events received at one instant stay in arrival order.
        old = sorted(
            (e for e in data.events.values() if e.received_at.timestamp() < before),
            key=lambda e: e.received_at,
        )
        gone = [
            e.id
            for e in old
            if all(d.state == "delivered" and d.updated_at < before for d in by_event.get(e.id, []))
        ]
        if not dry_run:
            gone = gone[: max(limit, 0)]
        count = _remove(data, [d.id for e in gone for d in by_event.get(e, [])], gone, dry_run)
        if not dry_run:
            reprocessed = sorted(
                (q for q in data.quarantine.values() if q.state == "reprocessed"),
                key=lambda q: q.received_at,
            )
            for q in [q for q in reprocessed if q.received_at < before][: max(limit, 0)]:
                del data.quarantine[q.id]
        return count

    async def purge_dead(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """Longest dead first (ties in creation order)."""
        data = self._require("purge dead")
        dead = sorted(
            (d for d in data.deliveries.values() if d.state == "dead" and d.updated_at < before),
            key=lambda d: (d.updated_at, d.seq),
        )
        if not dry_run:
            dead = dead[: max(limit, 0)]
        ids = {d.id for d in dead}
        left = {d.event_id for d in data.deliveries.values() if d.id not in ids}
        emptied = sorted({d.event_id for d in dead} - left)
        return _remove(data, [d.id for d in dead], emptied, dry_run)


def _remove(data: _Data, deliveries: list[str], events: list[str], dry_run: bool) -> PruneCount:
    """Remove ``deliveries`` with their attempts, then ``events`` (left without deliveries);
    what that is (or, with ``dry_run``, would be)."""
    doomed = set(deliveries)
    attempts = sum(1 for a in data.attempts if a.delivery_id in doomed)
    if not dry_run:
        data.attempts = [a for a in data.attempts if a.delivery_id not in doomed]
        for delivery_id in deliveries:
            del data.deliveries[delivery_id]
        for event_id in events:
            event = data.events.pop(event_id)
            # A callback retried after this is new again: its event is gone.
            del data.by_key[(event.source, event.dedupe_key)]
    return PruneCount(events=len(events), deliveries=len(deliveries), attempts=attempts)


def _check_new_ids(data: _Data, what: str, deliveries: list[NewDelivery]) -> None:
    """Ids are ours and unique by construction; a clash is a bug, refused like the database's
    primary key would refuse it, and nothing is stored."""
    new_ids = [d.id for d in deliveries]
    if len(set(new_ids)) != len(new_ids) or any(i in data.deliveries for i in new_ids):
        raise StoreUnavailableError(f"store: {what}: delivery id already exists")


def _event_key(event: TaskEvent) -> Cursor:
    """Where an event sorts in a newest-first listing."""
    return (event.received_at.timestamp(), event.id)


def _event_matches(where: EventFilter, e: TaskEvent) -> bool:
    received = e.received_at.timestamp()
    return (
        (where.source is None or e.source == where.source)
        and (where.provider is None or e.provider == where.provider)
        and (where.status is None or e.status == where.status)
        and (where.task_id is None or e.task_id == where.task_id)
        and (where.model is None or e.model == where.model)
        and (where.since is None or where.since <= received)
        and (where.until is None or received < where.until)
        and all(e.labels.get(name) == value for name, value in where.labels)
    )


def _delivery_matches(where: DeliveryFilter, d: _Delivery) -> bool:
    return (
        (where.state is None or d.state == where.state)
        and (where.destination is None or d.destination == where.destination)
        and (where.event_id is None or d.event_id == where.event_id)
        and (where.since is None or where.since <= d.created_at)
        and (where.until is None or d.created_at < where.until)
    )


def _rejected_key(pair: tuple[int, RejectedRequest]) -> tuple[float, int]:
    """Where a rejected request sorts: by arrival, then by insertion."""
    return (pair[1].received_at, pair[0])


def _held_back(data: _Data, d: _Delivery) -> bool:
    """Whether an earlier delivery of the same group and destination is still unfinished."""
    if d.group is None:
        return False
    return any(
        other.group == d.group
        and other.destination == d.destination
        and other.seq < d.seq
        and other.state in ("pending", "sending")
        for other in data.deliveries.values()
    )


def with_quota(room: dict[str, int], quota: Mapping[str, int] | None) -> dict[str, int]:
    """The room left per destination (after caps), no more than ``quota`` allows."""
    for destination, most in (quota or {}).items():
        room[destination] = min(room.get(destination, most), most)
    return room


def next_attempt_for(outcome: Outcome) -> float | None:
    """The ``next_attempt_at`` an outcome leaves behind. Every backend uses it, so they agree.

    Raises ValueError for a pending outcome without a time: that is a caller bug, not a retry now.
    """
    if outcome.state != "pending":
        return None
    if outcome.next_attempt_at is None:
        raise ValueError("a pending outcome needs next_attempt_at")
    return outcome.next_attempt_at
