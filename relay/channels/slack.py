"""Slack destination: one Block Kit message per task, edited in place (slack_sdk, async).

With a bot token the first event of a task posts (``chat.postMessage``) and later ones edit
that message (``chat.update``), its channel id and ``ts`` kept in the store so every process
finds it. An incoming webhook cannot edit, so there every event posts. Posts and edits are
paced per channel through the store; slack_sdk's own retry handlers are off, so a 429 comes
back to the dispatcher, which schedules the next attempt from its ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from relay.channels.base import ChannelDeps, Delivery, http_failure, parse_retry_after
from relay.digest_view import DigestView
from relay.errors import (
    DeliveryDeferred,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from relay.events import TaskEvent
from relay.render.digest import digest_slack
from relay.render.slack import SlackMessage, slack_message, slack_thread_reply
from relay.routing.model import SlackDestination
from relay.store.base import SlackMessageRef
from relay.templating import Text, context, destination_templates

# Web API errors worth another try (Slack's own words for "not now"); every other
# ``ok: false`` answer (channel_not_found, invalid_auth, invalid_blocks, ...) is permanent.
TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "service_unavailable",
        "internal_error",
        "fatal_error",
        "request_timeout",
    }
)


log = logging.getLogger("relay.channels.slack")
# The metadata event type of relay's messages: how a retry recognizes its own post.
METADATA_TYPE = "relay_task"
# A conversation ID (public, private, DM): what conversations.history takes, not "#name".
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{8,}")


def message_key(event: TaskEvent, channel: str | None = None) -> str:
    """Where a task's message reference is kept (per destination; with a templated channel,
    per rendered ``channel`` too: one message per task in each channel)."""
    key = SlackMessageRef.key(event)
    return key if channel is None else f"{key}@{channel}"


@dataclass(frozen=True)
class _Target:
    """Where one delivery goes: the channel (as configured or rendered), the state row of the
    task's message there, the pacing key and the state row of the channel's ID."""

    channel: str
    key: str
    pace: str
    id_key: str


class SlackChannel:
    """Sends one delivery to Slack. Holds no state itself: the store does."""

    def __init__(self, name: str, config: SlackDestination, deps: ChannelDeps) -> None:
        self.name = name
        self._config = config
        self._deps = deps
        self._web: AsyncWebClient | None = None
        self._hook: AsyncWebhookClient | None = None
        # retry_handlers=[]: slack_sdk would otherwise retry connection errors itself, and
        # retries are the dispatcher's alone. The shared session ignores the clients' own
        # timeout, so each attempt is bounded in send().
        if config.token is not None:
            self._web = AsyncWebClient(
                token=config.token.get_secret_value(),
                base_url=config.api_url,
                session=deps.http,
                retry_handlers=[],
            )
            self._pace_key = f"slack:{config.api_url}:{config.channel}"
        else:
            assert config.webhook_url is not None  # the model requires one of the two
            url = config.webhook_url.get_secret_value()
            self._hook = AsyncWebhookClient(url, session=deps.http, retry_handlers=[])
            # The URL is a credential: pace by its digest, never store it.
            self._pace_key = "slack-webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]
        self._templates = destination_templates(name, config)

    def _values(self, delivery: Delivery) -> dict[str, Any]:
        """What the templates see, if any template applies to ``delivery`` (else nothing)."""
        templates = self._templates.for_delivery(delivery.template)
        used = templates.header or templates.text or templates.sections is not None
        if used or isinstance(self._templates.channel, Text):
            return context(delivery.event, self._deps.names)
        return {}

    def _message(self, delivery: Delivery, values: dict[str, Any]) -> SlackMessage:
        parts = self._templates.for_delivery(delivery.template).slack(values)
        return slack_message(delivery.event, self._deps.names, delivery.mentions, parts)

    def _target(self, delivery: Delivery, values: dict[str, Any]) -> _Target:
        if not isinstance(self._templates.channel, Text):
            key = message_key(delivery.event)
            return _Target(self._config.channel or "", key, self._pace_key, "channel-id")
        channel = self._templates.render_channel(values) or ""
        return _Target(
            channel,
            message_key(delivery.event, channel),
            f"slack:{self._config.api_url}:{channel}",
            f"channel-id:{channel}",
        )

    def render(self, delivery: Delivery) -> str:
        values = self._values(delivery)
        message = self._message(delivery, values)
        where = (
            self._target(delivery, values).channel if self._web is not None else "incoming webhook"
        )
        payload = {"channel": where, "text": message.text, "blocks": message.blocks}
        return "Slack " + json.dumps(payload, indent=2, ensure_ascii=False)

    async def send(self, delivery: Delivery) -> None:
        values = self._values(delivery)
        message = self._message(delivery, values)
        target = self._target(delivery, values) if self._web is not None else None

        async def work() -> None:
            if self._web is not None:
                assert target is not None
                await self._send_api(self._web, delivery.event, message, target)
            else:
                assert self._hook is not None
                await self._send_webhook(self._hook, message)

        await self._attempt(work, target)

    @property
    def live(self) -> bool:
        """Digests are edited in place through the Web API; an incoming webhook cannot edit,
        so there the digest posts once, when its window closes."""
        return self._web is not None

    async def send_digest(self, delivery: Delivery, view: DigestView) -> None:
        """Post the window's message, or edit it: one message per window, kept like a task's
        (crash-safe posting included), in the channel the carrier's event goes to."""
        message = digest_slack(view)
        target = None
        if self._web is not None:
            values = context(delivery.event, self._deps.names) if self._templated else {}
            task = self._target(delivery, values)
            key = f"digest:{view.key}" + (f"@{task.channel}" if self._templated else "")
            target = dataclasses.replace(task, key=key)

        async def work() -> None:
            if self._web is None:
                assert self._hook is not None
                await self._send_webhook(self._hook, message)
                return
            assert target is not None
            ref = await self._recorded(self._web, target)
            ref = await self._show(self._web, delivery.event, ref, message, target)
            await self._deps.state.put_state(
                self.name, target.key, ref.to_json(), self._deps.clock()
            )

        await self._attempt(work, target)

    @property
    def _templated(self) -> bool:
        return isinstance(self._templates.channel, Text)

    async def _attempt(self, work: Callable[[], Awaitable[None]], target: _Target | None) -> None:
        """Run one send, bounded by the timeout, its failures classified."""
        try:
            async with asyncio.timeout(self._config.timeout):
                await work()
        except (DeliveryError, DeliveryDeferred):
            raise
        except TimeoutError:
            raise TransientDeliveryError(
                f"slack: no answer within {self._config.timeout:g}s"
            ) from None
        except SlackApiError as exc:
            channel = target.channel if target is not None else ""
            raise _api_failure(exc, channel, self._deps.clock()) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientDeliveryError(f"slack: {type(exc).__name__}: {exc}") from None
        except SlackClientError as exc:
            raise PermanentDeliveryError(f"slack: {exc}") from None

    async def _turn(self, pace_key: str) -> None:
        """Take this channel's next send slot, or give the delivery back until it is due."""
        wait = await self._deps.state.pace(pace_key, self._config.pace, self._deps.clock())
        if wait > 0:
            raise DeliveryDeferred(wait, "paced: one message per channel at a time")

    async def _send_api(
        self, web: AsyncWebClient, event: TaskEvent, message: SlackMessage, target: _Target
    ) -> None:
        state = self._deps.state
        key = target.key
        ref = await self._recorded(web, target)
        if ref is not None and ref.final and not event.final:
            # A late progress event must not turn a finished message back into "running".
            return
        if ref is None or ref.event_id != event.id:
            # (An earlier attempt of this delivery that got as far as the message but not the
            # thread reply skips straight to the reply: pacing must not loop on the edit.)
            ref = await self._show(web, event, ref, message, target)
            await state.put_state(self.name, key, ref.to_json(), self._deps.clock())
        if self._config.thread_replies:
            await self._reply(web, event, ref, target)

    async def _recorded(self, web: AsyncWebClient, target: _Target) -> SlackMessageRef | None:
        """The message kept under ``target.key``, or None: post a new one."""
        # A row that is not a reference reads as None: a new message is posted, which is
        # the most a stray row can cost (no edit of a message we cannot name).
        row = await self._deps.state.get_state(self.name, target.key)
        ref = SlackMessageRef.from_json(row)
        if ref is None and row is not None and isinstance(row.get("posting_since"), int | float):
            # An earlier attempt was posting this message when it stopped (its process was
            # killed): if Slack made the post, that message is the one.
            ref = await self._posted(web, target, row["posting_since"])
        return ref

    async def _show(
        self,
        web: AsyncWebClient,
        event: TaskEvent,
        ref: SlackMessageRef | None,
        message: SlackMessage,
        target: _Target,
    ) -> SlackMessageRef:
        """Edit the task's message to show ``event``, or post it; the new reference."""
        await self._turn(target.pace)
        if ref is not None:
            try:
                await web.chat_update(
                    channel=ref.channel, ts=ref.ts, text=message.text, blocks=message.blocks
                )
            except SlackApiError as exc:
                if exc.response.get("error") != "message_not_found":
                    raise
                ref = None  # someone deleted it: post a new one
        if ref is None:
            key = target.key
            now = self._deps.clock()
            # Slack has no idempotency key: remember that a post is under way, and tag the
            # message, so an attempt after a crash finds it rather than posting twice.
            await self._deps.state.put_state(self.name, key, {"posting_since": now}, now)
            answer = await web.chat_postMessage(
                channel=target.channel,
                text=message.text,
                blocks=message.blocks,
                unfurl_links=False,
                unfurl_media=False,
                metadata=self._metadata(key),
            )
            ref = SlackMessageRef(channel=str(answer["channel"]), ts=str(answer["ts"]))
            await self._learn_channel(target, ref.channel)
        return dataclasses.replace(ref, final=event.final, event_id=event.id)

    def _metadata(self, key: str, reply: str | None = None) -> dict[str, Any]:
        payload = {"destination": self.name, "task": key}
        if reply is not None:
            payload["reply"] = reply
        return {"event_type": METADATA_TYPE, "event_payload": payload}

    async def _channel_id(self, target: _Target) -> str | None:
        """The target channel's ID (what conversations.history takes), if known."""
        configured = target.channel
        if _CHANNEL_ID.fullmatch(configured):
            return configured
        row = await self._deps.state.get_state(self.name, target.id_key)
        if row is not None and row.get("for") == configured and isinstance(row.get("id"), str):
            return str(row["id"])
        return None

    async def _learn_channel(self, target: _Target, channel_id: str) -> None:
        if _CHANNEL_ID.fullmatch(target.channel) or (await self._channel_id(target) == channel_id):
            return
        value = {"for": target.channel, "id": channel_id}
        await self._deps.state.put_state(self.name, target.id_key, value, self._deps.clock())

    async def _posted(
        self, web: AsyncWebClient, target: _Target, since: float
    ) -> SlackMessageRef | None:
        """The task's message if an earlier attempt posted it, else None (then it is posted
        anew: what can be done without the history scope)."""
        channel = await self._channel_id(target)
        if channel is None:
            return None
        payload = self._metadata(target.key)["event_payload"]
        ts = await self._find(web, channel, since, payload)
        return SlackMessageRef(channel=channel, ts=ts) if ts is not None else None

    async def _find(
        self,
        web: AsyncWebClient,
        channel: str,
        since: float,
        payload: dict[str, Any],
        thread_ts: str | None = None,
    ) -> str | None:
        """The ts of our message tagged ``payload``, posted since ``since`` (our clock: a
        minute of slack for Slack's), or None if there is none or it cannot be looked up."""
        oldest = f"{max(0.0, since - 60):.6f}"
        try:
            if thread_ts is None:
                answer = await web.conversations_history(
                    channel=channel, oldest=oldest, include_all_metadata=True, limit=200
                )
            else:
                answer = await web.conversations_replies(
                    channel=channel,
                    ts=thread_ts,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=200,
                )
        except SlackApiError as exc:
            log.warning(
                "slack %s: cannot look for a message an interrupted attempt may have posted "
                "(%s): posting it again",
                self.name,
                exc.response.get("error"),
            )
            return None
        for message in answer.get("messages") or []:
            metadata = message.get("metadata") or {}
            if (
                metadata.get("event_type") == METADATA_TYPE
                and metadata.get("event_payload") == payload
            ):
                return str(message["ts"])
        return None

    async def _reply(
        self, web: AsyncWebClient, event: TaskEvent, ref: SlackMessageRef, target: _Target
    ) -> None:
        """The failure's details as a reply in the message's thread, once per event."""
        key = target.key
        reply = slack_thread_reply(event, self._deps.names)
        if reply is None or ref.replied == event.id:
            return
        replied = dataclasses.replace(ref, replied=event.id, replying=None, replying_since=None)
        state = self._deps.state
        if ref.replying == event.id and ref.replying_since is not None:
            # An earlier attempt was posting this reply when it stopped: posted already?
            payload = self._metadata(key, reply=event.id)["event_payload"]
            if await self._find(web, ref.channel, ref.replying_since, payload, ref.ts):
                await state.put_state(self.name, key, replied.to_json(), self._deps.clock())
                return
        await self._turn(target.pace)
        now = self._deps.clock()
        replying = dataclasses.replace(ref, replying=event.id, replying_since=now)
        await state.put_state(self.name, key, replying.to_json(), now)
        await web.chat_postMessage(
            channel=ref.channel,
            thread_ts=ref.ts,
            text=reply.text,
            blocks=reply.blocks,
            unfurl_links=False,
            unfurl_media=False,
            metadata=self._metadata(key, reply=event.id),
        )
        await state.put_state(self.name, key, replied.to_json(), self._deps.clock())

    async def _send_webhook(self, hook: AsyncWebhookClient, message: SlackMessage) -> None:
        await self._turn(self._pace_key)
        answer = await hook.send(text=message.text, blocks=message.blocks)
        if 200 <= answer.status_code < 300:
            return
        retry_after = parse_retry_after(answer.headers.get("retry-after"), self._deps.clock())
        body = (answer.body or "").strip()[:200]
        raise http_failure(answer.status_code, f"slack webhook: {body}", retry_after)


def _api_failure(exc: SlackApiError, channel: str, now: float) -> DeliveryError:
    """Classify a Web API failure: HTTP 429/5xx and Slack's "not now" errors are transient.
    The reason names the channel: one token often serves several destinations."""
    response = exc.response
    status = response.status_code
    error = str(response.get("error") or "") if isinstance(response.data, dict) else ""
    reason = f"slack: {error or f'HTTP {status}'} (channel {channel})"
    headers = {k.lower(): v for k, v in (response.headers or {}).items()}
    retry_after = parse_retry_after(_first(headers.get("retry-after")), now)
    if status == 429 or status >= 500 or error in TRANSIENT_ERRORS:
        return TransientDeliveryError(reason, retry_after=retry_after)
    if status != 200:
        return http_failure(status, reason, retry_after)
    return PermanentDeliveryError(reason)


def _first(value: Any) -> str | None:
    # aiohttp's headers may come back as a list per name.
    if isinstance(value, list):
        return str(value[0]) if value else None
    return None if value is None else str(value)
