"""The /hooks/ ASGI endpoint's pieces that need no server: paths and body reading."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message

from relay.errors import BodyTooLargeError
from relay.hooks import Disconnected, parse_path, read_body, respond


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/hooks/goapi", ("goapi", None)),
        ("/hooks/goapi/callback", ("goapi", None)),
        ("/hooks/novita/tok123", ("novita", "tok123")),
        ("/hooks/novita/tok123/callback", ("novita", "tok123")),
        ("/hooks/", None),
        ("/hooks/goapi/", None),
        ("/hooks/a/b/c", None),
        ("/hooks//x", None),
    ],
)
def test_parse_path(path: str, expected: tuple[str, str | None] | None) -> None:
    assert parse_path(path) == expected


def messages(*items: Message) -> Callable[[], Awaitable[Message]]:
    """An ASGI receive channel that hands out these messages in order."""
    queue = list(items)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


def chunk(data: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


async def test_reads_a_body_in_chunks_within_the_limit() -> None:
    got = await read_body(messages(chunk(b"ab", True), chunk(b"cd", False)), None, 4)
    assert got == b"abcd"


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    with pytest.raises(BodyTooLargeError, match="5 bytes is over the 4 byte limit"):
        await read_body(messages(), "5", 4)


async def test_undeclared_length_is_cut_while_reading() -> None:
    with pytest.raises(BodyTooLargeError):
        await read_body(messages(chunk(b"abc", True), chunk(b"de", True)), None, 4)


async def test_a_client_that_goes_away_is_noticed() -> None:
    with pytest.raises(Disconnected):
        await read_body(messages(chunk(b"ab", True), {"type": "http.disconnect"}), None, 10)


@pytest.mark.parametrize(
    "payload",
    [
        {"event_id": "evt_1", "duplicate": False, "deliveries": 2},
        # orjson refuses a lone surrogate; the answer is still JSON, never a 500.
        {"error": "bad value \ud800 here"},
    ],
)
async def test_answers_are_json_with_their_length(payload: dict[str, object]) -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await respond(send, 400, payload, [(b"retry-after", b"5")])
    start, body = sent
    assert start["status"] == 400
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
    assert dict(start["headers"])[b"retry-after"] == b"5"
    assert json.loads(body["body"]) == payload
