"""GoAPI account notifications: the dashboard's own webhook (README: Providers).

Not a task callback: GoAPI posts ``{"type", "time", "message", "detail"}`` when something about
the account needs a human (the quota exchange failed, a Midjourney bot was banned, a penalty was
triggered...). Each becomes a final, failed TaskEvent so the ordinary rules can route it to ops.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from relay.errors import PayloadError
from relay.events import TaskError, TaskEvent
from relay.providers.base import Ignored, Inbound
from relay.providers.common import (
    as_float,
    get_str,
    parse_time,
    redact,
    redact_in_place,
)
from relay.providers.kit import build_event, check_secret_header
from relay.routing.model import SourceConfig

SECRET_HEADER = "x-webhook-secret"

# The notification types GoAPI documents, with a line ops can read when ``message`` is empty.
# Other types are accepted as they come: GoAPI adds new ones without notice.
KNOWN_TYPES: dict[str, str] = {
    "go_api_quota_exchange_failed": "GoAPI quota exchange failed",
    "mj_penalty_triggered": "Midjourney penalty triggered",
    "mj_bot_banned": "Midjourney bot banned",
    "mj_bot_subscription_expired": "Midjourney bot subscription expired",
    "no_active_mj_bot": "no active Midjourney bot",
    "mj_bot_no_fasthour": "Midjourney bot has no fast hours left",
    "gpt_account_unavailable": "GPT account unavailable",
    "gpt_usage_limit_reached": "GPT usage limit reached",
    "mj_bot_captcha_required": "Midjourney bot needs a captcha solved",
}

# ``detail`` is shown to people as text; a runaway one must not fill a Slack message.
_MAX_DETAIL_CHARS = 2000


class GoapiAccountProvider:
    """The adapter for GoAPI's account notification webhook (name ``goapi-account``).

    Register ``https://<relay>/hooks/<source>`` as the notification webhook in GoAPI's dashboard,
    with the source's ``secret`` as its secret (checked in the ``x-webhook-secret`` header, like
    task callbacks), or ``/hooks/<source>/<token>`` for a token-only source.

    Every notification is an alert: ``status="failed"``, ``final=true``, ``task_type`` and
    ``error_code`` are the notification ``type``, ``error.message`` its ``message`` and
    ``error.detail`` its ``detail`` as JSON. There is no task, so ``task_id`` is
    ``<type>-<time>``, and the dedupe key is (type, time). Ops route them with, for example::

        routes:
          - match: ['provider="goapi-account"']
            to: [ops-alerts]
          - match: ['provider="goapi-account"', 'error_code=~"mj_bot_.*"']
            to: [midjourney-oncall]

    Placed before the task routes (or with ``continue: true``) so a catch-all task route does
    not take them first.
    """

    name = "goapi-account"
    display_name = "GoAPI account"
    alerts = True
    alert_phrases: Mapping[str, str] = KNOWN_TYPES

    def check_source(self, config: SourceConfig) -> list[tuple[str | None, str]]:
        """A secret, a URL token, or both: the loader requires one, which is all this needs."""
        return []

    def authenticate(self, inbound: Inbound) -> None:
        """Check ``x-webhook-secret`` against the source's secret, in constant time.

        A source without a secret must have a token, which the endpoint has already checked in
        the URL. A source with neither is refused rather than left open. No replay window: the
        body's ``time`` is when the account event happened, not when it was sent, and a replayed
        notification has the same (type, time) and is dropped as a duplicate anyway.
        """
        check_secret_header(inbound, SECRET_HEADER)

    def normalize(self, inbound: Inbound, payload: Any, event_id: str) -> TaskEvent | Ignored:
        """Turn one account notification into an alert TaskEvent.

        ``type`` (a non-empty string) and ``time`` (unix seconds) are required: PayloadError
        naming the field. ``message`` and ``detail`` are optional.
        """
        if not isinstance(payload, dict):
            raise PayloadError("body: not a JSON object")
        kind = get_str(payload, "type")
        if kind is None:
            raise PayloadError("type: missing or not a string")
        seconds = as_float(payload.get("time"))
        created_at = parse_time(seconds)
        if seconds is None or created_at is None:
            raise PayloadError("time: missing or not a unix time in seconds")
        when = str(int(seconds)) if seconds.is_integer() else repr(seconds)
        message = get_str(payload, "message") or KNOWN_TYPES.get(kind) or kind
        return build_event(
            dict(
                id=event_id,
                source=inbound.source,
                provider=self.name,
                task_id=f"{kind}-{when}",
                dedupe_key=f"{kind}:{when}",
                model=None,
                task_type=kind,
                test=False,
                status="failed",
                provider_status=kind,
                progress=None,
                final=True,
                error=TaskError(code=kind, message=message, detail=_detail(payload.get("detail"))),
                created_at=created_at,
                received_at=inbound.received_at,
                # Last: it consumes the payload, every field above is read already.
                raw=redact_in_place(payload),
            )
        )


def _detail(detail: Any) -> str | None:
    """``detail`` as text for people: JSON for objects and lists, None when there is nothing."""
    if detail is None or detail in ({}, [], ""):
        return None
    if isinstance(detail, str):
        text = detail.strip()
    else:
        # Secrets inside detail must not reach the message either (raw is redacted separately).
        text = json.dumps(redact(detail), ensure_ascii=False, sort_keys=True)
    if not text:
        return None
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"
