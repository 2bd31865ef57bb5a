"""What every provider adapter is built from, besides the typed getters of ``common``: the one
way to build the event, to read a progress figure, to keep only web URLs, to send our API key,
and to check a shared-secret header.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from relay.errors import PayloadError, VerificationError
from relay.events import Status, TaskEvent
from relay.providers.base import Inbound
from relay.providers.common import as_float, secrets_equal
from relay.routing.model import SourceConfig

_WEB = ("http://", "https://")


def build_event(fields: dict[str, Any]) -> TaskEvent:
    """The TaskEvent of ``fields``, validated once, outputs and all.

    The adapters' readers only pass valid values; if one slips through anyway, the caller gets
    a PayloadError naming the field (a 400 naming it), never a ValidationError (a 500).
    """
    try:
        return TaskEvent.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        raise PayloadError(f"{where or 'body'}: not a valid value") from exc


def percent(value: Any, status: Status) -> int | None:
    """A progress figure as 0-100: 100 once succeeded, else ``value`` (a number, or text such
    as "45" or "45%") clamped; None when there is none."""
    if status == "succeeded":
        return 100
    if isinstance(value, str):
        value = value.strip().removesuffix("%")
    number = as_float(value)
    if number is None:
        return None
    return round(min(100.0, max(0.0, number)))


def web_url(value: Any) -> str | None:
    """``value`` stripped when it is a non-empty http(s) URL, else None: base64 blobs, data:
    URLs and file paths are nothing a channel can link."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    return url if url.lower().startswith(_WEB) else None


def api_key(config: SourceConfig) -> str:
    """The source's API key for its provider's status API ("" when unset: the loader requires
    one with ``verify: fetch``)."""
    return config.api_key.get_secret_value() if config.api_key else ""


def check_secret_header(inbound: Inbound, header: str) -> None:
    """The shared-secret check of GoAPI-style webhooks: ``header`` equals the source's secret,
    in constant time.

    A source without a secret must have a token, which the endpoint has already checked in the
    URL. A source with neither is refused rather than left open.
    """
    secret = inbound.config.secret
    if secret is None:
        if inbound.config.token is None:
            raise VerificationError("source: has neither a secret nor a token")
        return
    given = inbound.headers.get(header)
    if not given:
        raise VerificationError(f"{header} header missing")
    if not secrets_equal(secret.get_secret_value(), given):
        raise VerificationError(f"{header} does not match")


def task_segment(task_id: str) -> str:
    """``task_id`` as one path segment of a status-API URL: quoted whole, so a slash cannot open
    another path; refused (400) when it is a dot segment (``.``, ``..``), which HTTP clients
    collapse, so that our API key would go to another URL of the provider's API."""
    if task_id in ("", ".", ".."):
        raise PayloadError(f"task id {task_id!r} cannot be looked up: not a usable path segment")
    return quote(task_id, safe="")
