import pytest

from relay.bodies import parse_json
from relay.errors import PayloadError


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
