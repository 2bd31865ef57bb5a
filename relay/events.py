"""The normalized task event (README: Webhook deliveries shows it): one model for every provider."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field

Status = Literal["pending", "processing", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
OutputKind = Literal["image", "video", "audio", "model3d", "text", "file"]

FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Output(BaseModel):
    """One produced artefact. ``url`` is empty for text outputs, which carry ``text``."""

    model_config = ConfigDict(extra="forbid")

    kind: OutputKind
    url: str | None = None
    expires_at: datetime | None = None
    nsfw: bool | None = None
    width: int | None = None
    height: int | None = None
    text: str | None = None
    title: str | None = None
    thumbnail_url: str | None = None


class TaskError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str | None = None
    message: str
    detail: str | None = None


class TaskEvent(BaseModel):
    """What a provider callback means, whatever the provider.

    ``id`` and ``received_at`` are ours; everything else comes from the payload.
    ``raw`` is the provider body with secrets redacted.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    provider: str
    task_id: str
    dedupe_key: str

    model: str | None = None
    task_type: str | None = None
    prompt: str | None = None
    test: bool = False
    # Labels from the hook URL's query string, as the source declares them (README: Rules).
    labels: dict[str, str] = Field(default_factory=dict)

    status: Status
    provider_status: str
    progress: int | None = None
    final: bool

    outputs: list[Output] = Field(default_factory=list)
    error: TaskError | None = None

    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    received_at: datetime

    usage: dict[str, Any] | None = None
    raw: Any = None

    def match_labels(self) -> dict[str, tuple[str, ...]]:
        """Routing labels (README: Rules): the built-in ones and those from the hook URL.
        ``output_kind`` has one value per distinct kind."""
        kinds = tuple(dict.fromkeys(o.kind for o in self.outputs))
        return {
            **{name: (value,) for name, value in self.labels.items()},
            "source": (self.source,),
            "provider": (self.provider,),
            "status": (self.status,),
            "model": (self.model or "",),
            "task_type": (self.task_type or "",),
            "task_id": (self.task_id,),
            "test": ("true" if self.test else "false",),
            "final": ("true" if self.final else "false",),
            "error_code": ((self.error.code or "") if self.error else "",),
            "output_kind": kinds or ("",),
        }


LABEL_NAMES: frozenset[str] = frozenset(
    {
        "source",
        "provider",
        "status",
        "model",
        "task_type",
        "task_id",
        "test",
        "final",
        "error_code",
        "output_kind",
    }
)


_MISSING = object()


class StoredEvent:
    """An event as the store keeps it (the JSON ``TaskEvent.model_dump_json`` wrote when it was
    received), parsed into a TaskEvent only when something reads it: a webhook sends that JSON
    as it is, so most deliveries never parse it. ``known``: top-level fields the store read
    from its own columns, as ``field`` gives them, so reading those parses nothing."""

    __slots__ = ("_event", "_fields", "_known", "json")

    def __init__(self, json: str, known: dict[str, Any] | None = None) -> None:
        self.json = json
        self._event: TaskEvent | None = None
        self._fields: dict[str, Any] | None = None
        self._known = known if known is not None else {}

    @classmethod
    def from_row(
        cls, json: str, *, id: str, source: str, task_id: str, status: str, received_at: float
    ) -> StoredEvent:
        """The stored JSON with the fields the events table also keeps in columns (``received_at``
        as the store's Unix time), which are what a delivery's envelope and log line read."""
        return cls(
            json,
            {
                "id": id,
                "source": source,
                "task_id": task_id,
                "status": status,
                # Exact: a Unix time of this era as a double resolves well below a microsecond.
                "received_at": datetime.fromtimestamp(received_at, UTC).isoformat(),
            },
        )

    def field(self, name: str) -> Any:
        """One top-level field as JSON has it (a time is its ISO text): from ``known``, else
        read with orjson, a fifth of the cost of parsing the event: for the webhook envelope
        and the log lines."""
        known = self._known.get(name, _MISSING)
        if known is not _MISSING:
            return known
        if self._fields is None:
            try:
                self._fields = orjson.loads(self.json)
            except orjson.JSONDecodeError:
                # A number beyond a double (1e999 in a provider's body), which pydantic wrote
                # as it came and orjson refuses: the stdlib reads it (as infinity).
                self._fields = json.loads(self.json)
        return self._fields[name]

    @property
    def event(self) -> TaskEvent:
        if self._event is None:
            self._event = TaskEvent.model_validate_json(self.json)
        return self._event


def event_of(data: TaskEvent | StoredEvent) -> TaskEvent:
    return data.event if isinstance(data, StoredEvent) else data


def field_of(data: TaskEvent | StoredEvent, name: str) -> Any:
    """A top-level field of the event without parsing a stored one: a time as ISO text from
    the store, a datetime otherwise (for log lines)."""
    return data.field(name) if isinstance(data, StoredEvent) else getattr(data, name)
