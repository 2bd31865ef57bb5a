"""The in-memory store: the executable spec of the Store protocol.

Plain dicts and lists, no I/O. Every other backend must behave exactly like this one; the
contract suite in ``tests/store/test_contract.py`` runs the same tests against all of them.
It is also a real backend (``memory://``) for tests and demos, where losing data on exit is fine.
"""

from __future__ import annotations

import copy
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store.base import (
    AttemptRecord,
    Claim,
    DeliveryRecord,
    DeliveryState,
    IngestResult,
    NewDelivery,
    Outcome,
    QuarantinedCallback,
)


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
        new_ids = [d.id for d in deliveries]
        if event.id in data.events:
            raise StoreUnavailableError(f"store: ingest: event id {event.id} already exists")
        if len(set(new_ids)) != len(new_ids) or any(i in data.deliveries for i in new_ids):
            raise StoreUnavailableError("store: ingest: delivery id already exists")
        # Store a copy so later changes to the caller's object cannot alter what was stored.
        data.events[event.id] = event.model_copy(deep=True)
        data.by_key[key] = event.id
        received = event.received_at.timestamp()
        for d in deliveries:
            data.deliveries[d.id] = _Delivery(
                id=d.id,
                event_id=event.id,
                destination=d.destination,
                route=d.route,
                created_at=received,
                seq=next(self._seq),
                group=d.group,
                next_attempt_at=received,
                updated_at=received,
            )
        return IngestResult(event_id=event.id, duplicate=False)

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[Claim]:
        data = self._require("claim")
        due = [
            d
            for d in data.deliveries.values()
            if (at := d.due_at()) is not None and at <= now and not _held_back(data, d)
        ]
        due.sort(key=lambda d: (d.due_at(), d.seq))
        claims = []
        for d in due[: max(limit, 0)]:
            d.state = "sending"
            d.attempts += 1
            d.lease_token = secrets.token_hex(16)
            d.lease_until = now + lease_seconds
            d.updated_at = now
            claims.append(
                Claim(
                    delivery_id=d.id,
                    event=data.events[d.event_id].model_copy(deep=True),
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
        data = self._require("list deliveries")
        rows = [d for d in data.deliveries.values() if state is None or d.state == state]
        rows.sort(key=lambda d: (d.created_at, d.seq), reverse=True)
        return [self._record(data, d) for d in rows[: max(limit, 0)]]

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
        data = self._require("list events")
        # Insertion order breaks ties between events received at the same instant.
        rows = sorted(
            enumerate(data.events.values()),
            key=lambda pair: (pair[1].received_at, pair[0]),
            reverse=True,
        )
        return [event.model_copy(deep=True) for _, event in rows[: max(limit, 0)]]

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

    async def replay(self, delivery_id: str, now: float) -> bool:
        data = self._require("replay")
        d = data.deliveries.get(delivery_id)
        if d is None or d.state != "dead":
            return False
        # last_error stays: it says why the delivery died until the next attempt says otherwise.
        d.state = "pending"
        d.attempts = 0
        d.next_attempt_at = now
        d.updated_at = now
        return True

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


def next_attempt_for(outcome: Outcome) -> float | None:
    """The ``next_attempt_at`` an outcome leaves behind. Every backend uses it, so they agree.

    Raises ValueError for a pending outcome without a time: that is a caller bug, not a retry now.
    """
    if outcome.state != "pending":
        return None
    if outcome.next_attempt_at is None:
        raise ValueError("a pending outcome needs next_attempt_at")
    return outcome.next_attempt_at
