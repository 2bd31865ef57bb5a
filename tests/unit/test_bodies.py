from collections.abc import AsyncIterator

import pytest

from relay.bodies import parse_json, read_limited
from relay.errors import BodyTooLargeError, PayloadError


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_reads_a_body_within_the_limit() -> None:
    assert await read_limited(_chunks(b"ab", b"cd"), None, 4) == b"abcd"


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("must not read")
        yield b""

    with pytest.raises(BodyTooLargeError):
        await read_limited(never(), "5", 4)


async def test_undeclared_length_is_cut_while_reading() -> None:
    with pytest.raises(BodyTooLargeError):
        await read_limited(_chunks(b"abc", b"de"), None, 4)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"{", "invalid JSON"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b'{"a": NaN}', "NaN"),
        (b"[" * 100 + b"]" * 100, "nested deeper"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    ],
)
def test_bad_json_is_a_payload_error_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_json(body, max_depth=64)
    assert reason in info.value.reason


def test_nesting_up_to_the_limit_is_fine() -> None:
    assert parse_json(b"[" * 64 + b"]" * 64, max_depth=64) is not None
