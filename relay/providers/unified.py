"""GoAPI and PiAPI: one "unified" task schema (README: Providers).

The callback body is ``{"timestamp": <unix s>, "data": <the task>}``; the header
``x-webhook-secret`` carries our shared secret in clear. ``data.output`` has a different shape per
model family; ``relay.providers.unified_outputs`` reads them all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relay.errors import PayloadError, VerificationError
from relay.events import FINAL_STATUSES, Status, TaskError, TaskEvent
from relay.providers.base import NO_ALERT_PHRASES, Ignored, Inbound, StatusRequest
from relay.providers.common import (
    as_float,
    get_dict,
    get_str,
    parse_time,
    redact_in_place,
)
from relay.providers.kit import api_key, build_event, check_secret_header, percent, task_segment
from relay.providers.unified_outputs import collect_outputs
from relay.routing.model import SourceConfig

SECRET_HEADER = "x-webhook-secret"

STATUS_MAP: dict[str, Status] = {
    "pending": "pending",
    "staged": "pending",
    "processing": "processing",
    "running": "processing",
    "starting": "processing",
    "completed": "succeeded",
    "succeeded": "succeeded",
    "success": "succeeded",
    "failed": "failed",
    "error": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}

# Where the prompt can sit, first non-empty wins: (section of data, key).
PROMPT_PLACES: tuple[tuple[str, str], ...] = (
    ("input", "prompt"),
    ("input", "user_prompt"),
    ("input", "gpt_description_prompt"),
    ("input", "text"),
)

# Where a task's progress (0-100) sits, first number wins: Midjourney "progress" (the docs also
# name it "task_progress"), Hailuo "percent".
PROGRESS_KEYS: tuple[str, ...] = ("progress", "task_progress", "percent")

DEFAULT_API_URLS = {"goapi": "https://api.goapi.ai", "piapi": "https://api.piapi.ai"}
DISPLAY_NAMES = {"goapi": "GoAPI", "piapi": "PiAPI"}


class UnifiedProvider:
    """The adapter for GoAPI and PiAPI, which share one schema; ``name`` tells them apart."""

    alerts = False
    alert_phrases = NO_ALERT_PHRASES

    def __init__(self, name: str) -> None:
        self.name = name
        # One class serves both brands: an unknown name (a test's) is shown as given.
        self.display_name = DISPLAY_NAMES.get(name, name)
        # Both serve GET /api/v1/task/{id} with the x-api-key header.
        self.default_api_url = DEFAULT_API_URLS.get(name, "https://api.goapi.ai")

    def check_source(self, config: SourceConfig) -> list[tuple[str | None, str]]:
        """A secret (the x-webhook-secret header), a URL token, or both: the loader requires
        one of them for every source, which is all this provider needs."""
        return []

    def authenticate(self, inbound: Inbound) -> None:
        """Check ``x-webhook-secret`` against the source's secret, in constant time.

        A source without a secret must have a token, which the endpoint has already checked in
        the URL. A source with neither is refused rather than left open.
        """
        check_secret_header(inbound, SECRET_HEADER)

    def status_request(self, config: SourceConfig, task_id: str) -> StatusRequest:
        """GET {api_url}/api/v1/task/{task_id} with our x-api-key."""
        base = config.api_url or self.default_api_url
        key = api_key(config)
        return StatusRequest(f"{base}/api/v1/task/{task_segment(task_id)}", {"x-api-key": key})

    def from_status(self, inbound: Inbound, body: Any, callback: TaskEvent) -> TaskEvent | None:
        """The status API answers ``{code, data: <the task>, message}``, the task in the same
        schema as a callback's ``data``; a code other than 200 or no data means no such task."""
        if not isinstance(body, dict):
            raise PayloadError("body: not a JSON object")
        data = body.get("data")
        if body.get("code") not in (200, "200", None) or not isinstance(data, dict):
            return None
        if get_str(data, "task_id") != callback.task_id:
            return None
        # The answer is fresh by construction: stamp it now so the replay window holds.
        wrapped = {"timestamp": int(inbound.received_at.timestamp()), "data": data}
        trusted = self.normalize(inbound, wrapped, callback.id)
        if isinstance(trusted, Ignored):
            return None
        return trusted

    def normalize(self, inbound: Inbound, payload: Any, event_id: str) -> TaskEvent | Ignored:
        """Turn a unified-schema callback into a TaskEvent.

        The body timestamp is checked first (VerificationError when missing or outside the
        replay window); ``data``, ``data.task_id`` and ``data.status`` are required (PayloadError
        naming the field). Every other field is optional and ignored when it has a wrong type.
        """
        if not isinstance(payload, dict):
            raise PayloadError("body: not a JSON object")
        timestamp = _checked_timestamp(payload, inbound)
        data = payload.get("data")
        if not isinstance(data, dict):
            raise PayloadError("data: missing or not an object")
        task_id = get_str(data, "task_id")
        if task_id is None:
            raise PayloadError("data.task_id: missing or not a string")
        provider_status = get_str(data, "status")
        if provider_status is None:
            raise PayloadError("data.status: missing or not a string")
        # Unknown statuses are new intermediate states more often than new final ones: treating
        # them as progress never closes a task by mistake.
        lowered = provider_status.lower()
        status = STATUS_MAP.get(lowered, "processing")

        output = data.get("output")
        meta = data.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        created_at = parse_time(meta.get("created_at"))
        finished_at = parse_time(meta.get("ended_at"))
        error = data.get("error")
        # One validation of the whole event, outputs included, rather than one per model.
        fields: dict[str, Any] = {
            "id": event_id,
            "source": inbound.source,
            "provider": self.name,
            "task_id": task_id,
            "dedupe_key": f"{task_id}:{lowered}:{timestamp}",
            "model": get_str(data, "model"),
            "task_type": get_str(data, "task_type"),
            "prompt": _prompt(data),
            "status": status,
            "provider_status": provider_status,
            "progress": _progress(output, status),
            "final": status in FINAL_STATUSES,
            "outputs": collect_outputs(output) if output else [],
            "error": _error(error) if error else None,
            "created_at": created_at,
            "started_at": parse_time(meta.get("started_at")),
            "finished_at": finished_at,
            "duration_s": _duration(created_at, finished_at),
            "received_at": inbound.received_at,
            "usage": get_dict(meta, "usage"),
            # Last: it consumes the payload, every field above is read already.
            "raw": redact_in_place(payload),
        }
        return build_event(fields)


def _checked_timestamp(payload: dict[str, Any], inbound: Inbound) -> str:
    """The body timestamp as text for the dedupe key, once it is known to be fresh."""
    value = payload.get("timestamp")
    seconds = as_float(value)
    if not inbound.verify and seconds is None:
        # A dry run checks no timestamp, so a sample without one still shows its event.
        return "none"
    if value is None:
        raise VerificationError("timestamp: missing")
    if seconds is None:
        raise VerificationError("timestamp: not a unix time in seconds")
    shown = _number_text(seconds)
    window = float(inbound.config.replay_window)
    received = inbound.received_at
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    # Both directions: a stale body may be a replay, a future one a clock we should not trust.
    # A dry run (`relay test` on an old sample) skips this check.
    if inbound.verify and abs(received.timestamp() - seconds) > window:
        raise VerificationError(f"timestamp {shown} is outside the {window:g} s replay window")
    return shown


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _prompt(data: dict[str, Any]) -> str | None:
    for section, key in PROMPT_PLACES:
        text = get_str(get_dict(data, section), key)
        if text is not None:
            return text
    # Luma echoes its (possibly expanded) prompt in the generation.
    return get_str(get_dict(get_dict(data, "output"), "generation"), "prompt")


def _progress(output: Any, status: Status) -> int | None:
    if status == "succeeded":
        return 100
    if not isinstance(output, dict):
        return None
    for key in PROGRESS_KEYS:
        value = percent(output.get(key), status)
        if value is not None:
            return value
    return None


def _error(error: Any) -> TaskError | None:
    if isinstance(error, str):
        return TaskError(message=error.strip()) if error.strip() else None
    if not isinstance(error, dict):
        return None
    code = _error_code(error.get("code"))
    message = get_str(error, "message")
    raw_message = get_str(error, "raw_message")
    # GoAPI sends an all-empty error object ({code: 0, message: ""}) on every success.
    if code is None and message is None and raw_message is None:
        return None
    text = message or raw_message or f"error code {code}"
    detail = raw_message if raw_message and raw_message != text else None
    return TaskError(code=code, message=text, detail=detail)


def _error_code(value: Any) -> str | None:
    if isinstance(value, str):
        text = value.strip()
        return text if text and text != "0" else None
    number = as_float(value)
    if number is None or number == 0:
        return None
    return _number_text(number)


def _duration(created_at: datetime | None, finished_at: datetime | None) -> float | None:
    if created_at is None or finished_at is None or finished_at < created_at:
        return None
    return round((finished_at - created_at).total_seconds(), 1)
