"""MuAPI: unsigned prediction callbacks (README: Providers).

MuAPI POSTs to the URL given as ``?webhook=`` on its submit call. Our URL sits inside MuAPI's own
query string, so the token comes either as a path segment (URL-encoded inside ``webhook=``) or as
our own ``token`` query parameter; the endpoint checks either in constant time. Nothing is signed.

The body is ``{id, status, outputs[], has_nsfw_contents[], error, created_at, executionTime,
timings}``. ``outputs`` are bare URLs with no media kind, so the kind comes from the extension, and
``has_nsfw_contents`` runs parallel to them.
"""

from __future__ import annotations

from typing import Any

from relay.errors import PayloadError
from relay.events import FINAL_STATUSES, Status, TaskError, TaskEvent
from relay.providers.base import NO_ALERT_PHRASES, Ignored, Inbound, StatusRequest
from relay.providers.common import (
    as_float,
    get_dict,
    get_str,
    parse_time,
    redact_in_place,
)
from relay.providers.kit import api_key, build_event, percent, task_segment
from relay.providers.muapi_outputs import read_outputs
from relay.providers.unsigned import TokenOnly
from relay.routing.model import SourceConfig

# MuAPI documents queued, pending, processing, completed, failed and cancelled; its webhook fires
# on completed and failed.
STATUS_MAP: dict[str, Status] = {
    "created": "pending",
    "submitted": "pending",
    "queued": "pending",
    "pending": "pending",
    "processing": "processing",
    "running": "processing",
    "in_progress": "processing",
    "completed": "succeeded",
    "succeeded": "succeeded",
    "success": "succeeded",
    "failed": "failed",
    "error": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}

# ``id`` on the webhook body and the result endpoint, ``request_id`` on the submit answer.
ID_KEYS: tuple[str, ...] = ("id", "request_id")

DEFAULT_API_URL = "https://api.muapi.ai"


class MuapiProvider(TokenOnly):
    """The adapter for MuAPI prediction callbacks."""

    name = "muapi"
    display_name = "MuAPI"
    alerts = False
    alert_phrases = NO_ALERT_PHRASES
    # GET /api/v1/predictions/{id}/result with ``x-api-key``.
    default_api_url = DEFAULT_API_URL

    def status_request(self, config: SourceConfig, task_id: str) -> StatusRequest:
        """GET {api_url}/api/v1/predictions/{task_id}/result with our x-api-key."""
        base = config.api_url or self.default_api_url
        key = api_key(config)
        return StatusRequest(
            f"{base}/api/v1/predictions/{task_segment(task_id)}/result", {"x-api-key": key}
        )

    def from_status(self, inbound: Inbound, body: Any, callback: TaskEvent) -> TaskEvent | None:
        """What ``GET /api/v1/predictions/{id}/result`` says, with the callback's identity.

        MuAPI documents the answer as the prediction object its webhook POSTs (``{id, status,
        outputs, has_nsfw_contents, error, cost, ...}``); some of its examples leave ``id`` out,
        and then the id we asked for is the one answered. A ``{code, data}`` wrapper (as on
        sibling APIs) is unwrapped. An answer with neither id nor status (an error body), or
        for another id, means no such task (None); one with an id but no status is PayloadError.
        """
        if not isinstance(body, dict):
            raise PayloadError("body: not a JSON object")
        prediction = body
        data = get_dict(body, "data")
        if _task_id(body) is None and get_str(body, "status") is None and data is not None:
            prediction = data
        found = _task_id(prediction)
        if found is None:
            if get_str(prediction, "status") is None:
                return None
            # A prediction without its id is still the one we asked for: the URL named it.
            prediction["id"] = callback.task_id
        elif found != callback.task_id:
            return None
        trusted = self.normalize(inbound, prediction, callback.id)
        if isinstance(trusted, Ignored):
            return None
        return trusted

    def normalize(self, inbound: Inbound, payload: Any, event_id: str) -> TaskEvent | Ignored:
        """Turn a MuAPI callback into a TaskEvent.

        ``id`` (or ``request_id``) and ``status`` are required (PayloadError naming the field);
        every other field is optional and ignored when it has a wrong type.
        """
        if not isinstance(payload, dict):
            raise PayloadError("body: not a JSON object")
        prediction = _prediction(payload)
        task_id = _task_id(prediction)
        if task_id is None:
            raise PayloadError("id: missing or not a string")
        provider_status = get_str(prediction, "status")
        if provider_status is None:
            raise PayloadError("status: missing or not a string")
        # Unknown statuses are new intermediate states more often than new final ones.
        status = STATUS_MAP.get(provider_status.lower(), "processing")
        return build_event(
            dict(
                id=event_id,
                source=inbound.source,
                provider=self.name,
                task_id=task_id,
                dedupe_key=f"{task_id}:{provider_status.lower()}",
                model=get_str(prediction, "model"),
                test=False,
                status=status,
                provider_status=provider_status,
                progress=percent(prediction.get("progress"), status),
                final=status in FINAL_STATUSES,
                outputs=read_outputs(prediction),
                error=_error(prediction.get("error")),
                created_at=parse_time(prediction.get("created_at")),
                duration_s=_duration(prediction.get("executionTime")),
                received_at=inbound.received_at,
                # MuAPI's result responses carry the wallet charge as ``cost``.
                usage=get_dict(prediction, "cost"),
                # Last: it consumes the payload, every field above is read already.
                raw=redact_in_place(payload),
            )
        )


def _prediction(payload: dict[str, Any]) -> dict[str, Any]:
    """The prediction: the body itself, or ``data`` when the body is a ``{code, data}``
    wrapper (as sibling APIs of the same schema send) with neither id nor status of its own."""
    data = get_dict(payload, "data")
    if data is not None and _task_id(payload) is None and get_str(payload, "status") is None:
        return data
    return payload


def _task_id(payload: dict[str, Any]) -> str | None:
    for key in ID_KEYS:
        task_id = get_str(payload, key)
        if task_id is not None:
            return task_id
    return None


def _error(error: Any) -> TaskError | None:
    """MuAPI sends a string (``""`` on success); an object with a message is read as well."""
    if isinstance(error, str):
        return TaskError(message=error.strip()) if error.strip() else None
    message = get_str(error, "message")
    return TaskError(message=message) if message is not None else None


def _duration(value: Any) -> float | None:
    """``executionTime`` in seconds.

    MuAPI documents it only as ``"<time>"``; its callbacks carry values like 6.84 next to
    ``timings.inference`` 6212 (milliseconds), so executionTime is read as seconds.
    """
    seconds = as_float(value)
    if seconds is None or seconds < 0:
        return None
    return round(seconds, 2)
