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
        (b'{"a": 1e400}', "too large for a double"),
        # The stdlib reads lone surrogates; nothing can encode them as UTF-8 again.
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b'{"a": ["x", {"b": "\\udc00 tail"}]}', "lone surrogate"),
        (b'{"n": 123456789012345678901234567890, "a": "\\ud800"}', "lone surrogate"),
    ],
)
def test_bad_json_is_a_payload_error_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_json(body, max_depth=64)
    assert reason in info.value.reason


def test_nesting_up_to_the_limit_is_fine() -> None:
    assert parse_json(b"[" * 64 + b"]" * 64, max_depth=64) is not None


@pytest.mark.parametrize(
    ("body", "value"),
    [
        # orjson would read these as floats: the stdlib parses them, exactly.
        (b'{"n": 18446744073709551616}', {"n": 2**64}),
        (b'{"n": -9223372036854775809}', {"n": -(2**63) - 1}),
        (b'{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        # What orjson refuses and the stdlib accepts.
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),
        # Escapes, a surrogate pair among them.
        (b'{"a": "\\ud83d\\ude00", "b": "\\u00e9"}', {"a": "\U0001f600", "b": "\u00e9"}),
        # The usual case.
        (
            b'{"a": [1, 2.5, "x", null, true], "b": {"c": -0}}',
            {"a": [1, 2.5, "x", None, True], "b": {"c": 0}},
        ),
    ],
)
def test_values_are_those_of_the_stdlib_parser(body: bytes, value: object) -> None:
    parsed = parse_json(body, max_depth=64)
    assert parsed == value
    assert repr(parsed) == repr(value)  # same types too: ints stay ints
