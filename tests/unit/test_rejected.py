"""The refused-request log (relay.rejected): what it keeps, how it bounds itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import cast

from relay.errors import StoreUnavailableError
from relay.redaction import Secrets
from relay.rejected import EXCERPT_CHARS, RejectedLog, excerpt, rejected_json
from relay.store.base import RejectedRequest, Store
from relay.store.memory import MemoryStore

T0 = 1_700_000_000.0
SECRET = "configured-secret-123"


def test_a_json_body_is_redacted_by_key_and_by_known_secret() -> None:
    body = json.dumps(
        {"task_id": "t1", "token": "abc", "nested": {"api_key": 7}, "echo": f"url?{SECRET}"}
    ).encode()
    shown = json.loads(excerpt(body, len(body), (SECRET,)))
    assert shown == {
        "task_id": "t1",
        "token": "[redacted]",
        "nested": {"api_key": "[redacted]"},
        "echo": "url?[redacted]",
    }


def test_a_text_body_has_its_controls_escaped_and_its_form_secrets_redacted() -> None:
    body = b"a=1&password=hunter22&x=\x1b[31mred\r\nnext\x00"
    assert excerpt(body, len(body)) == "a=1&password=[redacted]&x=\\x1b[31mred\\r\\nnext\\x00"


def test_a_long_body_is_cut_with_its_size_and_redacted_as_text() -> None:
    head = '{"prompt": "' + "x" * 50 + '", "token": "leaky", "secret": "cut-sho'
    body = (head + "y" * 10_000).encode()
    kept = body[:4000]  # what the buffer keeps of it
    shown = excerpt(kept, len(body))
    assert shown.endswith(f"… ({len(body)} bytes)")
    assert len(shown) <= EXCERPT_CHARS + 40
    assert '"token": "[redacted]"' in shown and "leaky" not in shown
    assert '"secret": "[redacted]"' in shown  # its string is not closed within the excerpt
    assert "cut-sho" not in shown


def test_the_start_of_a_secret_cut_off_at_the_end_is_not_shown() -> None:
    body = ("z" * 100 + SECRET).encode()
    kept = body[:110]  # ends with the first 10 characters of the secret
    shown = excerpt(kept, len(body), (SECRET,))
    assert SECRET[:10] not in shown and SECRET[:4] not in shown
    assert shown.startswith("z" * 100)


def test_an_empty_body_is_an_empty_excerpt() -> None:
    assert excerpt(b"", 0) == ""


async def opened() -> MemoryStore:
    store = MemoryStore()
    await store.open()
    return store


def clock() -> float:
    return T0


async def test_a_note_is_kept_with_its_token_masked_and_secrets_redacted() -> None:
    store = await opened()
    log = RejectedLog(store, keep=10, secrets=Secrets([SECRET]), clock=clock)
    log.note(
        "novita",
        "10.0.0.1",
        f"/hooks/novita/{SECRET}/callback",
        401,
        f"token does not match {SECRET}",
        b'{"id": "t1"}',
    )
    log.note("(unknown)", None, "/hooks/scan/guess-token", 404, "unknown source 'scan'")
    assert await log.flush() == 2
    newest, oldest = await store.list_rejected()
    assert oldest == RejectedRequest(
        source="novita",
        received_at=T0,
        client_ip="10.0.0.1",
        path="/hooks/novita/****/callback",
        status=401,
        reason="token does not match [redacted]",
        excerpt='{"id":"t1"}',
    )
    assert newest.path == "/hooks/scan/****" and newest.excerpt == ""
    assert rejected_json(oldest) == {
        "received_at": "2023-11-14T22:13:20.000Z",
        "source": "novita",
        "client_ip": "10.0.0.1",
        "path": "/hooks/novita/****/callback",
        "status": 401,
        "reason": "token does not match [redacted]",
        "excerpt": '{"id":"t1"}',
    }


async def test_a_full_buffer_drops_and_counts_and_the_store_keeps_keep_per_source() -> None:
    store = await opened()
    log = RejectedLog(store, keep=3, clock=clock, capacity=5)
    for n in range(8):
        log.note("(unknown)", "10.0.0.9", f"/hooks/x{n}", 404, "unknown source")
    assert log.waiting == 5 and log.dropped == 3
    await log.flush()
    # Only the newest ``keep`` of the source were written.
    assert [r.path for r in await store.list_rejected()] == ["/hooks/x4", "/hooks/x3", "/hooks/x2"]
    for n in range(5):
        log.note("s", None, f"/hooks/s{n}", 400, "bad")
    await log.flush()
    assert len(await store.list_rejected("s")) == 3
    assert len(await store.list_rejected("(unknown)")) == 3


async def test_keep_zero_keeps_nothing() -> None:
    store = await opened()
    log = RejectedLog(store, keep=0, clock=clock)
    log.note("s", None, "/hooks/s", 400, "bad")
    assert log.waiting == 0 and log.dropped == 0
    assert await log.flush() == 0
    assert await store.list_rejected() == []


class _DownStore:
    """A store whose database is unreachable."""

    async def record_rejected(self, requests: Sequence[RejectedRequest], keep: int) -> None:
        raise StoreUnavailableError("store: down")


async def test_a_store_that_fails_loses_the_batch_and_counts_it() -> None:
    log = RejectedLog(cast(Store, _DownStore()), keep=3, clock=clock)
    log.note("s", None, "/hooks/s", 400, "bad")
    log.note("s", None, "/hooks/s", 400, "bad")
    assert await log.flush() == 0
    assert log.dropped == 2 and log.waiting == 0


async def test_the_service_writes_notes_as_they_come_and_what_is_left_at_stop() -> None:
    store = await opened()
    log = RejectedLog(store, keep=10, clock=clock, flush_every=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(log.run(stop))
    log.note("s", None, "/hooks/s", 400, "first")
    async with asyncio.timeout(5):
        while True:
            if await store.list_rejected():
                break
            await asyncio.sleep(0.01)
    stop.set()
    log.note("s", None, "/hooks/s", 400, "last")
    async with asyncio.timeout(5):
        await task
    assert [r.reason for r in await store.list_rejected()] == ["last", "first"]


def test_the_cli_json_is_what_the_admin_api_answers() -> None:
    from relay.admin.schemas import Rejected

    row = RejectedRequest("s", T0, None, "/hooks/s/****", 401, "token does not match", "{}")
    assert rejected_json(row) == Rejected.of(row).model_dump(mode="json")
