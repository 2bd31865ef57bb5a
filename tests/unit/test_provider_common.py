"""The helpers shared by provider adapters."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.providers.common import (
    REDACTED,
    get_dict,
    get_float,
    get_int,
    get_list,
    get_str,
    is_sensitive_key,
    kind_from_url,
    parse_time,
    redact,
    s3_expiry,
    secrets_equal,
)

# -- secrets_equal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "given", "equal"),
    [
        ("abc", "abc", True),
        ("abc", "abd", False),
        ("abc", "ab", False),
        ("abc", "", False),
        ("abc", None, False),
        ("clé", "clé", True),
        ("abc", "\udcff", False),
    ],
)
def test_secrets_equal(expected: str, given: str | None, equal: bool) -> None:
    assert secrets_equal(expected, given) is equal


# -- parse_time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("2025-06-30T07:11:30.719851187Z", datetime(2025, 6, 30, 7, 11, 30, 719851, tzinfo=UTC)),
        ("2025-06-30T07:11:30.7Z", datetime(2025, 6, 30, 7, 11, 30, 700000, tzinfo=UTC)),
        ("2025-06-30T07:11:30Z", datetime(2025, 6, 30, 7, 11, 30, tzinfo=UTC)),
        ("2024-08-24T23:01:12.3556324+08:00", datetime(2024, 8, 24, 15, 1, 12, 355632, tzinfo=UTC)),
        ("2024-08-24T10:00:00-05:30", datetime(2024, 8, 24, 15, 30, tzinfo=UTC)),
        ("2025-12-09 10:54:16", datetime(2025, 12, 9, 10, 54, 16, tzinfo=UTC)),
        ("2025-12-09T10:54:16", datetime(2025, 12, 9, 10, 54, 16, tzinfo=UTC)),
        (1735033210, datetime(2024, 12, 24, 9, 40, 10, tzinfo=UTC)),
        (1735033210.5, datetime(2024, 12, 24, 9, 40, 10, 500000, tzinfo=UTC)),
        ("1735033210", datetime(2024, 12, 24, 9, 40, 10, tzinfo=UTC)),
        (" 1735033210 ", datetime(2024, 12, 24, 9, 40, 10, tzinfo=UTC)),
        (1735033210123, datetime(2024, 12, 24, 9, 40, 10, 123000, tzinfo=UTC)),
        ("1735033210123", datetime(2024, 12, 24, 9, 40, 10, 123000, tzinfo=UTC)),
        (datetime(2025, 1, 1), datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_time(value: Any, want: datetime) -> None:
    got = parse_time(value)
    assert got == want
    assert got is not None
    assert got.tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+08:00",
        "0001-01-01 00:00:00",
        "",
        "   ",
        None,
        0,
        0.0,
        "0",
        -5,
        "-5",
        True,
        False,
        "yesterday",
        "2025-13-45T00:00:00Z",
        float("nan"),
        float("inf"),
        10**400,
        "9" * 400,
        [2025],
        {"t": 1},
    ],
)
def test_parse_time_gives_none(value: Any) -> None:
    assert parse_time(value) is None


@settings(max_examples=300)
@given(value=st.text() | st.integers() | st.floats() | st.none() | st.datetimes())
def test_parse_time_never_raises(value: Any) -> None:
    result = parse_time(value)
    assert result is None or result.utcoffset() == timedelta(0)


@given(moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1)))
def test_parse_time_round_trips_iso(moment: datetime) -> None:
    aware = moment.replace(tzinfo=UTC)
    assert parse_time(aware.isoformat()) == aware
    assert parse_time(aware.astimezone(timezone(timedelta(hours=-7))).isoformat()) == aware


# -- s3_expiry -----------------------------------------------------------------------------------

PRESIGNED = (
    "https://bucket.s3.us-east-1.amazonaws.com/a/b.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA%2F20240603%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20240603T155041Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=deadbeef"
)


def test_s3_expiry() -> None:
    assert s3_expiry(PRESIGNED) == datetime(2024, 6, 3, 16, 50, 41, tzinfo=UTC)


def test_s3_expiry_names_are_case_insensitive() -> None:
    url = "https://x/y.png?x-amz-date=20240603T155041Z&x-amz-expires=60"
    assert s3_expiry(url) == datetime(2024, 6, 3, 15, 51, 41, tzinfo=UTC)


@pytest.mark.parametrize(
    "url",
    [
        "https://x/y.png",
        "https://x/y.png?X-Amz-Date=20240603T155041Z",
        "https://x/y.png?X-Amz-Expires=3600",
        "https://x/y.png?X-Amz-Date=2024-06-03&X-Amz-Expires=3600",
        "https://x/y.png?X-Amz-Date=20240603T155041Z&X-Amz-Expires=-1",
        "https://x/y.png?X-Amz-Date=20240603T155041Z&X-Amz-Expires=soon",
        "https://x/y.png?X-Amz-Date=20240603T155041Z&X-Amz-Expires=" + "9" * 50,
        "https://x/y.png?X-Amz-Date=99991231T235959Z&X-Amz-Expires=604800",
        "http://[::1/y.png?X-Amz-Date=20240603T155041Z&X-Amz-Expires=1",
        "",
        None,
        42,
    ],
)
def test_s3_expiry_gives_none(url: Any) -> None:
    assert s3_expiry(url) is None


@given(url=st.text())
def test_s3_expiry_never_raises(url: str) -> None:
    s3_expiry(url)
    s3_expiry("https://x/y?X-Amz-Date=20240603T155041Z&X-Amz-Expires=" + url)


# -- kind_from_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://x/a.PNG", "image"),
        ("https://x/a.jpeg?X-Amz-Expires=5", "image"),
        ("https://x/a.heic#frag", "image"),
        ("https://x/a.mp4", "video"),
        ("https://x/a.M4V?sig=a.png", "video"),
        ("https://x/a.opus", "audio"),
        ("https://x/a.flac", "audio"),
        ("https://x/a.glb", "model3d"),
        ("https://x/a.usdz", "model3d"),
        ("https://x/a.srt", "file"),
        ("https://x/a.json", "file"),
        ("https://x/a.zip", "file"),
        ("https://x/noextension", "file"),
        ("https://x.png/", "file"),
        ("https://x/a.png/", "file"),
        ("", "file"),
        (None, "file"),
    ],
)
def test_kind_from_url(url: Any, kind: str) -> None:
    assert kind_from_url(url) == kind


# -- redact --------------------------------------------------------------------------------------


def test_redact_goapi_echoed_secret() -> None:
    payload = {
        "data": {
            "config": {"webhook_config": {"endpoint": "https://e", "secret": "s3cr3t"}},
            "input": {"prompt": "keep me"},
        }
    }
    original = copy.deepcopy(payload)
    out = redact(payload)
    assert out["data"]["config"]["webhook_config"] == {"endpoint": "https://e", "secret": REDACTED}
    assert out["data"]["input"] == {"prompt": "keep me"}
    assert payload == original


@pytest.mark.parametrize(
    "key",
    [
        "secret",
        "Webhook_Secret",
        "api_key",
        "APIKEY",
        "x-api-key",
        "X_API_KEY",
        "Authorization",
        "password",
        "token",
        "access_token",
        "x-webhook-secret",
    ],
)
def test_redact_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)
    assert redact({key: "value"}) == {key: REDACTED}
    assert redact([{"n": {key: 12345}}]) == [{"n": {key: REDACTED}}]


@pytest.mark.parametrize("key", ["secrets", "tokens", "prompt", "task_id", "key", 3])
def test_redact_leaves_other_keys(key: Any) -> None:
    assert not is_sensitive_key(key)
    assert redact({key: "value"}) == {key: "value"}


def test_redact_keeps_empty_and_null_values() -> None:
    payload = {"secret": "", "token": None, "password": False, "api_key": {"a": "b"}}
    assert redact(payload) == payload


def test_redact_list_under_sensitive_key() -> None:
    assert redact({"secret": ["a", "", ["b"]]}) == {"secret": [REDACTED, "", [REDACTED]]}


def test_redact_returns_a_copy() -> None:
    payload: dict[str, Any] = {"a": [1, {"b": 2}]}
    out = redact(payload)
    assert out == payload
    assert out is not payload
    assert out["a"] is not payload["a"]
    assert out["a"][1] is not payload["a"][1]


def test_redact_is_depth_safe() -> None:
    deep: Any = {"secret": "x"}
    for _ in range(50_000):
        deep = {"n": [deep]}
    out = redact(deep)
    for _ in range(50_000):
        out = out["n"][0]
    assert out == {"secret": REDACTED}


@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(st.text(max_size=8).filter(lambda k: not is_sensitive_key(k)), c)
        ),
    )
)
def test_redact_without_sensitive_keys_is_identity(value: Any) -> None:
    assert redact(value) == value


# -- getters -------------------------------------------------------------------------------------


def test_get_dict_and_list() -> None:
    obj = {"d": {"a": 1}, "l": [1], "s": "x"}
    assert get_dict(obj, "d") == {"a": 1}
    assert get_dict(obj, "l") is None
    assert get_dict(obj, "missing") is None
    assert get_dict(["d"], "d") is None
    assert get_dict(None, "d") is None
    assert get_list(obj, "l") == [1]
    assert get_list(obj, "d") is None
    assert get_list("l", "l") is None


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("x", "x"),
        ("  x \n", "x"),
        ("", None),
        ("   ", None),
        (1, None),
        (None, None),
        (["x"], None),
    ],
)
def test_get_str(value: Any, want: str | None) -> None:
    assert get_str({"k": value}, "k") == want


@pytest.mark.parametrize(
    ("value", "as_int", "as_float"),
    [
        (3, 3, 3.0),
        (3.0, 3, 3.0),
        (3.5, None, 3.5),
        ("42", 42, 42.0),
        (" -7 ", -7, -7.0),
        ("1.25", None, 1.25),
        ("1e3", None, None),
        ("nan", None, None),
        (float("nan"), None, None),
        (float("inf"), None, None),
        (True, None, None),
        (None, None, None),
        ("", None, None),
        ([1], None, None),
        (10**400, None, None),
    ],
)
def test_get_int_and_float(value: Any, as_int: int | None, as_float: float | None) -> None:
    assert get_int({"k": value}, "k") == as_int
    assert get_float({"k": value}, "k") == as_float
    assert get_int("not a dict", "k") is None
    assert get_float(None, "k") is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["secret", "Token", "X-Api-Key", "name", "url", "data"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@given(_json)
def test_redact_in_place_agrees_with_the_copying_redact(value: object) -> None:
    import copy

    from relay.providers.common import redact, redact_in_place

    expected = redact(value)
    mine = copy.deepcopy(value)
    assert redact_in_place(mine) == expected
    assert mine == expected
