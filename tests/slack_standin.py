"""A local HTTP stand-in for Slack's Web API and for Slack incoming webhooks.

Tests point the real ``slack_sdk`` clients at it::

    AsyncWebClient(token="xoxb-test", base_url=standin.api_url, retry_handlers=[])
    AsyncWebhookClient(standin.webhook_url("default"))

Web API (``/api/<method>``; chat.postMessage, chat.update, chat.postEphemeral, auth.test):
Slack's conventions are kept: errors are HTTP 200 with ``{"ok": false, "error": ...}``, except
rate limiting (HTTP 429, ``Retry-After``, ``{"ok": false, "error": "ratelimited"}``). Bodies may be
JSON (what slack_sdk sends for chat.*), form-encoded (``blocks`` then is a JSON string) or
multipart; query parameters are merged under the body (slack_sdk sends auth.test's arguments that
way). The token comes from ``Authorization: Bearer``; a form body or the query may carry ``token``
instead, a JSON body may not (Slack answers ``not_authed`` there, as it documents).

Choices where Slack's documentation is silent or vague, taken from its observed behaviour:

* ``thread_ts`` that looks like a ts but names no message: ``ok`` and the reply is stored as an
  orphan (Slack accepts it and the reply shows up nowhere, python-slack-sdk issue #840: a float
  ``thread_ts`` losing its trailing zero does exactly that). It is not in ``messages()``; it is in
  ``replies(channel, that_ts)``. A ``thread_ts`` that is not ``digits.digits`` -> invalid_thread_ts.
* ``thread_ts`` naming a reply: the reply joins its parent's thread.
* chat.update needs a channel *ID* (a name such as ``#renders`` -> channel_not_found); omitting
  ``blocks`` keeps the old blocks and ``blocks=[]`` removes them (chat.update's documented rule);
  omitting ``text`` keeps the old text.
* Blocks are stored exactly as sent (Slack would add a ``block_id`` to blocks without one).

Incoming webhooks (``/services/T000/B000/<name>``): 200 ``ok`` (text/html) on success, otherwise
the documented status and short text body: 400 invalid_payload / no_text / invalid_blocks /
msg_too_long, 403 invalid_token (revoked hook) / action_prohibited, 404 no_service (unknown or
removed hook) / channel_not_found (the hook's channel was deleted), 410 channel_is_archived,
429 rate_limited with ``Retry-After``, 500 rollup_error.

Faults are scripted with ``fail_next(method, ...)`` (``"webhook:<name>"`` for a webhook); an
optional per-channel rate limit (``rate_limit_per_channel`` posts per second, no bursts) answers
429 ``Retry-After`` to a post that comes too soon after the last accepted one in that channel
(or to that webhook).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl

from aiohttp import web

TEAM_ID = "T000"
WEBHOOK_BOT_ID = "B000"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
DEFAULT_TOKEN = "xoxb-test"
DEFAULT_CHANNELS: Mapping[str, str] = {"C0RENDERS": "renders"}

MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_HEADER_TEXT = 150
MAX_SECTION_TEXT = 3000
MAX_SECTION_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTIONS_ELEMENTS = 25
MAX_IMAGE_URL = 3000
MAX_ALT_TEXT = 2000
MAX_IMAGE_TITLE = 2000
MAX_BLOCK_ID = 255
MAX_MARKDOWN_TEXT = 12_000

_TS_RE = re.compile(r"^\d+\.\d+$")

WebhookState = Literal["active", "archived", "channel_deleted", "revoked", "prohibited"]

# Status and body a webhook answers for each non-active state.
_WEBHOOK_STATE_ERRORS: dict[str, tuple[int, str]] = {
    "archived": (410, "channel_is_archived"),
    "channel_deleted": (404, "channel_not_found"),
    "revoked": (403, "invalid_token"),
    "prohibited": (403, "action_prohibited"),
}


@dataclass
class Call:
    """One request the stand-in answered (Web API method or ``webhook:<name>``)."""

    method: str
    headers: dict[str, str]
    params: dict[str, Any]
    status: int
    body: Any  # dict for the Web API (str when a fault set a raw body); str for webhooks
    raw_body: bytes
    at: float  # time.monotonic() when it arrived


@dataclass
class Message:
    """A message's current state (after any chat.update)."""

    channel: str
    ts: str
    text: str | None
    blocks: list[Any] | None = None
    attachments: list[Any] | None = None
    thread_ts: str | None = None
    user: str = BOT_USER_ID
    bot_id: str | None = BOT_ID
    params: dict[str, Any] = field(default_factory=dict)
    edits: int = 0

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def metadata(self) -> dict[str, Any] | None:
        """What the post's ``metadata`` held (JSON text or an object), if anything."""
        value = self.params.get("metadata")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        return value if isinstance(value, dict) else None

    def as_slack(self, *, with_metadata: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "user": self.user, "ts": self.ts}
        if with_metadata and self.metadata is not None:
            out["metadata"] = self.metadata
        if self.bot_id is not None:
            out["bot_id"] = self.bot_id
        out["team"] = TEAM_ID
        out["text"] = self.text or ""
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.attachments is not None:
            out["attachments"] = self.attachments
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        return out


@dataclass
class EphemeralMessage:
    channel: str
    user: str
    message_ts: str
    text: str | None
    blocks: list[Any] | None
    thread_ts: str | None


@dataclass
class WebhookPost:
    name: str
    payload: dict[str, Any]
    at: float


@dataclass
class Channel:
    id: str
    name: str
    archived: bool = False
    member: bool = True


@dataclass
class _Fault:
    status: int
    error: str | None
    retry_after: int | None
    body: str | None
    delay: float
    remaining: int
    slow_only: bool = False


class _Reject(Exception):
    """An API error answer: HTTP 200 ``{"ok": false, "error": ...}`` plus extras."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


def _ts_from_us(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


# ---------------------------------------------------------------- Block Kit validation


def _check_str(
    value: Any, ptr: str, errors: list[str], *, max_len: int, required: bool = True
) -> None:
    if value is None:
        if required:
            errors.append(f"missing required field [json-pointer:{ptr}]")
        return
    if not isinstance(value, str):
        errors.append(f"must be a string [json-pointer:{ptr}]")
    elif not value:
        errors.append(f"must be more than 0 characters [json-pointer:{ptr}]")
    elif len(value) > max_len:
        errors.append(f"must be less than {max_len + 1} characters [json-pointer:{ptr}]")


def _check_text_object(
    obj: Any, ptr: str, errors: list[str], *, max_len: int, plain_only: bool = False
) -> None:
    if not isinstance(obj, dict):
        errors.append(f"must provide an object [json-pointer:{ptr}]")
        return
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in allowed:
        errors.append(
            f"must be one of: {', '.join(allowed)} [json-pointer:{ptr}/type]"
            if plain_only or obj.get("type") is not None
            else f"missing required field: type [json-pointer:{ptr}/type]"
        )
    _check_str(obj.get("text"), f"{ptr}/text", errors, max_len=max_len)


def _check_image_source(obj: dict[str, Any], ptr: str, errors: list[str]) -> None:
    url = obj.get("image_url")
    if url is None and obj.get("slack_file") is None:
        errors.append(f"must provide either image_url or slack_file [json-pointer:{ptr}]")
    elif url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            errors.append(f"must be a valid http or https URL [json-pointer:{ptr}/image_url]")
        elif len(url) > MAX_IMAGE_URL:
            errors.append(
                f"must be less than {MAX_IMAGE_URL + 1} characters [json-pointer:{ptr}/image_url]"
            )
    _check_str(obj.get("alt_text"), f"{ptr}/alt_text", errors, max_len=MAX_ALT_TEXT)


def _check_elements(
    block: dict[str, Any], ptr: str, errors: list[str], *, max_items: int | None
) -> list[Any]:
    elements = block.get("elements")
    if not isinstance(elements, list):
        errors.append(f"must provide an array [json-pointer:{ptr}/elements]")
        return []
    if not elements:
        errors.append(f"must provide at least 1 item [json-pointer:{ptr}/elements]")
    if max_items is not None and len(elements) > max_items:
        errors.append(f"no more than {max_items} items allowed [json-pointer:{ptr}/elements]")
    for j, element in enumerate(elements):
        if not isinstance(element, dict) or not isinstance(element.get("type"), str):
            errors.append(f"must provide an object with a type [json-pointer:{ptr}/elements/{j}]")
    return elements


def _check_block(block: dict[str, Any], ptr: str, errors: list[str]) -> None:
    kind = block["type"]
    if kind == "header":
        _check_text_object(
            block.get("text"), f"{ptr}/text", errors, max_len=MAX_HEADER_TEXT, plain_only=True
        )
    elif kind == "section":
        text, fields = block.get("text"), block.get("fields")
        if text is None and fields is None:
            errors.append(f"must provide either text or fields [json-pointer:{ptr}]")
        if text is not None:
            _check_text_object(text, f"{ptr}/text", errors, max_len=MAX_SECTION_TEXT)
        if fields is not None:
            if not isinstance(fields, list) or not fields:
                errors.append(f"must provide a non-empty array [json-pointer:{ptr}/fields]")
            else:
                if len(fields) > MAX_SECTION_FIELDS:
                    errors.append(
                        f"no more than {MAX_SECTION_FIELDS} items allowed "
                        f"[json-pointer:{ptr}/fields]"
                    )
                for j, item in enumerate(fields):
                    _check_text_object(item, f"{ptr}/fields/{j}", errors, max_len=MAX_FIELD_TEXT)
        accessory = block.get("accessory")
        if accessory is not None and (
            not isinstance(accessory, dict) or not isinstance(accessory.get("type"), str)
        ):
            errors.append(f"must provide an object with a type [json-pointer:{ptr}/accessory]")
    elif kind == "context":
        for j, element in enumerate(
            _check_elements(block, ptr, errors, max_items=MAX_CONTEXT_ELEMENTS)
        ):
            if not isinstance(element, dict):
                continue
            eptr = f"{ptr}/elements/{j}"
            if element.get("type") == "image":
                _check_image_source(element, eptr, errors)
            elif element.get("type") in ("plain_text", "mrkdwn"):
                _check_text_object(element, eptr, errors, max_len=MAX_SECTION_TEXT)
            else:
                errors.append(f"must be one of: image, plain_text, mrkdwn [json-pointer:{eptr}]")
    elif kind == "image":
        _check_image_source(block, ptr, errors)
        if block.get("title") is not None:
            _check_text_object(
                block["title"], f"{ptr}/title", errors, max_len=MAX_IMAGE_TITLE, plain_only=True
            )
    elif kind == "actions":
        _check_elements(block, ptr, errors, max_items=MAX_ACTIONS_ELEMENTS)
    elif kind == "rich_text":
        _check_elements(block, ptr, errors, max_items=None)
    elif kind == "markdown":
        _check_str(block.get("text"), f"{ptr}/text", errors, max_len=MAX_MARKDOWN_TEXT)
    # divider, input, video, file: only the type and block_id are checked.


_KNOWN_BLOCK_TYPES = frozenset(
    {
        "header",
        "section",
        "context",
        "image",
        "divider",
        "actions",
        "rich_text",
        "markdown",
        "input",
        "video",
        "file",
    }
)


def validate_blocks(blocks: list[Any]) -> list[str]:
    """Block Kit errors for a message's ``blocks`` (empty when valid), worded like Slack's."""
    errors: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        errors.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        ptr = f"/blocks/{i}"
        if not isinstance(block, dict):
            errors.append(f"must provide an object [json-pointer:{ptr}]")
            continue
        kind = block.get("type")
        if kind not in _KNOWN_BLOCK_TYPES:
            errors.append(f"unsupported type: {kind} [json-pointer:{ptr}/type]")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            _check_str(block_id, f"{ptr}/block_id", errors, max_len=MAX_BLOCK_ID)
            if isinstance(block_id, str):
                if block_id in seen_ids:
                    errors.append(f"duplicate block_id: {block_id} [json-pointer:{ptr}/block_id]")
                seen_ids.add(block_id)
        _check_block(block, ptr, errors)
    return errors


def _decode_json_field(params: dict[str, Any], name: str, error: str) -> list[Any] | None:
    """A list-valued field given as a list or (form-encoded) as a JSON string."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Reject(error) from None
    if not isinstance(value, list):
        raise _Reject(error)
    return value


def _content(params: dict[str, Any]) -> tuple[str | None, list[Any] | None, list[Any] | None]:
    """text, blocks and attachments of a post, checked as chat.postMessage checks them."""
    text = params.get("text")
    if text is not None and not isinstance(text, str):
        text = str(text)
    blocks = _decode_json_field(params, "blocks", "invalid_blocks_format")
    attachments = _decode_json_field(params, "attachments", "invalid_attachments")
    if not text and not blocks and not attachments:
        raise _Reject("no_text")
    if text is not None and len(text) > MAX_TEXT:
        raise _Reject("msg_too_long")
    if blocks:
        errors = validate_blocks(blocks)
        if errors:
            raise _Reject(
                "invalid_blocks",
                errors=errors,
                response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
            )
    return text, blocks, attachments


# ---------------------------------------------------------------- the stand-in


class SlackStandIn:
    """Slack's Web API and incoming webhooks on 127.0.0.1, recording every call.

    ``channels`` maps channel ID to name (default ``{"C0RENDERS": "renders"}``);
    ``archived_channels`` / ``non_member_channels`` take IDs or names. ``webhooks`` names the
    active incoming webhooks; ``archived_webhooks`` are known but their channel is archived.
    ``users`` are the user IDs chat.postEphemeral may address.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        revoked_tokens: Iterable[str] = (),
        inactive_tokens: Iterable[str] = (),
        channels: Mapping[str, str] | None = None,
        archived_channels: Iterable[str] = (),
        non_member_channels: Iterable[str] = (),
        users: Iterable[str] = ("U0LEAD",),
        webhooks: Iterable[str] = ("default",),
        archived_webhooks: Iterable[str] = (),
        rate_limit_per_channel: float | None = None,
    ) -> None:
        self.tokens: set[str] = set(tokens)
        self.revoked_tokens: set[str] = set(revoked_tokens)
        self.inactive_tokens: set[str] = set(inactive_tokens)
        self.users: set[str] = set(users)
        self.rate_limit_per_channel = rate_limit_per_channel
        # Scopes the token lacks: "history" makes conversations.* answer missing_scope.
        self.missing_scopes: set[str] = set()
        self._channels: dict[str, Channel] = {}
        for cid, name in (DEFAULT_CHANNELS if channels is None else channels).items():
            self.add_channel(cid, name)
        for ch in archived_channels:
            self.set_channel_state(ch, archived=True)
        for ch in non_member_channels:
            self.set_channel_state(ch, member=False)
        self._webhooks: dict[str, WebhookState] = {}
        for name in webhooks:
            self.set_webhook(name)
        for name in archived_webhooks:
            self.set_webhook(name, "archived")

        self.calls: list[Call] = []
        self._messages: dict[tuple[str, str], Message] = {}
        self.ephemeral: list[EphemeralMessage] = []
        self._webhook_posts: list[WebhookPost] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._last_post: dict[str, float] = {}
        self._last_ts_us = 0
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> SlackStandIn:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_route("*", f"/services/{TEAM_ID}/{WEBHOOK_BOT_ID}/{{name}}", self._hook)
        app.router.add_route("*", "/services/{tail:.*}", self._unknown_hook)
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackStandIn:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """For ``AsyncWebClient(base_url=...)``; it ends with "/" as slack_sdk needs."""
        return f"{self.base_url}/api/"

    def webhook_url(self, name: str = "default") -> str:
        return f"{self.base_url}/services/{TEAM_ID}/{WEBHOOK_BOT_ID}/{name}"

    # ------------------------------------------------------------ configuration

    def add_channel(
        self, channel_id: str, name: str, *, archived: bool = False, member: bool = True
    ) -> None:
        self._channels[channel_id] = Channel(channel_id, name.lstrip("#"), archived, member)

    def set_channel_state(
        self, channel: str, *, archived: bool | None = None, member: bool | None = None
    ) -> None:
        ch = self._find_channel(channel)
        if ch is None:
            raise KeyError(f"unknown channel {channel!r}")
        if archived is not None:
            ch.archived = archived
        if member is not None:
            ch.member = member

    def set_webhook(self, name: str, state: WebhookState = "active") -> None:
        self._webhooks[name] = state

    def remove_webhook(self, name: str) -> None:
        self._webhooks.pop(name, None)

    def fail_next(
        self,
        method: str,
        *,
        error: str | None = None,
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
        body: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Make the next ``times`` calls of ``method`` (``"chat.postMessage"``,
        ``"webhook:default"``, ...) fail before any other check.

        Web API: status 200 answers ``{"ok": false, "error": error or "fatal_error"}``; other
        statuses answer the same shape with ``error`` defaulting to "ratelimited" (429, which
        always carries ``Retry-After``, default 1), "internal_error" (500) or
        "service_unavailable". Webhooks answer the bare error text, defaulting by status to
        rate_limited / rollup_error / invalid_payload / invalid_token / no_service /
        channel_is_archived. ``body`` replaces the body with that raw text (text/html), e.g. an
        HTML error page. ``delay`` holds the answer that many seconds (for client timeouts);
        with ``delay`` alone (no error, status or body) the call is then answered normally.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if status == 429 and retry_after is None:
            retry_after = 1
        slow_only = delay > 0 and status == 200 and error is None and body is None
        self._faults.setdefault(method, []).append(
            _Fault(status, error, retry_after, body, delay, times, slow_only)
        )

    def clear(self) -> None:
        """Forget recorded calls, messages and webhook posts (configuration stays)."""
        self.calls.clear()
        self._messages.clear()
        self.ephemeral.clear()
        self._webhook_posts.clear()
        self._last_post.clear()

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        blocks: list[Any] | None = None,
        thread_ts: str | None = None,
        user: str = "U0HUMAN",
        by_bot: bool = False,
    ) -> Message:
        """Put a message in a channel directly (by default a person's, which chat.update may
        not edit: cant_update_message)."""
        ch = self._find_channel(channel)
        if ch is None:
            raise KeyError(f"unknown channel {channel!r}")
        msg = Message(
            channel=ch.id,
            ts=self._next_ts(),
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            user=BOT_USER_ID if by_bot else user,
            bot_id=BOT_ID if by_bot else None,
        )
        self._messages[(ch.id, msg.ts)] = msg
        return msg

    # ------------------------------------------------------------ inspection

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def messages(self, channel: str, *, include_replies: bool = False) -> list[Message]:
        """Current messages of a channel (ID or name) in ts order: top-level ones only
        (like channel history), or with every reply and orphan too."""
        ch = self._find_channel(channel)
        cid = ch.id if ch is not None else channel
        found = [
            m
            for m in self._messages.values()
            if m.channel == cid and (include_replies or not m.is_reply)
        ]
        return sorted(found, key=lambda m: _ts_key(m.ts))

    def message(self, channel: str, ts: str) -> Message | None:
        ch = self._find_channel(channel)
        return self._messages.get((ch.id if ch is not None else channel, ts))

    def replies(self, channel: str, ts: str) -> list[Message]:
        """The replies in the thread whose parent is ``ts`` (the parent itself excluded)."""
        return [
            m
            for m in self.messages(channel, include_replies=True)
            if m.is_reply and m.thread_ts == ts
        ]

    def webhook_posts(self, name: str = "default") -> list[dict[str, Any]]:
        """Payloads a webhook accepted (200 ok), in arrival order."""
        return [p.payload for p in self._webhook_posts if p.name == name]

    # ------------------------------------------------------------ internals

    def _find_channel(self, channel: str, *, ids_only: bool = False) -> Channel | None:
        if channel in self._channels:
            return self._channels[channel]
        if ids_only:
            return None
        name = channel.removeprefix("#")
        for ch in self._channels.values():
            if ch.name == name:
                return ch
        return None

    def _next_ts(self) -> str:
        self._last_ts_us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
        return _ts_from_us(self._last_ts_us)

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining == 0:
            queue.pop(0)
        return fault

    async def _hold(self, delay: float) -> None:
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _retry_after(self, key: str) -> int | None:
        rate = self.rate_limit_per_channel
        last = self._last_post.get(key)
        if not rate or last is None:
            return None
        wait = 1.0 / rate - (time.monotonic() - last)
        return max(1, math.ceil(wait)) if wait > 0 else None

    # ------------------------------------------------------------ Web API

    async def _parse_api(
        self, request: web.Request
    ) -> tuple[dict[str, Any], bytes, str | None, str | None]:
        """(params, raw body, token, parse error)."""
        params: dict[str, Any] = dict(request.query)
        body_params: dict[str, Any] = {}
        error: str | None = None
        json_body = False
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            raw = b""
            body_params = {k: v for k, v in form.items() if isinstance(v, str)}
        else:
            raw = await request.read()
            if raw:
                ctype = request.content_type
                if ctype == "application/json":
                    json_body = True
                    try:
                        decoded = json.loads(raw)
                    except ValueError:
                        decoded = None
                    if isinstance(decoded, dict):
                        body_params = decoded
                    else:
                        error = "invalid_json"
                elif ctype == "application/x-www-form-urlencoded":
                    try:
                        body_params = dict(
                            parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=True)
                        )
                    except (UnicodeDecodeError, ValueError):
                        error = "invalid_form_data"
                elif ctype == "application/octet-stream" and "Content-Type" not in request.headers:
                    error = "missing_post_type"
                else:
                    error = "invalid_post_type"
        params.update(body_params)
        token: str | None = None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ").strip() or None
        elif not json_body:
            query_token = params.get("token")
            token = query_token if isinstance(query_token, str) and query_token else None
        return params, raw, token, error

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        arrived = time.monotonic()
        params, raw, token, parse_error = await self._parse_api(request)
        status, body, headers = await self._answer_api(method, params, token, parse_error)
        self.calls.append(Call(method, dict(request.headers), params, status, body, raw, arrived))
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html", headers=headers)
        return web.json_response(body, status=status, headers=headers)

    async def _answer_api(
        self, method: str, params: dict[str, Any], token: str | None, parse_error: str | None
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        fault = self._take_fault(method)
        if fault is not None:
            await self._hold(fault.delay)
        if fault is not None and not fault.slow_only:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            if fault.body is not None:
                return fault.status, fault.body, headers
            default = {200: "fatal_error", 429: "ratelimited", 500: "internal_error"}.get(
                fault.status, "service_unavailable"
            )
            return fault.status, {"ok": False, "error": fault.error or default}, headers
        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.update": self._update,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
        }.get(method)
        if handler is None:
            return 404, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        try:
            if parse_error is not None:
                raise _Reject(parse_error)
            if token is None:
                raise _Reject("not_authed")
            if token in self.revoked_tokens:
                raise _Reject("token_revoked")
            if token in self.inactive_tokens:
                raise _Reject("account_inactive")
            if token not in self.tokens:
                raise _Reject("invalid_auth")
            return handler(params)
        except _Reject as reject:
            return 200, {"ok": False, "error": reject.error, **reject.extra}, {}

    def _auth_test(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        return (
            200,
            {
                "ok": True,
                "url": "https://relay-standin.slack.com/",
                "team": "Relay stand-in",
                "user": "relay",
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "bot_id": BOT_ID,
                "is_enterprise_install": False,
            },
            {},
        )

    def _postable_channel(self, params: dict[str, Any], *, ids_only: bool = False) -> Channel:
        channel = params.get("channel")
        ch = self._find_channel(channel, ids_only=ids_only) if isinstance(channel, str) else None
        if ch is None:
            raise _Reject("channel_not_found")
        if ch.archived:
            raise _Reject("is_archived")
        if not ch.member:
            raise _Reject("not_in_channel")
        return ch

    def _thread_root(self, channel: str, thread_ts: Any) -> str | None:
        if thread_ts is None or thread_ts == "":
            return None
        value = str(thread_ts)
        if not _TS_RE.match(value):
            raise _Reject(
                "invalid_thread_ts",
                response_metadata={"messages": [f"[ERROR] {value} is not a valid thread_ts"]},
            )
        parent = self._messages.get((channel, value))
        if parent is not None and parent.is_reply:
            return parent.thread_ts
        return value  # the parent, or an unknown ts: Slack accepts it and the reply is orphaned

    def _rate_limited(self, key: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        wait = self._retry_after(key)
        if wait is None:
            return None
        return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(wait)}

    def _post_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        ch = self._postable_channel(params)
        limited = self._rate_limited(ch.id)
        if limited is not None:
            return limited
        text, blocks, attachments = _content(params)
        thread_ts = self._thread_root(ch.id, params.get("thread_ts"))
        msg = Message(
            channel=ch.id,
            ts=self._next_ts(),
            text=text,
            blocks=blocks,
            attachments=attachments,
            thread_ts=thread_ts,
            params=dict(params),
        )
        self._messages[(ch.id, msg.ts)] = msg
        self._last_post[ch.id] = time.monotonic()
        return 200, {"ok": True, "channel": ch.id, "ts": msg.ts, "message": msg.as_slack()}, {}

    def _post_ephemeral(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        ch = self._postable_channel(params)
        user = params.get("user")
        if not isinstance(user, str) or user not in self.users:
            raise _Reject("user_not_in_channel")
        text, blocks, _ = _content(params)
        thread_ts = self._thread_root(ch.id, params.get("thread_ts"))
        message_ts = self._next_ts()
        self.ephemeral.append(EphemeralMessage(ch.id, user, message_ts, text, blocks, thread_ts))
        return 200, {"ok": True, "message_ts": message_ts}, {}

    def _update(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        ch = self._postable_channel(params, ids_only=True)
        ts = params.get("ts")
        msg = self._messages.get((ch.id, str(ts))) if ts is not None else None
        if msg is None:
            raise _Reject("message_not_found")
        if msg.bot_id != BOT_ID:
            raise _Reject("cant_update_message")
        text, blocks, attachments = _content(params)
        if "text" in params:
            msg.text = text
        if "blocks" in params:
            msg.blocks = blocks or None
        if "attachments" in params:
            msg.attachments = attachments or None
        msg.edits += 1
        return (
            200,
            {
                "ok": True,
                "channel": ch.id,
                "ts": msg.ts,
                "text": msg.text or "",
                "message": msg.as_slack(),
            },
            {},
        )

    def _readable(self, params: dict[str, Any]) -> Channel:
        """conversations.*: by ID only, as Slack takes it; reading needs the history scope."""
        if "history" in self.missing_scopes:
            raise _Reject("missing_scope", needed="channels:history")
        channel = params.get("channel")
        ch = self._find_channel(channel, ids_only=True) if isinstance(channel, str) else None
        if ch is None:
            raise _Reject("channel_not_found")
        return ch

    def _listed(
        self, found: list[Message], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        oldest = float(params.get("oldest") or 0)
        metadata = str(params.get("include_all_metadata", "")).lower() in ("true", "1")
        limit = int(params.get("limit") or 100)
        kept = [m for m in found if float(m.ts) > oldest][:limit]
        return 200, {"ok": True, "messages": [m.as_slack(with_metadata=metadata) for m in kept]}, {}

    def _history(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        ch = self._readable(params)
        # Newest first, top-level messages only (replies are in conversations.replies).
        return self._listed(list(reversed(self.messages(ch.id))), params)

    def _replies(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        ch = self._readable(params)
        ts = str(params.get("ts") or "")
        parent = self._messages.get((ch.id, ts))
        if parent is None:
            raise _Reject("thread_not_found")
        # The parent first, then its replies, oldest first.
        return self._listed([parent, *self.replies(ch.id, ts)], params)

    # ------------------------------------------------------------ incoming webhooks

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        return await self._answer_hook(request, request.match_info["name"])

    async def _unknown_hook(self, request: web.Request) -> web.StreamResponse:
        return await self._answer_hook(request, None)

    async def _answer_hook(self, request: web.Request, name: str | None) -> web.StreamResponse:
        arrived = time.monotonic()
        raw = await request.read()
        payload: dict[str, Any] | None = None
        try:
            if request.content_type == "application/x-www-form-urlencoded":
                decoded: Any = json.loads(dict(parse_qsl(raw.decode())).get("payload", ""))
            else:
                decoded = json.loads(raw)
            payload = decoded if isinstance(decoded, dict) else None
        except (UnicodeDecodeError, ValueError):
            payload = None
        method = f"webhook:{name}" if name is not None else "webhook:"
        status, text, headers = await self._webhook_answer(name, payload, arrived)
        self.calls.append(
            Call(method, dict(request.headers), payload or {}, status, text, raw, arrived)
        )
        return web.Response(status=status, text=text, content_type="text/html", headers=headers)

    async def _webhook_answer(
        self, name: str | None, payload: dict[str, Any] | None, arrived: float
    ) -> tuple[int, str, dict[str, str]]:
        if name is not None:
            fault = self._take_fault(f"webhook:{name}")
            if fault is not None:
                await self._hold(fault.delay)
            if fault is not None and not fault.slow_only:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                default = {
                    400: "invalid_payload",
                    403: "invalid_token",
                    404: "no_service",
                    410: "channel_is_archived",
                    429: "rate_limited",
                }.get(fault.status, "rollup_error")
                text = fault.body if fault.body is not None else fault.error or default
                return fault.status, text, headers
        state = self._webhooks.get(name) if name is not None else None
        if state is None:
            return 404, "no_service", {}
        if state != "active":
            status, text = _WEBHOOK_STATE_ERRORS[state]
            return status, text, {}
        if payload is None:
            return 400, "invalid_payload", {}
        try:
            _content(payload)
        except _Reject as reject:
            if reject.error in ("invalid_blocks_format", "invalid_attachments"):
                return 400, "invalid_payload", {}
            return 400, reject.error, {}
        wait = self._retry_after(f"webhook:{name}")
        if wait is not None:
            return 429, "rate_limited", {"Retry-After": str(wait)}
        assert name is not None
        self._webhook_posts.append(WebhookPost(name, payload, arrived))
        self._last_post[f"webhook:{name}"] = time.monotonic()
        return 200, "ok", {}


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)
