"""Novita: the ``ASYNC_TASK_RESULT`` webhook of its asynchronous V3 APIs (README: Providers).

The body is ``{"event_type": ..., "payload": <the Task Result API's answer>}`` where the payload
holds ``task`` (id, status, reason, type, progress), ``extra`` (echoing our request's
``extra.webhook``, test mode included, and ``debug_info`` timings when Novita adds them) and the
lists ``images``, ``videos`` and ``audios``. Novita signs nothing: the unguessable token in our
URL is the only proof, and the payload echoes that URL, so the token is scrubbed from the stored
body as well.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from relay.errors import PayloadError
from relay.events import FINAL_STATUSES, Status, TaskError, TaskEvent
from relay.providers.base import NO_ALERT_PHRASES, Ignored, Inbound, StatusRequest
from relay.providers.common import (
    REDACTED,
    get_dict,
    get_str,
    parse_time,
    redact_in_place,
)
from relay.providers.kit import api_key, build_event, percent
from relay.providers.novita_outputs import read_outputs
from relay.providers.unsigned import TokenOnly
from relay.routing.model import SourceConfig

RESULT_EVENT = "ASYNC_TASK_RESULT"

STATUS_MAP: dict[str, Status] = {
    "TASK_STATUS_QUEUED": "pending",
    "TASK_STATUS_PROCESSING": "processing",
    "TASK_STATUS_SUCCEED": "succeeded",
    "TASK_STATUS_FAILED": "failed",
}

DEFAULT_API_URL = "https://api.novita.ai"

# Where our hook URL sits in a path: /hooks/{source}/{token}[/callback].
_HOOKS_SEGMENT = "hooks"


class NovitaProvider(TokenOnly):
    """The adapter for Novita's ``ASYNC_TASK_RESULT`` webhook.

    Only ``ASYNC_TASK_RESULT`` events become TaskEvents; any other ``event_type`` is
    ``Ignored`` (answered 200, stored nowhere), as Novita's docs ask receivers to do.
    """

    name = "novita"
    display_name = "Novita"
    alerts = False
    alert_phrases = NO_ALERT_PHRASES
    # GET /v3/async/task-result?task_id={id} with ``Authorization: Bearer <key>``.
    default_api_url = DEFAULT_API_URL

    def status_request(self, config: SourceConfig, task_id: str) -> StatusRequest:
        """GET {api_url}/v3/async/task-result?task_id={task_id} with our key as a Bearer
        token; the id is encoded into the query string."""
        base = config.api_url or self.default_api_url
        key = api_key(config)
        query = urlencode({"task_id": task_id})
        return StatusRequest(
            f"{base}/v3/async/task-result?{query}", {"Authorization": f"Bearer {key}"}
        )

    def from_status(self, inbound: Inbound, body: Any, callback: TaskEvent) -> TaskEvent | None:
        """What the Task Result API says, as an event with the callback's identity.

        Novita documents the answer as ``{task, images, videos, audios, extra}``: exactly the
        ``payload`` its ``ASYNC_TASK_RESULT`` webhook wraps, so it is wrapped the same way and
        read by ``normalize`` (which also scrubs our token from an echoed hook URL in ``raw``).
        An answer without a ``task`` object (an error body) or for another task id means no
        such task (None).
        """
        if not isinstance(body, dict):
            raise PayloadError("body: not a JSON object")
        task = get_dict(body, "task")
        if task is None:
            return None
        found = get_str(task, "task_id")
        if found is not None and found != callback.task_id:
            return None
        if found is None:
            # A task without its id is still the one we asked for: the URL named it.
            task["task_id"] = callback.task_id
        wrapped = {"event_type": RESULT_EVENT, "payload": body}
        trusted = self.normalize(inbound, wrapped, callback.id)
        if isinstance(trusted, Ignored):
            return None
        return trusted

    def normalize(self, inbound: Inbound, payload: Any, event_id: str) -> TaskEvent | Ignored:
        """Turn an ``ASYNC_TASK_RESULT`` body into a TaskEvent; ignore other event types.

        ``event_type``, ``payload``, ``payload.task``, ``task.task_id`` and ``task.status`` are
        required (PayloadError naming the field). Everything else is optional and ignored when
        it has a wrong type.
        """
        if not isinstance(payload, dict):
            raise PayloadError("body: not a JSON object")
        event_type = get_str(payload, "event_type")
        if event_type is None:
            # Not "some other event": a body without an event type is not from Novita at all.
            raise PayloadError("event_type: missing or not a string")
        if event_type.upper() != RESULT_EVENT:
            return Ignored(f"event_type '{event_type[:64]}' is not {RESULT_EVENT}")
        body = get_dict(payload, "payload")
        if body is None:
            raise PayloadError("payload: missing or not an object")
        task = get_dict(body, "task")
        if task is None:
            raise PayloadError("payload.task: missing or not an object")
        task_id = get_str(task, "task_id")
        if task_id is None:
            raise PayloadError("payload.task.task_id: missing or not a string")
        provider_status = get_str(task, "status")
        if provider_status is None:
            raise PayloadError("payload.task.status: missing or not a string")
        # Unknown statuses are new intermediate states more often than new final ones: treating
        # them as progress never closes a task by mistake.
        status = STATUS_MAP.get(provider_status.upper(), "processing")

        extra = get_dict(body, "extra")
        debug = get_dict(extra, "debug_info")
        created_at = parse_time(_get(debug, "submit_time_ms"))
        finished_at = parse_time(_get(debug, "complete_time_ms"))
        reason = get_str(task, "reason")
        return build_event(
            dict(
                id=event_id,
                source=inbound.source,
                provider=self.name,
                task_id=task_id,
                dedupe_key=f"{task_id}:{provider_status.upper()}",
                # Novita names the API or model family in task_type (TXT_TO_IMG,
                # MINIMAX_HAILUO_02_6S_768P); the callback carries no separate model name.
                model=None,
                task_type=get_str(task, "task_type"),
                test=_test_mode(extra),
                status=status,
                provider_status=provider_status,
                progress=_progress(task, status),
                final=status in FINAL_STATUSES,
                outputs=read_outputs(body, extra, inbound.received_at),
                error=TaskError(message=reason) if reason is not None else None,
                created_at=created_at,
                started_at=parse_time(_get(debug, "execute_time_ms")),
                finished_at=finished_at,
                duration_s=_duration(created_at, finished_at),
                received_at=inbound.received_at,
                # Last: it consumes the payload, every field above is read already.
                raw=_redacted(payload, _known_tokens(inbound)),
            )
        )


def redact_hook_url(url: str, tokens: tuple[str, ...] = ()) -> str:
    """``url`` with any relay hook token in it replaced by ``"[redacted]"``.

    The token segment of a ``/hooks/{source}/{token}`` path and the value of a ``token`` query
    parameter are replaced whatever they are, and so is every literal occurrence of ``tokens``
    (our configured token, the one in the request URL). Total: any string in, a string out.
    """
    path_end = len(url)
    for stop in ("?", "#"):
        at = url.find(stop)
        if at != -1:
            path_end = min(path_end, at)
    head, tail = url[:path_end], url[path_end:]
    segments = head.split("/")
    for index, segment in enumerate(segments[:-2]):
        token_at = index + 2
        if segment == _HOOKS_SEGMENT and segments[token_at] not in ("", "callback"):
            segments[token_at] = REDACTED
    head = "/".join(segments)
    if tail.startswith("?"):
        query, hash_mark, fragment = tail[1:].partition("#")
        parts = [_redact_token_param(part) for part in query.split("&")]
        tail = "?" + "&".join(parts) + hash_mark + fragment
    out = head + tail
    for token in tokens:
        if token:
            out = out.replace(token, REDACTED)
    return out


def _redact_token_param(part: str) -> str:
    # Edited as text, not re-encoded: the rest of the URL must stay exactly as Novita sent it.
    name, _, value = part.partition("=")
    return f"{name}={REDACTED}" if name.lower() == "token" and value else part


def redact_echoed_hook_urls(payload: Any, tokens: tuple[str, ...] = ()) -> None:
    """Scrub our token from the hook URL Novita echoes in ``payload.extra.webhook.url``.

    Changes ``payload`` in place (like ``redact_in_place``); anything not shaped as expected is
    left alone.
    """
    webhook = get_dict(get_dict(get_dict(payload, "payload"), "extra"), "webhook")
    if webhook is not None and isinstance(webhook.get("url"), str):
        webhook["url"] = redact_hook_url(webhook["url"], tokens)


def _redacted(payload: dict[str, Any], tokens: tuple[str, ...]) -> Any:
    # The echoed hook URL first: the generic redaction knows sensitive keys, not tokens in URLs.
    redact_echoed_hook_urls(payload, tokens)
    return redact_in_place(payload)


def _known_tokens(inbound: Inbound) -> tuple[str, ...]:
    configured = inbound.config.token
    found = [configured.get_secret_value()] if configured is not None else []
    if inbound.path_token:
        found.append(inbound.path_token)
    return tuple(found)


def _get(obj: dict[str, Any] | None, key: str) -> Any:
    return obj.get(key) if obj is not None else None


def _test_mode(extra: dict[str, Any] | None) -> bool:
    test_mode = get_dict(get_dict(extra, "webhook"), "test_mode")
    return test_mode is not None and test_mode.get("enabled") is True


def _progress(task: dict[str, Any], status: Status) -> int | None:
    if status == "succeeded":
        return 100
    if status not in ("pending", "processing"):
        return None
    return percent(task.get("progress_percent"), status)


def _duration(created_at: datetime | None, finished_at: datetime | None) -> float | None:
    if created_at is None or finished_at is None or finished_at < created_at:
        return None
    return round((finished_at - created_at).total_seconds(), 1)
