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
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from relay.channels.base import ChannelDeps, Delivery, http_failure, parse_retry_after
from relay.errors import (
    DeliveryDeferred,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from relay.events import TaskEvent
from relay.render.slack import SlackMessage, slack_message, slack_thread_reply
from relay.routing.model import SlackDestination
from relay.store.base import SlackMessageRef

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


def message_key(event: TaskEvent) -> str:
    """Where a task's message reference is kept (per destination)."""
    return SlackMessageRef.key(event)


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

    def render(self, delivery: Delivery) -> str:
        message = slack_message(delivery.event, self._deps.names, delivery.mentions)
        where = self._config.channel if self._web is not None else "incoming webhook"
        payload = {"channel": where, "text": message.text, "blocks": message.blocks}
        return "Slack " + json.dumps(payload, indent=2, ensure_ascii=False)

    async def send(self, delivery: Delivery) -> None:
        try:
            async with asyncio.timeout(self._config.timeout):
                if self._web is not None:
                    await self._send_api(self._web, delivery.event, delivery.mentions)
                else:
                    assert self._hook is not None
                    await self._send_webhook(self._hook, delivery.event, delivery.mentions)
        except (DeliveryError, DeliveryDeferred):
            raise
        except TimeoutError:
            raise TransientDeliveryError(
                f"slack: no answer within {self._config.timeout:g}s"
            ) from None
        except SlackApiError as exc:
            raise _api_failure(exc, self._config.channel or "", self._deps.clock()) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientDeliveryError(f"slack: {type(exc).__name__}: {exc}") from None
        except SlackClientError as exc:
            raise PermanentDeliveryError(f"slack: {exc}") from None

    async def _turn(self) -> None:
        """Take this channel's next send slot, or give the delivery back until it is due."""
        wait = await self._deps.state.pace(self._pace_key, self._config.pace, self._deps.clock())
        if wait > 0:
            raise DeliveryDeferred(wait, "paced: one message per channel at a time")

    async def _send_api(
        self, web: AsyncWebClient, event: TaskEvent, mentions: tuple[str, ...] = ()
    ) -> None:
        state = self._deps.state
        key = message_key(event)
        # A row that is not a reference reads as None: a new message is posted, which is
        # the most a stray row can cost (no edit of a message we cannot name).
        row = await state.get_state(self.name, key)
        ref = SlackMessageRef.from_json(row)
        if ref is None and row is not None and isinstance(row.get("posting_since"), int | float):
            # An earlier attempt was posting this task's message when it stopped (its process
            # was killed): if Slack made the post, that message is the task's.
            ref = await self._posted(web, key, row["posting_since"])
        if ref is not None and ref.final and not event.final:
            # A late progress event must not turn a finished message back into "running".
            return
        if ref is None or ref.event_id != event.id:
            # (An earlier attempt of this delivery that got as far as the message but not the
            # thread reply skips straight to the reply: pacing must not loop on the edit.)
            ref = await self._show(web, event, ref, mentions)
            await state.put_state(self.name, key, ref.to_json(), self._deps.clock())
        if self._config.thread_replies:
            await self._reply(web, event, ref, key)

    async def _show(
        self,
        web: AsyncWebClient,
        event: TaskEvent,
        ref: SlackMessageRef | None,
        mentions: tuple[str, ...] = (),
    ) -> SlackMessageRef:
        """Edit the task's message to show ``event``, or post it; the new reference."""
        message = slack_message(event, self._deps.names, mentions)
        await self._turn()
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
            key = message_key(event)
            now = self._deps.clock()
            # Slack has no idempotency key: remember that a post is under way, and tag the
            # message, so an attempt after a crash finds it rather than posting twice.
            await self._deps.state.put_state(self.name, key, {"posting_since": now}, now)
            answer = await web.chat_postMessage(
                channel=self._config.channel or "",
                text=message.text,
                blocks=message.blocks,
                unfurl_links=False,
                unfurl_media=False,
                metadata=self._metadata(key),
            )
            ref = SlackMessageRef(channel=str(answer["channel"]), ts=str(answer["ts"]))
            await self._learn_channel(ref.channel)
        return dataclasses.replace(ref, final=event.final, event_id=event.id)

    def _metadata(self, key: str, reply: str | None = None) -> dict[str, Any]:
        payload = {"destination": self.name, "task": key}
        if reply is not None:
            payload["reply"] = reply
        return {"event_type": METADATA_TYPE, "event_payload": payload}

    async def _channel_id(self) -> str | None:
        """The configured channel's ID (what conversations.history takes), if known."""
        configured = self._config.channel or ""
        if _CHANNEL_ID.fullmatch(configured):
            return configured
        row = await self._deps.state.get_state(self.name, "channel-id")
        if row is not None and row.get("for") == configured and isinstance(row.get("id"), str):
            return str(row["id"])
        return None

    async def _learn_channel(self, channel_id: str) -> None:
        if _CHANNEL_ID.fullmatch(self._config.channel or "") or (
            await self._channel_id() == channel_id
        ):
            return
        value = {"for": self._config.channel or "", "id": channel_id}
        await self._deps.state.put_state(self.name, "channel-id", value, self._deps.clock())

    async def _posted(self, web: AsyncWebClient, key: str, since: float) -> SlackMessageRef | None:
        """The task's message if an earlier attempt posted it, else None (then it is posted
        anew: what can be done without the history scope)."""
        channel = await self._channel_id()
        if channel is None:
            return None
        ts = await self._find(web, channel, since, self._metadata(key)["event_payload"])
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
        self, web: AsyncWebClient, event: TaskEvent, ref: SlackMessageRef, key: str
    ) -> None:
        """The failure's details as a reply in the message's thread, once per event."""
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
        await self._turn()
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

    async def _send_webhook(
        self, hook: AsyncWebhookClient, event: TaskEvent, mentions: tuple[str, ...] = ()
    ) -> None:
        message: SlackMessage = slack_message(event, self._deps.names, mentions)
        await self._turn()
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
