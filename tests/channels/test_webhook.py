"""The webhook channel against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from relay.channels.base import ChannelDeps, Delivery
from relay.channels.webhook import WebhookChannel
from relay.errors import DeliveryError
from relay.render.names import ProviderNames
from relay.routing.model import WebhookDestination
from relay.store.memory import MemoryStore
from tests.downstream import Downstream
from tests.events_factory import make_event

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789").decode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def channel(http: aiohttp.ClientSession, url: str, **config: object) -> WebhookChannel:
    dest = WebhookDestination.model_validate({"type": "webhook", "url": url, **config})
    return WebhookChannel(
        "billing",
        dest,
        ChannelDeps(http=http, clock=time.time, state=MemoryStore(), names=ProviderNames()),
    )


async def test_posts_a_signed_envelope_the_reference_library_accepts(
    http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    event = make_event(status="succeeded")
    await channel(http, downstream.url, secret=SECRET).send(
        Delivery("dlv_abc", "billing", 1, event)
    )
    [got] = downstream.received
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload["type"] == "task.succeeded"
    assert payload["data"]["task_id"] == event.task_id
    assert payload["data"]["outputs"][0]["url"] == "https://cdn.example/v.mp4"
    assert got.headers["webhook-id"] == "dlv_abc"
    assert got.headers["Content-Type"] == "application/json"


async def test_webhook_id_is_the_same_on_every_retry(
    http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    ch = channel(http, downstream.url, secret=SECRET)
    event = make_event()
    downstream.responses = [(503, {})]
    with pytest.raises(DeliveryError):
        await ch.send(Delivery("dlv_same", "billing", 1, event))
    await ch.send(Delivery("dlv_same", "billing", 2, event))
    assert [r.headers["webhook-id"] for r in downstream.received] == ["dlv_same", "dlv_same"]


async def test_original_body_mode_forwards_the_redacted_provider_body(
    http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    raw = {"data": {"task_id": "t1", "config": {"webhook_config": {"secret": "[redacted]"}}}}
    await channel(http, downstream.url, body="original").send(
        Delivery("dlv_1", "billing", 1, make_event(raw=raw))
    )
    assert json.loads(downstream.received[0].body) == raw
    assert "webhook-signature" not in downstream.received[0].headers


async def test_extra_headers_cannot_replace_signature_headers(
    http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    await channel(
        http, downstream.url, secret=SECRET, headers={"x-team": "gen", "webhook-id": "forged"}
    ).send(Delivery("dlv_2", "billing", 1, make_event()))
    got = downstream.received[0].headers
    assert got["x-team"] == "gen"
    assert got["webhook-id"] == "dlv_2"


# The shared "HTTP status -> retry?" table, run against this channel.
@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
        (422, False),
    ],
)
async def test_status_classification(
    http: aiohttp.ClientSession, downstream: Downstream, status: int, transient: bool
) -> None:
    downstream.responses = [(status, {})]
    with pytest.raises(DeliveryError) as info:
        await channel(http, downstream.url).send(Delivery("d", "billing", 1, make_event()))
    assert info.value.transient is transient
    assert f"HTTP {status}" in info.value.reason


async def test_retry_after_is_passed_on(
    http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    downstream.responses = [(429, {"Retry-After": "42"})]
    with pytest.raises(DeliveryError) as info:
        await channel(http, downstream.url).send(Delivery("d", "billing", 1, make_event()))
    assert info.value.transient and info.value.retry_after == 42


async def test_redirects_are_not_followed(
    http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    downstream.responses = [(302, {"Location": "http://127.0.0.1:1/elsewhere"})]
    with pytest.raises(DeliveryError) as info:
        await channel(http, downstream.url).send(Delivery("d", "billing", 1, make_event()))
    assert not info.value.transient
    assert "redirect" in info.value.reason
    assert len(downstream.received) == 1


async def test_a_slow_receiver_hits_the_deadline_as_a_transient_failure(
    http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    downstream.delay = 2
    with pytest.raises(DeliveryError) as info:
        await channel(http, downstream.url, timeout="200ms").send(
            Delivery("d", "billing", 1, make_event())
        )
    assert info.value.transient
    assert "timed out" in info.value.reason


async def test_connection_refused_is_transient(http: aiohttp.ClientSession) -> None:
    server = await Downstream().start()
    url = server.url
    await server.stop()
    with pytest.raises(DeliveryError) as info:
        await channel(http, url).send(Delivery("d", "billing", 1, make_event()))
    assert info.value.transient
    assert "connection failed" in info.value.reason
