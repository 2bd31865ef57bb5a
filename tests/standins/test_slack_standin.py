"""The Slack stand-in, driven by the real slack_sdk async clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.slack_standin import SlackStandIn

CHANNEL = "C0RENDERS"


@asynccontextmanager
async def web_client(
    standin: SlackStandIn, token: str | None = "xoxb-test", **kwargs: Any
) -> AsyncIterator[AsyncWebClient]:
    """A client on one shared aiohttp session, with no retry handlers so faults surface."""
    kwargs.setdefault("retry_handlers", [])
    async with aiohttp.ClientSession() as session:
        yield AsyncWebClient(token=token, base_url=standin.api_url, session=session, **kwargs)


async def api_error(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        await call
    return caught.value


def section(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}, **extra}


# ---------------------------------------------------------------- slack_sdk facts


def test_default_retry_handlers_only_retry_connection_errors() -> None:
    web = AsyncWebClient(token="xoxb-test")
    hook = AsyncWebhookClient("http://127.0.0.1:9/")
    for client in (web, hook):
        assert [type(h) for h in client.retry_handlers] == [AsyncConnectionErrorRetryHandler]


async def test_post_message_is_sent_as_json_with_bearer_token(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        await client.chat_postMessage(channel=CHANNEL, text="hi", blocks=[section("hi")])
    (call,) = slack.calls_to("chat.postMessage")
    assert call.headers["Content-Type"] == "application/json;charset=utf-8"
    assert call.headers["Authorization"] == "Bearer xoxb-test"
    assert call.params == {"channel": CHANNEL, "text": "hi", "blocks": [section("hi")]}


async def test_client_without_session_opens_and_closes_its_own(slack: SlackStandIn) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
    assert (await client.auth_test())["user_id"] == "U0BOT"
    hook = AsyncWebhookClient(slack.webhook_url())
    assert (await hook.send(text="hi")).body == "ok"


async def test_blocks_without_text_warns_in_slack_sdk(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        with pytest.warns(UserWarning, match="top-level `text` argument is missing"):
            await client.chat_postMessage(channel=CHANNEL, blocks=[section("hi")])
    assert slack.messages(CHANNEL)[0].text is None


# ---------------------------------------------------------------- chat.postMessage


async def test_post_message_returns_ts_and_stores_message(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        first = await client.chat_postMessage(channel="#renders", text="one")
        second = await client.chat_postMessage(channel="renders", text="two")
    assert first["ok"] and first["channel"] == CHANNEL
    assert first["message"]["text"] == "one" and first["message"]["ts"] == first["ts"]
    seconds, micros = first["ts"].split(".")
    assert len(micros) == 6 and abs(int(seconds) - time.time()) < 60
    assert float(second["ts"]) > float(first["ts"])
    assert [(m.ts, m.text) for m in slack.messages("#renders")] == [
        (first["ts"], "one"),
        (second["ts"], "two"),
    ]


async def test_form_encoded_post_with_blocks_as_json_string(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        resp = await client.api_call(
            "chat.postMessage",
            data={"channel": CHANNEL, "text": "t", "blocks": '[{"type": "divider"}]'},
        )
    assert slack.calls[-1].headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert slack.message(CHANNEL, resp["ts"]).blocks == [{"type": "divider"}]  # type: ignore[union-attr]


async def test_form_token_is_accepted_but_json_token_is_not(slack: SlackStandIn) -> None:
    async with web_client(slack, token=None) as client:
        ok = await client.api_call(
            "chat.postMessage", data={"token": "xoxb-test", "channel": CHANNEL, "text": "x"}
        )
        assert ok["ok"]
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                slack.api_url + "chat.postMessage",
                json={"token": "xoxb-test", "channel": CHANNEL, "text": "x"},
            ) as resp,
        ):
            assert resp.status == 200
            assert await resp.json() == {"ok": False, "error": "not_authed"}


async def test_no_text(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        err = await api_error(client.api_call("chat.postMessage", json={"channel": CHANNEL}))
        assert err.response["error"] == "no_text"
        err = await api_error(
            client.api_call("chat.postMessage", json={"channel": CHANNEL, "text": ""})
        )
        assert err.response["error"] == "no_text"
    assert slack.messages(CHANNEL) == []


async def test_msg_too_long(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        await client.chat_postMessage(channel=CHANNEL, text="x" * 40_000)
        err = await api_error(client.chat_postMessage(channel=CHANNEL, text="x" * 40_001))
    assert err.response.status_code == 200
    assert err.response.data == {"ok": False, "error": "msg_too_long"}
    assert len(slack.messages(CHANNEL)) == 1


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (
            [{"type": "divider"}] * 51,
            "[ERROR] no more than 50 items allowed [json-pointer:/blocks]",
        ),
        (
            [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
            "[ERROR] must be less than 151 characters [json-pointer:/blocks/0/text/text]",
        ),
        (
            [section("s" * 3001)],
            "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]",
        ),
        (
            [{"type": "header", "text": {"type": "mrkdwn", "text": "*h*"}}],
            "[ERROR] must be one of: plain_text [json-pointer:/blocks/0/text/type]",
        ),
        (
            [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}],
            "[ERROR] no more than 10 items allowed [json-pointer:/blocks/0/fields]",
        ),
        (
            [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}],
            "[ERROR] must be less than 2001 characters [json-pointer:/blocks/0/fields/0/text]",
        ),
        (
            [{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}],
            "[ERROR] no more than 10 items allowed [json-pointer:/blocks/0/elements]",
        ),
        (
            [{"type": "image", "image_url": "https://x.test/a.png"}],
            "[ERROR] missing required field [json-pointer:/blocks/0/alt_text]",
        ),
        (
            [{"type": "image", "image_url": "ftp://x.test/a.png", "alt_text": "a"}],
            "[ERROR] must be a valid http or https URL [json-pointer:/blocks/0/image_url]",
        ),
        (
            [{"type": "image", "image_url": "https://x.test/" + "a" * 2990, "alt_text": "a"}],
            "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/image_url]",
        ),
        (
            [section("a", block_id="b1"), section("b", block_id="b1")],
            "[ERROR] duplicate block_id: b1 [json-pointer:/blocks/1/block_id]",
        ),
        (
            [section("a", block_id="b" * 256)],
            "[ERROR] must be less than 256 characters [json-pointer:/blocks/0/block_id]",
        ),
        (
            [{"type": "carousel"}],
            "[ERROR] unsupported type: carousel [json-pointer:/blocks/0/type]",
        ),
        ([{"text": "no type"}], "[ERROR] unsupported type: None [json-pointer:/blocks/0/type]"),
    ],
)
async def test_invalid_blocks(slack: SlackStandIn, blocks: list[Any], message: str) -> None:
    async with web_client(slack) as client:
        err = await api_error(client.chat_postMessage(channel=CHANNEL, text="t", blocks=blocks))
    assert err.response["error"] == "invalid_blocks"
    assert err.response["response_metadata"]["messages"] == [message]
    assert slack.messages(CHANNEL) == []


async def test_blocks_at_their_limits_are_accepted(slack: SlackStandIn) -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "h" * 150}},
        section("s" * 3000, block_id="b" * 255),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2000}] * 10},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 10},
        {"type": "image", "image_url": "https://x.test/" + "a" * 2985, "alt_text": "a" * 2000},
        {"type": "rich_text", "elements": [{"type": "rich_text_section", "elements": []}]},
        {"type": "actions", "elements": [{"type": "button", "text": {}, "action_id": "a"}]},
    ]
    blocks += [{"type": "divider"}] * (50 - len(blocks))
    async with web_client(slack) as client:
        resp = await client.chat_postMessage(channel=CHANNEL, text="t", blocks=blocks)
    assert slack.message(CHANNEL, resp["ts"]).blocks == blocks  # type: ignore[union-attr]


async def test_blocks_that_are_not_a_list(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        err = await api_error(
            client.api_call(
                "chat.postMessage", data={"channel": CHANNEL, "text": "t", "blocks": "{nope"}
            )
        )
    assert err.response["error"] == "invalid_blocks_format"


# ---------------------------------------------------------------- channels and tokens


async def test_channel_errors() -> None:
    async with (
        SlackStandIn(
            channels={"C0RENDERS": "renders", "C0OLD": "old", "C0PRIVATE": "private"},
            archived_channels=["#old"],
            non_member_channels=["C0PRIVATE"],
        ) as standin,
        web_client(standin) as client,
    ):
        for channel, error in [
            ("C0NOPE", "channel_not_found"),
            ("#nope", "channel_not_found"),
            ("C0OLD", "is_archived"),
            ("#private", "not_in_channel"),
        ]:
            err = await api_error(client.chat_postMessage(channel=channel, text="x"))
            assert (channel, err.response["error"]) == (channel, error)
        standin.set_channel_state("C0PRIVATE", member=True)
        assert (await client.chat_postMessage(channel="C0PRIVATE", text="x"))["ok"]


async def test_token_errors() -> None:
    async with SlackStandIn(revoked_tokens=["xoxb-gone"], inactive_tokens=["xoxb-old"]) as standin:
        for token, error in [
            ("xoxb-wrong", "invalid_auth"),
            ("xoxb-gone", "token_revoked"),
            ("xoxb-old", "account_inactive"),
            (None, "not_authed"),
        ]:
            async with web_client(standin, token=token) as client:
                err = await api_error(client.chat_postMessage(channel=CHANNEL, text="x"))
                assert (token, err.response.status_code, err.response["error"]) == (
                    token,
                    200,
                    error,
                )
                err = await api_error(client.auth_test())
                assert err.response["error"] == error
        assert standin.messages(CHANNEL) == []


async def test_auth_test(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        resp = await client.auth_test()
    assert resp["team_id"] == "T000" and resp["bot_id"] == "B0BOT"


# ---------------------------------------------------------------- chat.update


async def test_update_replaces_text_and_blocks(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        posted = await client.chat_postMessage(channel="#renders", text="v1", blocks=[section("1")])
        resp = await client.chat_update(
            channel=posted["channel"], ts=posted["ts"], text="v2", blocks=[section("2")]
        )
        assert (resp["channel"], resp["ts"], resp["text"]) == (CHANNEL, posted["ts"], "v2")
        msg = slack.message(CHANNEL, posted["ts"])
        assert msg is not None and (msg.text, msg.blocks, msg.edits) == ("v2", [section("2")], 1)
        await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="v3")
        assert msg.blocks == [section("2")]  # chat.update keeps blocks it is not given
        await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="v4", blocks=[])
        updated = slack.message(CHANNEL, posted["ts"])
        assert updated is not None and (updated.text, updated.blocks) == ("v4", None)
    assert [m.text for m in slack.messages(CHANNEL)] == ["v4"]


async def test_update_errors(slack: SlackStandIn) -> None:
    slack.add_channel("C0OTHER", "other")
    async with web_client(slack) as client:
        posted = await client.chat_postMessage(channel=CHANNEL, text="v1")
        err = await api_error(client.chat_update(channel=CHANNEL, ts="1700000000.000100", text="x"))
        assert err.response["error"] == "message_not_found"
        err = await api_error(client.chat_update(channel="C0OTHER", ts=posted["ts"], text="x"))
        assert err.response["error"] == "message_not_found"
        err = await api_error(client.chat_update(channel="#renders", ts=posted["ts"], text="x"))
        assert err.response["error"] == "channel_not_found"
        err = await api_error(
            client.chat_update(channel=CHANNEL, ts=posted["ts"], text="x" * 40_001)
        )
        assert err.response["error"] == "msg_too_long"
        err = await api_error(
            client.chat_update(channel=CHANNEL, ts=posted["ts"], text="x", blocks=[section("")])
        )
        assert err.response["error"] == "invalid_blocks"
        human = slack.add_message(CHANNEL, "a person's words")
        err = await api_error(client.chat_update(channel=CHANNEL, ts=human.ts, text="x"))
        assert err.response["error"] == "cant_update_message"
    assert slack.message(CHANNEL, posted["ts"]).text == "v1"  # type: ignore[union-attr]


# ---------------------------------------------------------------- threads and ephemeral


async def test_thread_replies(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        parent = await client.chat_postMessage(channel=CHANNEL, text="parent")
        reply = await client.chat_postMessage(channel=CHANNEL, text="r1", thread_ts=parent["ts"])
        assert reply["message"]["thread_ts"] == parent["ts"]
        # a reply's ts as thread_ts lands in the parent's thread
        await client.chat_postMessage(channel=CHANNEL, text="r2", thread_ts=reply["ts"])
    assert [m.text for m in slack.messages(CHANNEL)] == ["parent"]
    assert [m.text for m in slack.replies(CHANNEL, parent["ts"])] == ["r1", "r2"]


async def test_unknown_thread_ts_is_accepted_and_orphaned(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        parent = await client.chat_postMessage(channel=CHANNEL, text="parent")
        mangled = str(float(parent["ts"]) + 1)
        orphan = await client.chat_postMessage(channel=CHANNEL, text="lost", thread_ts=mangled)
        assert orphan["ok"]
        err = await api_error(client.chat_postMessage(channel=CHANNEL, text="x", thread_ts="abc"))
        assert err.response["error"] == "invalid_thread_ts"
    assert [m.text for m in slack.messages(CHANNEL)] == ["parent"]
    assert slack.replies(CHANNEL, parent["ts"]) == []
    assert [m.text for m in slack.replies(CHANNEL, mangled)] == ["lost"]


async def test_post_ephemeral(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        resp = await client.chat_postEphemeral(channel=CHANNEL, user="U0LEAD", text="psst")
        assert resp["message_ts"]
        err = await api_error(client.chat_postEphemeral(channel=CHANNEL, user="U0NOBODY", text="x"))
        assert err.response["error"] == "user_not_in_channel"
    assert [(e.user, e.text) for e in slack.ephemeral] == [("U0LEAD", "psst")]
    assert slack.messages(CHANNEL) == []


# ---------------------------------------------------------------- faults and rate limits


async def test_scripted_429_surfaces_with_retry_after(slack: SlackStandIn) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=2)
    async with web_client(slack) as client:
        err = await api_error(client.chat_postMessage(channel=CHANNEL, text="x"))
        assert err.response.status_code == 429
        assert err.response.headers["Retry-After"] == "2"
        assert err.response["error"] == "ratelimited"
        assert (await client.chat_postMessage(channel=CHANNEL, text="x"))["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200]


async def test_default_client_does_not_retry_429(slack: SlackStandIn) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=30)
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url, session=session)
        err = await api_error(client.chat_postMessage(channel=CHANNEL, text="x"))
    assert err.response.status_code == 429
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_rate_limit_retry_handler_honours_retry_after(slack: SlackStandIn) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=0)
    async with web_client(slack, retry_handlers=[AsyncRateLimitErrorRetryHandler()]) as client:
        assert (await client.chat_postMessage(channel=CHANNEL, text="x"))["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200]
    assert len(slack.messages(CHANNEL)) == 1


async def test_scripted_errors_and_times(slack: SlackStandIn) -> None:
    slack.fail_next("chat.postMessage", status=503, times=2)
    slack.fail_next("chat.postMessage", error="fatal_error")
    slack.fail_next("chat.update", status=502, body="<html>Bad Gateway</html>")
    async with web_client(slack) as client:
        for _ in range(2):
            err = await api_error(client.chat_postMessage(channel=CHANNEL, text="x"))
            assert (err.response.status_code, err.response["error"]) == (
                503,
                "service_unavailable",
            )
        err = await api_error(client.chat_postMessage(channel=CHANNEL, text="x"))
        assert (err.response.status_code, err.response["error"]) == (200, "fatal_error")
        posted = await client.chat_postMessage(channel=CHANNEL, text="x")
        err = await api_error(client.chat_update(channel=CHANNEL, ts=posted["ts"], text="y"))
        assert err.response.status_code == 502
        assert (await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="y"))["ok"]
    assert [c.status for c in slack.calls] == [503, 503, 200, 200, 502, 200]
    assert [m.text for m in slack.messages(CHANNEL)] == ["y"]


async def test_scripted_delay_times_out_the_client(slack: SlackStandIn) -> None:
    slack.fail_next("chat.postMessage", delay=30)
    # slack_sdk applies ``timeout`` only to the sessions it creates itself; with a shared
    # ``session=`` the session's own ClientTimeout governs.
    client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url, timeout=1)
    with pytest.raises(asyncio.TimeoutError):
        await client.chat_postMessage(channel=CHANNEL, text="x")


async def test_delay_alone_answers_normally_afterwards(slack: SlackStandIn) -> None:
    slack.fail_next("chat.postMessage", delay=0.2)
    async with web_client(slack) as client:
        started = time.monotonic()
        assert (await client.chat_postMessage(channel=CHANNEL, text="x"))["ok"]
    assert time.monotonic() - started >= 0.2
    assert len(slack.messages(CHANNEL)) == 1


async def test_automatic_per_channel_rate_limit() -> None:
    channels = {"C0RENDERS": "renders", "C0OTHER": "other"}
    async with SlackStandIn(channels=channels, rate_limit_per_channel=1.0) as standin:
        async with web_client(standin) as client:
            await client.chat_postMessage(channel=CHANNEL, text="1")
            err = await api_error(client.chat_postMessage(channel=CHANNEL, text="2"))
            assert (err.response.status_code, err.response.headers["Retry-After"]) == (429, "1")
            assert err.response["error"] == "ratelimited"
            await client.chat_postMessage(channel="C0OTHER", text="elsewhere")
            standin._last_post[CHANNEL] -= 1.0  # as if a second had passed
            await client.chat_postMessage(channel=CHANNEL, text="3")
        assert [m.text for m in standin.messages(CHANNEL)] == ["1", "3"]


async def test_calls_are_recorded(slack: SlackStandIn) -> None:
    async with web_client(slack) as client:
        await client.chat_postMessage(channel=CHANNEL, text="x")
        await api_error(client.chat_postMessage(channel="C0NOPE", text="x"))
    ok, bad = slack.calls_to("chat.postMessage")
    assert (ok.status, ok.body["ok"], ok.params["channel"]) == (200, True, CHANNEL)
    assert bad.body == {"ok": False, "error": "channel_not_found"}
    assert slack.calls_to("chat.update") == []


# ---------------------------------------------------------------- incoming webhooks


async def test_webhook_success(slack: SlackStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        hook = AsyncWebhookClient(slack.webhook_url(), session=session, retry_handlers=[])
        resp = await hook.send(text="hello", blocks=[section("hello")])
    assert (resp.status_code, resp.body) == (200, "ok")
    assert resp.headers["Content-Type"].startswith("text/html")
    assert slack.webhook_posts() == [{"text": "hello", "blocks": [section("hello")]}]
    assert slack.calls_to("webhook:default")[0].status == 200


async def test_webhook_errors() -> None:
    async with SlackStandIn(webhooks=["ops"], archived_webhooks=["old"]) as standin:
        standin.set_webhook("gone", "channel_deleted")
        standin.set_webhook("revoked", "revoked")
        standin.set_webhook("locked", "prohibited")
        async with aiohttp.ClientSession() as session:

            async def send(name: str, **body: Any) -> tuple[int, str]:
                hook = AsyncWebhookClient(standin.webhook_url(name), session=session)
                resp = await hook.send_dict(body)
                return resp.status_code, resp.body

            assert await send("nope", text="x") == (404, "no_service")
            assert await send("gone", text="x") == (404, "channel_not_found")
            assert await send("old", text="x") == (410, "channel_is_archived")
            assert await send("revoked", text="x") == (403, "invalid_token")
            assert await send("locked", text="x") == (403, "action_prohibited")
            assert await send("ops", text="") == (400, "no_text")
            assert await send("ops") == (400, "invalid_payload")  # slack_sdk sends null
            assert await send("ops", text="x", blocks=[section("s" * 3001)]) == (
                400,
                "invalid_blocks",
            )
            assert await send("ops", text="x" * 40_001) == (400, "msg_too_long")
            async with session.post(
                standin.webhook_url("ops"),
                data=b"{not json",
                headers={"Content-Type": "application/json"},
            ) as raw:
                assert (raw.status, await raw.text()) == (400, "invalid_payload")
            async with session.post(
                standin.base_url + "/services/T999/B999/x", json={"text": "x"}
            ) as raw:
                assert (raw.status, await raw.text()) == (404, "no_service")
            assert await send("ops", text="fine") == (200, "ok")
        assert standin.webhook_posts("ops") == [{"text": "fine"}]


async def test_webhook_form_payload(slack: SlackStandIn) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(slack.webhook_url(), data={"payload": '{"text": "x"}'}) as resp,
    ):
        assert (resp.status, await resp.text()) == (200, "ok")
    assert slack.webhook_posts() == [{"text": "x"}]


async def test_webhook_scripted_faults(slack: SlackStandIn) -> None:
    slack.fail_next("webhook:default", status=429, retry_after=3)
    slack.fail_next("webhook:default", status=500)
    hook = AsyncWebhookClient(slack.webhook_url(), retry_handlers=[])
    resp = await hook.send(text="x")
    assert (resp.status_code, resp.body, resp.headers["Retry-After"]) == (429, "rate_limited", "3")
    resp = await hook.send(text="x")
    assert (resp.status_code, resp.body) == (500, "rollup_error")
    resp = await hook.send(text="x")
    assert (resp.status_code, resp.body) == (200, "ok")
    assert len(slack.webhook_posts()) == 1


async def test_webhook_rate_limit_retry_handler(slack: SlackStandIn) -> None:
    slack.fail_next("webhook:default", status=429, retry_after=0)
    hook = AsyncWebhookClient(
        slack.webhook_url(), retry_handlers=[AsyncRateLimitErrorRetryHandler()]
    )
    assert (await hook.send(text="x")).status_code == 200
    assert [c.status for c in slack.calls_to("webhook:default")] == [429, 200]


async def test_webhook_automatic_rate_limit() -> None:
    async with SlackStandIn(rate_limit_per_channel=1.0) as standin:
        hook = AsyncWebhookClient(standin.webhook_url())
        assert (await hook.send(text="1")).status_code == 200
        resp = await hook.send(text="2")
        assert (resp.status_code, resp.body, resp.headers["Retry-After"]) == (
            429,
            "rate_limited",
            "1",
        )
        assert standin.webhook_posts() == [{"text": "1"}]
