"""Standard Webhooks senders, above all another relay (README: Providers, "Another relay").

This is how relays chain: relay A's webhook destination points at relay B's ``standard`` source,
with the same ``whsec_`` secret on both sides. The request carries ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` (HMAC-SHA256 over ``id.timestamp.body``), and
the body is relay's own envelope ``{"type": "task.<status>", "timestamp": ..., "data": <event>}``.

Key rotation: the source's ``secret`` may hold several ``whsec_`` secrets separated by spaces;
a request signed with any of them is accepted. Add the new secret here, move the sender to it,
then drop the old one.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pydantic import SecretStr, ValidationError

from relay import signing
from relay.errors import PayloadError, VerificationError
from relay.events import TaskEvent
from relay.providers.base import NO_ALERT_PHRASES, Ignored, Inbound
from relay.providers.common import redact_in_place
from relay.routing.model import SourceConfig

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TYPE_PREFIX = "task."

# The fields that say who received the event: ours, whatever the sender put there.
_OURS = ("id", "source", "dedupe_key", "received_at", "raw")


class StandardProvider:
    """The adapter for Standard Webhooks senders whose body is relay's event envelope."""

    name = "standard"
    display_name = "Standard Webhooks"
    alerts = False
    alert_phrases = NO_ALERT_PHRASES

    def check_source(self, config: SourceConfig) -> list[tuple[str | None, str]]:
        """The secret is required (a URL token alone cannot prove a signed body) and must be
        one or more space-separated ``whsec_`` secrets."""
        if config.secret is None:
            return [("secret", "is required: one or more whsec_ secrets, separated by spaces")]
        if not config.secret.get_secret_value():
            return []  # the loader already reports an empty secret
        return [("secret", problem) for problem in signing.secret_problems(config.secret)]

    def authenticate(self, inbound: Inbound) -> None:
        """Verify the Standard Webhooks signature over the raw body with every configured key,
        the timestamp within ``replay_window`` of the time the request arrived.

        Every missing or malformed header is a VerificationError (401) with the reason.
        """
        keys = _keys(inbound.config)
        received = inbound.received_at
        if received.tzinfo is None:
            received = received.replace(tzinfo=UTC)
        headers = inbound.headers
        try:
            signing.verify(
                keys,
                headers.get(ID_HEADER, ""),
                headers.get(TIMESTAMP_HEADER, ""),
                headers.get(SIGNATURE_HEADER, ""),
                inbound.body,
                received.timestamp(),
                float(inbound.config.replay_window),
            )
        except signing.SignatureError as exc:
            raise VerificationError(str(exc)) from None

    def normalize(self, inbound: Inbound, payload: Any, event_id: str) -> TaskEvent | Ignored:
        """Read relay's envelope back into a TaskEvent, under this relay's identity.

        ``id``, ``source`` and ``received_at`` are ours; ``dedupe_key`` is the ``webhook-id``
        header, which the sender keeps the same on every retry of a delivery, so a retry is a
        duplicate. Everything else (provider, task id, status, outputs, error, timing, ...) is
        kept as sent. ``raw`` is the envelope itself (redacted), so the sender's own event id
        stays at ``raw.data.id``. Anything that is not a relay task envelope is a PayloadError
        naming the first bad field.
        """
        if not isinstance(payload, dict):
            raise PayloadError("body: not a JSON object")
        kind = payload.get("type")
        if not isinstance(kind, str) or not kind.startswith(TYPE_PREFIX):
            raise PayloadError(f"type: not a relay task event (expected {TYPE_PREFIX}<status>)")
        data = payload.get("data")
        if not isinstance(data, dict):
            raise PayloadError("data: missing or not an object")
        dedupe_key = _dedupe_key(inbound, data, event_id)
        # Before validation, so nothing unredacted reaches the event (usage, raw).
        redact_in_place(payload)
        # Fields this relay does not know (a newer sender) stay in raw instead of failing the
        # delivery for good: relays in a chain can be upgraded one at a time.
        fields = {
            key: value
            for key, value in data.items()
            if key not in _OURS and key in TaskEvent.model_fields
        }
        try:
            event = TaskEvent.model_validate(
                {
                    **fields,
                    "id": event_id,
                    "source": inbound.source,
                    "dedupe_key": dedupe_key,
                    "received_at": inbound.received_at,
                    "raw": payload,
                }
            )
        except ValidationError as exc:
            raise PayloadError(_first_problem(exc)) from None
        if not event.task_id.strip():
            # The task's identity: its thread in Slack, its order, its final-event key.
            raise PayloadError("data.task_id: blank")
        if kind != TYPE_PREFIX + event.status:
            raise PayloadError(f"type: {kind[:40]!r} does not match data.status '{event.status}'")
        return event


def _keys(config: SourceConfig) -> list[bytes]:
    """The HMAC keys of the source's space-separated secrets. The rules loader has checked
    them (``check_source``); a source that still has none is refused rather than left open."""
    if config.secret is None:
        raise VerificationError("source: a standard source needs a whsec_ secret")
    keys: list[bytes] = []
    for part in config.secret.get_secret_value().split():
        try:
            key = signing.decode_secret(SecretStr(part))
        except ValueError:
            continue
        if key:
            keys.append(key)
    if not keys:
        raise VerificationError("source: secret holds no valid whsec_ secret")
    return keys


def _dedupe_key(inbound: Inbound, data: dict[str, Any], event_id: str) -> str:
    """The ``webhook-id`` header; without one (a dry run), the sender's event id or ours."""
    webhook_id = inbound.headers.get(ID_HEADER)
    if webhook_id:
        return webhook_id
    if inbound.verify:
        raise VerificationError(f"{ID_HEADER} header missing")
    upstream = data.get("id")
    return upstream if isinstance(upstream, str) and upstream else event_id


def _first_problem(exc: ValidationError) -> str:
    """``data.<field>: <why>`` for the first error. pydantic's ``msg`` never holds the input."""
    errors = exc.errors()
    if not errors:
        return "data: not a valid task event"
    first = errors[0]
    # A key name comes from the payload (an unknown field): keep it short.
    where = ".".join(str(part) for part in first["loc"])[:100]
    return f"data.{where}: {first['msg']}" if where else f"data: {first['msg']}"
