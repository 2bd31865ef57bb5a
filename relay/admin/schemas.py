"""The admin API's requests and answers as pydantic models: they validate what comes in, shape
what goes out, and are the schemas of ``/admin/openapi.json``, so the document cannot drift
from the code. ``relay … --json`` prints the same shapes."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from relay.admin.params import ID_PATTERN, iso
from relay.events import Status, TaskEvent
from relay.store.base import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryState,
    QuarantinedCallback,
    RejectedRequest,
)

_STRICT = ConfigDict(extra="forbid")
# What a filter value may hold: printable text, no control characters (a NUL cannot be in any
# stored value, and PostgreSQL refuses it in a query).
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,200}$")]
MAX_LIMIT = 1000
_HTTP_CODE = re.compile(r"^HTTP (\d{3})\b")

Limit = Field(50, ge=1, le=MAX_LIMIT, description=f"rows per page, 1 to {MAX_LIMIT}")
Since = Field(None, description="from this time on (inclusive): an age (2h), ISO 8601 or unix s")
Until = Field(None, description="before this time (exclusive): an age (30m), ISO 8601 or unix s")
Cursor = Field(None, description="the next_cursor of the previous page")


class _Query(BaseModel):
    """Query parameters: unknown ones are refused, so a typo cannot widen a filter."""

    model_config = _STRICT


class EventQuery(_Query):
    source: Text | None = None
    provider: Text | None = None
    status: Status | None = None
    task_id: Text | None = None
    model: Text | None = None
    label: Text | None = Field(
        None,
        description="a label from the hook URL, name=value (team=media); repeat it to require "
        "several",
    )
    since: Text | None = Since
    until: Text | None = Until
    limit: int = Limit
    cursor: Text | None = Cursor


class DeliveryQuery(_Query):
    state: DeliveryState | None = None
    destination: Text | None = None
    event_id: str | None = Field(None, pattern=ID_PATTERN)
    since: Text | None = Since
    until: Text | None = Until
    limit: int = Limit
    cursor: Text | None = Cursor


class QuarantineQuery(_Query):
    all: bool = Field(False, description="the reprocessed ones too")
    limit: int = Limit


class RejectedQuery(_Query):
    source: Text | None = None
    limit: int = Limit


class BulkReplay(BaseModel):
    """Which deliveries to replay. Dead ones unless ``state`` says delivered (send again) or
    silenced (held by a silence or a mute window)."""

    model_config = _STRICT

    destination: Text | None = None
    state: Literal["dead", "delivered", "silenced"] = "dead"
    since: Text | None = Since
    until: Text | None = Until
    dry_run: bool = Field(False, description="count what would be replayed, change nothing")


class TestRequest(BaseModel):
    """A test event: succeeded, or failed with a sample error."""

    model_config = _STRICT

    status: Literal["succeeded", "failed"] = "succeeded"


class Error(BaseModel):
    error: str
    problems: list[str] | None = None


class Attempt(BaseModel):
    attempt: int
    started_at: str
    finished_at: str
    duration_ms: float
    state: str
    response_code: int | None = Field(description="the HTTP status answered, where known")
    detail: str

    @classmethod
    def of(cls, a: AttemptRecord) -> Attempt:
        code = _HTTP_CODE.match(a.detail)
        return cls(
            attempt=a.attempt,
            started_at=iso(a.started_at) or "",
            finished_at=iso(a.finished_at) or "",
            duration_ms=round((a.finished_at - a.started_at) * 1000, 3),
            state=a.state,
            response_code=int(code.group(1)) if code else None,
            detail=a.detail,
        )


class Delivery(BaseModel):
    id: str
    event_id: str
    source: str
    task_id: str
    status: str
    destination: str
    route: int = Field(description="the matching route's number in the rules, from 1")
    state: DeliveryState
    attempts: int
    next_attempt_at: str | None
    last_error: str
    created_at: str
    updated_at: str
    attempt_log: list[Attempt] | None = Field(
        None, description="every attempt, oldest first (one delivery's own answers only)"
    )

    @classmethod
    def of(cls, r: DeliveryRecord, attempts: list[AttemptRecord] | None = None) -> Delivery:
        return cls(
            id=r.id,
            event_id=r.event_id,
            source=r.source,
            task_id=r.task_id,
            status=r.status,
            destination=r.destination,
            route=r.route + 1,
            state=r.state,
            attempts=r.attempts,
            next_attempt_at=iso(r.next_attempt_at) if r.state == "pending" else None,
            last_error=r.last_error,
            created_at=iso(r.created_at) or "",
            updated_at=iso(r.updated_at) or "",
            attempt_log=None if attempts is None else [Attempt.of(a) for a in attempts],
        )


class EventPage(BaseModel):
    events: list[TaskEvent] = Field(description="newest received first, without raw bodies")
    next_cursor: str | None


class DeliveryPage(BaseModel):
    deliveries: list[Delivery] = Field(description="newest first")
    next_cursor: str | None


class EventDetail(BaseModel):
    event: TaskEvent
    deliveries: list[Delivery]


class Replayed(BaseModel):
    delivery: Delivery


class BulkReplayed(BaseModel):
    dry_run: bool
    matched: int = Field(description="deliveries the filter matched")
    replayed: int = Field(description="made pending and due now (0 in a dry run)")
    ids: list[str] = Field(description="the first 100 replayed (or, dry run, matched) ids")


class Rerouted(BaseModel):
    event_id: str
    created: list[Delivery] = Field(description="new deliveries, due now")
    unchanged: list[str] = Field(description="matching destinations the event already had")


class TestResult(BaseModel):
    destination: str
    delivered: bool
    transient: bool | None = Field(description="for a failure: whether a retry could succeed")
    error: str | None
    duration_ms: float
    event: TaskEvent


class Reloaded(BaseModel):
    reloaded: bool
    hash: str | None = None
    sources: int
    destinations: int
    routes: int
    problems: list[str] = Field(default_factory=list)


class Rejected(BaseModel):
    source: str
    received_at: str
    client_ip: str | None
    path: str = Field(description="with any URL token masked")
    status: int
    reason: str
    excerpt: str = Field(description="the start of the body, secrets redacted")

    @classmethod
    def of(cls, r: RejectedRequest) -> Rejected:
        return cls(
            source=r.source,
            received_at=iso(r.received_at) or "",
            client_ip=r.client_ip,
            path=r.path,
            status=r.status,
            reason=r.reason,
            excerpt=r.excerpt,
        )


class RejectedList(BaseModel):
    rejected: list[Rejected] = Field(description="newest first")


class Quarantined(BaseModel):
    id: str
    source: str
    provider: str
    received_at: str
    reason: str = Field(description="why the adapter could not read it")
    state: Literal["quarantined", "reprocessed"]
    event_id: str | None = Field(description="the event it became, once reprocessed")
    body: Any = Field(description="the body as received, secrets redacted (JSON, or text)")
    headers: dict[str, str] = Field(description="less those that carry a credential")
    query: dict[str, str]
    client_ip: str | None

    @classmethod
    def of(cls, q: QuarantinedCallback) -> Quarantined:
        text = q.body.decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return cls(
            id=q.id,
            source=q.source,
            provider=q.provider,
            received_at=iso(q.received_at) or "",
            reason=q.reason,
            state=q.state,
            event_id=q.event_id,
            body=body,
            headers=q.headers,
            query=q.query,
            client_ip=q.client_ip,
        )


class QuarantineList(BaseModel):
    quarantined: list[Quarantined] = Field(description="newest received first")


class SilenceQuery(_Query):
    all: bool = Field(False, description="ended silences too")


class SilenceRequest(BaseModel):
    """A new silence: matchers in the rules' syntax, and how long (``duration``) or until when
    (``ends_at``)."""

    model_config = _STRICT

    matchers: list[Annotated[str, StringConstraints(max_length=500)]] = Field(
        min_length=1, max_length=20, description='matchers, all must hold: provider="goapi"'
    )
    duration: Text | None = Field(None, description="how long: 2h, 30m, 1d")
    ends_at: Text | None = Field(None, description="when it ends: ISO 8601 or unix s")
    starts_at: Text | None = Field(None, description="when it starts (default now)")
    comment: Annotated[str, StringConstraints(max_length=500)] = ""
    created_by: Annotated[str, StringConstraints(max_length=200)] = "admin"


class SilenceOut(BaseModel):
    id: str
    matchers: list[str]
    starts_at: str
    ends_at: str
    state: Literal["active", "pending", "ended"]
    comment: str
    created_by: str
    created_at: str
    held: int = Field(description="deliveries it holds as silenced now")

    @classmethod
    def of(cls, view: Any, now: float) -> SilenceOut:
        silence = view.silence
        return cls(
            id=silence.id,
            matchers=list(silence.matchers),
            starts_at=iso(silence.starts_at) or "",
            ends_at=iso(silence.ends_at) or "",
            state=view.state(now),
            comment=silence.comment,
            created_by=silence.created_by,
            created_at=iso(silence.created_at) or "",
            held=view.held,
        )


class SilenceList(BaseModel):
    silences: list[SilenceOut]


class ExpireRequest(BaseModel):
    model_config = _STRICT

    release: bool = Field(False, description="send what it held, now")


class SilenceEnded(BaseModel):
    silence: SilenceOut
    released: int


class Released(BaseModel):
    held_by: str
    released: int
