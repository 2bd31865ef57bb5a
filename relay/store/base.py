"""The Store protocol every backend implements, and the records it exchanges.

The store only persists: it never sends and never decides retries. Times are unix seconds
(floats) passed in by the caller, so tests control the clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self

from relay.events import StoredEvent, TaskEvent, event_of

# The detail of the attempt row written for an attempt whose lease expired before it recorded
# an outcome (its process stopped, or it outlived the lease), when the delivery is taken over.
LOST_ATTEMPT = "lease expired with no outcome recorded (its process stopped?): sent again"
# A label's name (the rules declare them so): safe to write into a JSON path.
LABEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

# silenced: held by a silence, a route's mute time or an inhibition (``held_by``): kept, not
# sent, until replayed.
DeliveryState = Literal["pending", "sending", "delivered", "dead", "silenced"]
DELIVERY_STATES: tuple[DeliveryState, ...] = (
    "pending",
    "sending",
    "delivered",
    "dead",
    "silenced",
)
QuarantineState = Literal["quarantined", "reprocessed"]


@dataclass(frozen=True)
class NewDelivery:
    """One delivery to create with an event: one per (route, destination).

    Deliveries with the same ``group`` to the same destination are sent one at a time, in the
    order they were created: a later one is not claimed while an earlier one is pending or
    sending (channels that edit one message per task need their events in order). None: no
    ordering.
    """

    id: str
    destination: str
    route: int
    group: str | None = None


@dataclass(frozen=True)
class IngestResult:
    event_id: str
    duplicate: bool


@dataclass(frozen=True)
class Claim:
    """A delivery leased to one worker until ``lease_until``.

    ``attempt`` counts this attempt (1 for the first try since creation or replay).
    Outcomes are recorded with ``lease_token``: a worker whose lease was taken over
    cannot overwrite the new holder's result.
    """

    delivery_id: str
    # The stores give a StoredEvent, parsed only if something reads ``event``: pass
    # ``event_data`` on instead.
    event_data: TaskEvent | StoredEvent
    destination: str
    route: int
    attempt: int
    lease_token: str
    lease_until: float

    @property
    def event(self) -> TaskEvent:
        return event_of(self.event_data)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. ``state`` pending means retry at ``next_attempt_at``."""

    state: Literal["delivered", "pending", "dead", "silenced"]
    detail: str = ""
    next_attempt_at: float | None = None
    # Not an attempt at all (the channel waited for its turn): the attempt count is given back
    # and no attempt row is written.
    deferred: bool = False
    # silenced: what holds it (a silence's id, ``mute:<route>``), counted per holder.
    held_by: str | None = None

    @classmethod
    def silenced(cls, held_by: str, reason: str) -> Outcome:
        """Held, not sent: no attempt spent, none written."""
        return cls("silenced", reason, None, deferred=True, held_by=held_by)


@dataclass(frozen=True)
class DeliveryRecord:
    """A delivery as listed by ``relay deliveries``."""

    id: str
    event_id: str
    source: str
    task_id: str
    status: str
    destination: str
    route: int
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    last_error: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class AttemptRecord:
    delivery_id: str
    attempt: int
    started_at: float
    finished_at: float
    state: str
    detail: str


@dataclass(frozen=True)
class QuarantinedCallback:
    """A verified callback that its provider's adapter could not read (a bug, or a shape we do
    not know yet). Kept as it came, secrets redacted, so ``relay reprocess`` can read it again
    after an upgrade.

    ``body`` is the redacted JSON body; ``headers`` and ``query`` are what the request carried,
    less anything that holds a secret. ``state`` becomes reprocessed, with ``event_id`` the
    event it turned into, once it was read and stored.
    """

    id: str
    source: str
    provider: str
    received_at: float
    reason: str
    body: bytes
    headers: dict[str, str]
    query: dict[str, str]
    client_ip: str | None
    state: QuarantineState = "quarantined"
    event_id: str | None = None
    updated_at: float = 0.0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> QuarantinedCallback:
        """One row of ``QUARANTINE_COLUMNS``, from either database: headers and query come as
        JSON text (SQLite) or already decoded (PostgreSQL's JSONB)."""
        (id_, source, provider, received, reason, body, headers, query, ip, state, event, ua) = row
        return cls(
            id=id_,
            source=source,
            provider=provider,
            received_at=received,
            reason=reason,
            body=bytes(body),
            headers=json.loads(headers) if isinstance(headers, str) else headers,
            query=json.loads(query) if isinstance(query, str) else query,
            client_ip=ip,
            state=state,  # the table's CHECK constraint guarantees it
            event_id=event,
            updated_at=ua,
        )


# A page boundary of a newest-first listing: the (time, id) of the last row of the page before.
# The next page holds the rows strictly older: time earlier, or the same time and a smaller id.
Cursor = tuple[float, str]


@dataclass(frozen=True)
class EventFilter:
    """Which events ``find_events`` lists; None matches anything. ``since``/``until`` bound
    ``received_at`` (since <= received_at < until)."""

    source: str | None = None
    provider: str | None = None
    status: str | None = None
    task_id: str | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None
    # Labels from the hook URL, each (name, value) required; names as the rules allow them.
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name, _ in self.labels:
            if not LABEL_NAME.fullmatch(name):
                raise ValueError(f"bad label name '{name}'")


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries ``find_deliveries`` lists; None matches anything. ``since``/``until``
    bound ``created_at`` (since <= created_at < until): when its event came in, or when a
    re-route added it."""

    state: DeliveryState | None = None
    destination: str | None = None
    event_id: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class QueueStats:
    """The delivery queue as every replica sees it (read from the store at each scrape).

    ``depth``: how many deliveries are pending, sending, dead or silenced, by (destination,
    state);
    pairs with none are left out. ``oldest_due``: the ``next_attempt_at`` of the longest
    overdue pending delivery (due at or before ``now``), or None if none is overdue.
    """

    depth: Mapping[tuple[str, str], int]
    oldest_due: float | None


@dataclass(frozen=True)
class RejectedRequest:
    """A refused callback, kept so an integrator can be told why it did not arrive.

    ``path`` has any URL token masked; ``excerpt`` is the start of the body with secrets
    redacted; ``source`` is the configured source it named, or "(unknown)".
    """

    source: str
    received_at: float
    client_ip: str | None
    path: str
    status: int
    reason: str
    excerpt: str


@dataclass(frozen=True)
class PruneCount:
    """What a retention pass removed (or, counting, would remove)."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class Silence:
    """A time-bounded silence (README: Silences): deliveries of events every matcher holds
    for, from ``starts_at`` until ``ends_at``, are held as silenced. ``matchers`` are in the
    rules' matcher syntax (``provider="goapi"``)."""

    id: str
    matchers: tuple[str, ...]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    created_at: float

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": list(self.matchers),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "comment": self.comment,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Silence:
        """One row of ``SILENCE_COLUMNS``; matchers as JSON text or already decoded."""
        id_, matchers, starts, ends, comment, by, created = row
        found = json.loads(matchers) if isinstance(matchers, str) else matchers
        return cls(id_, tuple(found), starts, ends, comment, by, created)


SILENCE_COLUMNS = (
    "SELECT id, matchers, starts_at, ends_at, comment, created_by, created_at FROM silences"
)


# The columns ``QuarantinedCallback.from_row`` reads, in its order; both backends' queries.
QUARANTINE_COLUMNS = """
    SELECT id, source, provider, received_at, reason, body, headers, query, client_ip, state,
        event_id, updated_at
    FROM quarantine
"""


# Channel state records: what channels keep under ``ChannelState``, one type per shape. The
# stores persist them as opaque JSON, possibly for a long time and across upgrades, so the
# field names are a format: they never change, and reading is total (a row of another shape
# reads as None, never raises), leaving each channel to decide what such a row means.


@dataclass(frozen=True)
class SlackMessageRef:
    """The Slack message that shows a task: where it is, and what it shows.

    ``final``: it shows a final event (a late progress event must not edit it back).
    ``event_id``: the event it shows. ``replied``: the event whose thread reply was posted.
    ``replying``: the event whose thread reply is being posted, since ``replying_since``
    (an attempt that finds it looks for that reply before posting again).
    """

    channel: str
    ts: str
    final: bool = False
    event_id: str | None = None
    replied: str | None = None
    replying: str | None = None
    replying_since: float | None = None

    @staticmethod
    def key(event: TaskEvent) -> str:
        """Where a task's message reference is kept (per destination)."""
        return f"task:{event.source}/{event.task_id}"

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "channel": self.channel,
            "ts": self.ts,
            "final": self.final,
            "event_id": self.event_id,
        }
        if self.replied is not None:
            value["replied"] = self.replied
        if self.replying is not None:
            value["replying"] = self.replying
            value["replying_since"] = self.replying_since
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Self | None:
        """The reference in ``value``, or None if there is none or it is not one. Only
        ``channel`` and ``ts`` are required (the others were always read with defaults)."""
        if not isinstance(value, dict):
            return None
        channel, ts = value.get("channel"), value.get("ts")
        final = value.get("final", False)
        event_id, replied = value.get("event_id"), value.get("replied")
        if not (isinstance(channel, str) and isinstance(ts, str) and isinstance(final, bool)):
            return None
        if not (_str_or_none(event_id) and _str_or_none(replied)):
            return None
        replying, since = value.get("replying"), value.get("replying_since")
        if not (isinstance(replying, str) and isinstance(since, int | float)):
            replying, since = None, None
        return cls(channel, ts, final, event_id, replied, replying, since)


@dataclass(frozen=True)
class MailThread:
    """The Message-ID of a task's first mail, which every later mail of the task replies to."""

    message_id: str

    @staticmethod
    def key(event: TaskEvent) -> str:
        return f"thread:{event.source}/{event.task_id}"

    def to_json(self) -> dict[str, Any]:
        return {"message_id": self.message_id}

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Self | None:
        """The thread in ``value``, or None if there is none or it is not one."""
        if not isinstance(value, dict) or not isinstance(value.get("message_id"), str):
            return None
        return cls(value["message_id"])


@dataclass(frozen=True)
class RecipientOutcomes:
    """Per recipient, what became of one mail delivery so far: the recipients the server took
    (in order), and those it refused for good, with its answer."""

    accepted: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def key(delivery_id: str) -> str:
        return f"delivery:{delivery_id}"

    def to_json(self) -> dict[str, Any]:
        return {"accepted": list(self.accepted), "refused": dict(self.refused)}

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Self | None:
        """The outcomes in ``value``, or None if there are none or it is not a row of them.

        Both keys are required (every writer wrote both): a row without them may be a shape
        we do not know, and reading it as "no one served" could mail recipients twice.
        """
        if not isinstance(value, dict):
            return None
        accepted, refused = value.get("accepted"), value.get("refused")
        if not isinstance(accepted, list) or not all(isinstance(a, str) for a in accepted):
            return None
        if not isinstance(refused, dict) or not all(
            isinstance(r, str) and isinstance(why, str) for r, why in refused.items()
        ):
            return None
        return cls(tuple(accepted), dict(refused))


def _str_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


class ChannelState(Protocol):
    """What channels keep between attempts and across processes: message references (a Slack
    message's ts, the first mail's Message-ID), per-recipient outcomes and pacing slots.
    The records put here are the typed shapes above (``SlackMessageRef``, ``MailThread``,
    ``RecipientOutcomes``), as their ``to_json()``."""

    async def get_state(self, destination: str, key: str) -> dict[str, Any] | None:
        """The JSON object last put under (destination, key), or None."""

    async def put_state(
        self, destination: str, key: str, value: dict[str, Any], now: float
    ) -> None:
        """Create or replace the JSON object under (destination, key)."""

    async def pace(self, key: str, interval: float, now: float) -> float:
        """Take the next send slot of ``key`` (at most one per ``interval`` seconds, shared by
        every process on this store). 0.0: go now, the slot is taken; otherwise the seconds
        to wait before asking again (nothing is taken)."""


class Store(ChannelState, Protocol):
    """Persistence for events, deliveries and attempts. One contract suite tests every backend."""

    async def open(self) -> None:
        """Connect and apply migrations. Safe to call on an existing database."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the store can be read and written."""

    async def ingest(self, event: TaskEvent, deliveries: list[NewDelivery]) -> IngestResult:
        """Store the event and its deliveries in one transaction, or nothing.

        If an event with the same (source, dedupe_key) exists, store nothing and return
        that event's id with ``duplicate=True``. New deliveries are due at once
        (``next_attempt_at`` = the event's ``received_at``). Raises StoreUnavailableError
        when the data could not be made durable.
        """

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
        """Lease up to ``limit`` due deliveries, oldest due first.

        Due: pending with ``next_attempt_at <= now``, or sending with an expired lease
        (its worker died), and not held back by an earlier delivery of its group (see
        ``NewDelivery``). Each claim increments the delivery's attempt count. Deliveries to
        a destination in ``skip`` (at its concurrency limit, or paused by its breaker) are
        left alone, so they take no claim from the others. ``caps``: a destination named
        there never has more than that many deliveries leased (sending, lease not expired)
        at once, counted over every process on this store; claims that would pass it are
        not made. ``quota``: at most that many claims of each destination named, in this call
        alone (the caller's own free send slots for it), so a backlog to one destination never
        fills a claim the caller would have to give back.
        """

    async def finish(self, claim: Claim, outcome: Outcome, started_at: float, now: float) -> bool:
        """Record an attempt's outcome and its attempt row. False (and no change) if the lease
        was lost to another worker. The write is under way before the first suspension: a
        caller cancelled while it waits (a shutdown) still has the outcome recorded, so callers
        need no shield of their own."""

    async def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        """Newest first."""

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None: ...

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        """Oldest first."""

    async def get_event(self, event_id: str) -> TaskEvent | None: ...

    async def list_events(self, limit: int = 100) -> list[TaskEvent]:
        """Newest received first."""

    async def quarantine(self, callback: QuarantinedCallback) -> None:
        """Store a callback no adapter could read, durably, before it is answered."""

    async def list_quarantined(
        self, limit: int = 100, *, include_reprocessed: bool = False
    ) -> list[QuarantinedCallback]:
        """Newest received first; only those still quarantined unless asked."""

    async def get_quarantined(self, quarantine_id: str) -> QuarantinedCallback | None: ...

    async def settle_quarantined(
        self, quarantine_id: str, *, event_id: str | None, reason: str, now: float
    ) -> bool:
        """After a reprocess: with ``event_id``, mark it reprocessed into that event; without,
        keep it quarantined under the new ``reason``. False if it is unknown or was already
        reprocessed."""

    async def replay(
        self, delivery_id: str, now: float, *, states: Sequence[DeliveryState] = ("dead",)
    ) -> bool:
        """Make a delivery in one of ``states`` (dead, or delivered to send it again) pending
        and due now, with its attempt count reset to 0. False if it does not exist or is in
        another state (pending and sending never qualify)."""

    async def find_events(
        self, where: EventFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[TaskEvent]:
        """The events ``where`` matches, newest received first, ordered by (received_at, id)
        descending; with ``before``, only those after that cursor in this order."""

    async def find_deliveries(
        self, where: DeliveryFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[DeliveryRecord]:
        """The deliveries ``where`` matches, newest first, ordered by (created_at, id)
        descending; with ``before``, only those after that cursor in this order."""

    async def count_deliveries(self, where: DeliveryFilter) -> int:
        """How many deliveries ``where`` matches (a bulk replay's dry run)."""

    async def add_deliveries(
        self, event_id: str, deliveries: list[NewDelivery], now: float
    ) -> bool:
        """Add deliveries to a stored event (a re-route), due ``now``. False, and nothing
        added, if there is no such event."""

    async def release(self, claim: Claim, now: float) -> bool:
        """Give a lease back unfinished (shutdown): pending again, due ``now``, the attempt
        not counted and no attempt row. False if the lease was already lost."""

    async def queue_stats(self, now: float) -> QueueStats:
        """The queue's depth by destination and state, and its most overdue delivery."""

    async def record_rejected(self, requests: Sequence[RejectedRequest], keep: int) -> None:
        """Keep ``requests``; then only the newest ``keep`` of each source are kept."""

    async def list_rejected(
        self, source: str | None = None, limit: int = 100
    ) -> list[RejectedRequest]:
        """Newest first, of one source or all."""

    async def prune(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """Retention: remove up to ``limit`` events received before ``before`` whose every
        delivery was delivered and last changed before ``before`` (or that have none), with
        their deliveries and attempts. Events with a pending, sending or dead delivery stay.
        Reprocessed quarantine rows received before ``before`` go too (not counted).
        ``dry_run``: count what would go (every match, ``limit`` ignored), remove nothing."""

    async def purge_dead(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """Remove up to ``limit`` dead deliveries that died (last changed) before ``before``,
        their attempts, and their events once no delivery of the event remains.
        ``dry_run``: count what would go (every match, ``limit`` ignored), remove nothing."""

    async def next_due(self) -> float | None:
        """When the earliest pending delivery or lease falls due, or None if none is waiting.
        Deliveries held back by an earlier one of their group do not count."""

    async def add_silence(self, silence: Silence) -> bool:
        """Keep a silence. False, and nothing changed, if one with its id exists (an
        inhibition's silence is created once per alert)."""

    async def list_silences(self, now: float, *, include_ended: bool = False) -> list[Silence]:
        """Silences not ended at ``now`` (active or starting later), or every one; those
        ending last first."""

    async def get_silence(self, silence_id: str) -> Silence | None: ...

    async def expire_silence(self, silence_id: str, now: float) -> bool:
        """End a silence now. False if it is unknown or already ended."""

    async def held_counts(self) -> dict[str, int]:
        """How many deliveries are silenced, per ``held_by``."""

    async def release_held(self, held_by: str, now: float) -> int:
        """Make every delivery silenced by ``held_by`` pending and due ``now`` (attempts
        reset, as a replay). How many."""

    async def group_pending(
        self, destination: str, group: str, *, after: str, limit: int
    ) -> list[tuple[str, TaskEvent]]:
        """The pending deliveries (id, event) of ordered ``group`` to ``destination`` created
        after delivery ``after``, oldest first, at most ``limit`` (a digest folds them)."""

    async def fold(self, delivery_ids: Sequence[str], outcome: Outcome, now: float) -> int:
        """Give pending, unleased deliveries ``outcome`` (delivered or silenced) without an
        attempt: a digest carried them. How many changed."""

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another process makes deliveries due (new or replayed), where
        the backend can tell; until close(). Backends that cannot leave it to polling."""
