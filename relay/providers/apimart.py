"""APIMart: unsigned task callbacks (README: Providers).

APIMart POSTs to the ``webhook`` base URL we gave it plus ``/callback``, with the same body its
``GET /v1/tasks/{id}`` answers: ``{"code": 200, "data": <task>}``, or the bare task. Nothing is
signed, so the unguessable token in our URL (checked by the endpoint) is the only proof.

APIMart gives up at once on any 4xx, so a 400 loses the result for good. Only a body we cannot
tie to a task (not a JSON object, no task id) is refused; every other field is optional and an
odd value is ignored rather than refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from relay.errors import PayloadError
from relay.events import FINAL_STATUSES, Status, TaskError, TaskEvent
from relay.providers.apimart_outputs import read_outputs
from relay.providers.base import NO_ALERT_PHRASES, Ignored, Inbound, StatusRequest
from relay.providers.common import (
    as_float,
    get_dict,
    get_str,
    parse_time,
    redact_in_place,
)
from relay.providers.kit import api_key, build_event, percent, task_segment
from relay.providers.unsigned import TokenOnly
from relay.routing.model import SourceConfig

# APIMart documents pending, processing, completed, failed and cancelled; it pushes only the last
# three. The others are spellings seen on its submit answers and sibling APIs.
STATUS_MAP: dict[str, Status] = {
    "submitted": "pending",
    "pending": "pending",
    "queued": "pending",
    "processing": "processing",
    "running": "processing",
    "in_progress": "processing",
    "completed": "succeeded",
    "succeeded": "succeeded",
    "success": "succeeded",
    "failed": "failed",
    "failure": "failed",
    "error": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}

# Shown (and keyed on) when a callback has no usable status: it is kept as progress, not refused.
UNKNOWN_STATUS = "unknown"

# Where the task id can sit: ``id`` on the task APIMart pushes, ``task_id`` on its submit answers.
ID_KEYS: tuple[str, ...] = ("id", "task_id")

DEFAULT_API_URL = "https://api.apimart.ai"

# ``code`` values of a status answer that mean the trouble is ours or APIMart's, not the task's
# (our key refused, rate limited, or a server error): the cross-check answers 503, never 401.
_UNAVAILABLE_CODES: frozenset[int] = frozenset({401, 403, 429})


class ApimartProvider(TokenOnly):
    """The adapter for APIMart task callbacks."""

    name = "apimart"
    display_name = "APIMart"
    alerts = False
    alert_phrases = NO_ALERT_PHRASES
    # GET /v1/tasks/{id} with ``Authorization: Bearer <key>``.
    default_api_url = DEFAULT_API_URL

    def status_request(self, config: SourceConfig, task_id: str) -> StatusRequest:
        """GET {api_url}/v1/tasks/{task_id} with our key as a Bearer token."""
        base = config.api_url or self.default_api_url
        key = api_key(config)
        return StatusRequest(
            f"{base}/v1/tasks/{task_segment(task_id)}", {"Authorization": f"Bearer {key}"}
        )

    def from_status(self, inbound: Inbound, body: Any, callback: TaskEvent) -> TaskEvent | None:
        """What ``GET /v1/tasks/{id}`` says, as an event with the callback's identity.

        APIMart documents the answer as ``{"code": 200, "data": <task>}``, the same task object
        its callbacks carry (a bare task is read too, as in ``normalize``). A ``code`` of 404 or
        any other client error, no ``data``, or a task with another id means no such task
        (None); a code saying our key was refused, a rate limit or a server error is
        PayloadError, so the cross-check answers 503 and APIMart sends the callback again.
        """
        if not isinstance(body, dict):
            raise PayloadError("body: not a JSON object")
        code = _answer_code(body.get("code"))
        if code is not None and (code in _UNAVAILABLE_CODES or code >= 500):
            raise PayloadError(f"code: {code}, APIMart could not look the task up")
        if code is not None and not 200 <= code < 300:
            return None
        task = get_dict(body, "data") if "data" in body else body
        if task is None or (_task_id(task) is None and get_str(task, "status") is None):
            return None
        found = _task_id(task)
        if found is None:
            # A task without its id is still the one we asked for: the URL named it.
            task["id"] = callback.task_id
        elif found != callback.task_id:
            return None
        # The answer itself becomes ``raw``, unless its top level would hide the task.
        payload = body if _task(body) is task else {"code": 200, "data": task}
        trusted = self.normalize(inbound, payload, callback.id)
        if isinstance(trusted, Ignored):
            return None
        return trusted

    def normalize(self, inbound: Inbound, payload: Any, event_id: str) -> TaskEvent | Ignored:
        """Turn an APIMart callback, wrapped in ``{code, data}`` or bare, into a TaskEvent.

        Only the task id is required (PayloadError naming it). A missing or unknown status is a
        non-final progress event, so it can never close a task by mistake.
        """
        if not isinstance(payload, dict):
            raise PayloadError("body: not a JSON object")
        task = _task(payload)
        task_id = _task_id(task)
        if task_id is None:
            where = "data.id" if task is not payload else "id"
            raise PayloadError(f"{where}: missing or not a string")
        provider_status = get_str(task, "status") or UNKNOWN_STATUS
        # Unknown statuses are new intermediate states more often than new final ones.
        status = STATUS_MAP.get(provider_status.lower(), "processing")

        created_at = parse_time(task.get("created"))
        finished_at = parse_time(task.get("completed"))
        return build_event(
            dict(
                id=event_id,
                source=inbound.source,
                provider=self.name,
                task_id=task_id,
                dedupe_key=f"{task_id}:{provider_status.lower()}",
                model=get_str(task, "model"),
                # ``type`` (image, video, audio) on task objects, ``object`` on submit answers.
                task_type=get_str(task, "type") or get_str(task, "object"),
                test=False,
                status=status,
                provider_status=provider_status,
                progress=percent(task.get("progress"), status),
                final=status in FINAL_STATUSES,
                outputs=read_outputs(task, task.get("result")),
                error=_error(task.get("error")),
                created_at=created_at,
                finished_at=finished_at,
                duration_s=_duration(created_at, finished_at, task.get("actual_time")),
                received_at=inbound.received_at,
                usage=_usage(task),
                # Last: it consumes the payload, every field above is read already.
                raw=redact_in_place(payload),
            )
        )


def _task(payload: dict[str, Any]) -> dict[str, Any]:
    """The task object: ``data`` when the body is the ``{code, data}`` wrapper, else the body.

    A submit answer wraps a list, ``{"code": 200, "data": [{"status": "submitted", "task_id"}]}``:
    its first task is read, a creation notice rather than a malformed body.
    """
    if _task_id(payload) is not None:
        return payload
    data = payload.get("data")
    if isinstance(data, dict):
        return data
    if isinstance(data, list):
        for entry in data:
            if isinstance(entry, dict) and _task_id(entry) is not None:
                return entry
    return payload


def _task_id(task: dict[str, Any]) -> str | None:
    for key in ID_KEYS:
        value = task.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        # A numeric id is odd but still names the task: refusing it would lose the result.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _answer_code(value: Any) -> int | None:
    """A status answer's ``code`` as a number; absent or unreadable is None (read as 200)."""
    number = as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _usage(task: dict[str, Any]) -> dict[str, Any] | None:
    """APIMart's own billing figures: a ``usage`` object, or ``cost`` as a number or object."""
    usage = get_dict(task, "usage") or get_dict(task, "cost")
    if usage is not None:
        return usage
    cost = as_float(task.get("cost"))
    return {"cost": cost} if cost is not None else None


def _error(error: Any) -> TaskError | None:
    """``{code, message, type}`` or a plain string; an all-empty error is no error."""
    if isinstance(error, str):
        return TaskError(message=error.strip()) if error.strip() else None
    if not isinstance(error, dict):
        return None
    code = _error_code(error.get("code"))
    message = get_str(error, "message")
    kind = get_str(error, "type")
    if code is None and message is None and kind is None:
        return None
    text = message or kind or f"error code {code}"
    return TaskError(code=code, message=text, detail=kind if kind != text else None)


def _error_code(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    number = as_float(value)
    if number is None or number == 0:
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def _duration(
    created_at: datetime | None, finished_at: datetime | None, actual_time: Any
) -> float | None:
    """From the two timestamps when both are there, else APIMart's own ``actual_time`` (s)."""
    if created_at is not None and finished_at is not None and finished_at >= created_at:
        return round((finished_at - created_at).total_seconds(), 1)
    seconds = as_float(actual_time)
    if seconds is None or seconds < 0:
        return None
    return round(seconds, 1)
