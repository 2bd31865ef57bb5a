from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from relay.routing.durations import Duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m30s500ms", 90.5),
        ("1.5h", 5400.0),
        ("300", 300.0),
        ("0", 0.0),
        (" 10s ", 10.0),
    ],
)
def test_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (30, 30.0), (2.5, 2.5)])
def test_numbers_are_seconds(value: float, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "bad duration ''"),
        ("5x", "bad duration '5x'"),
        ("5 s", "bad duration '5 s'"),
        ("s", "bad duration 's'"),
        ("1h30", "bad duration '1h30'"),
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        (math.inf, "finite"),
        (math.nan, "finite"),
        (True, "bad duration True"),
        (None, "of type NoneType"),
        ([5], "of type list"),
    ],
)
def test_rejects(value: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_unit_multiplies(number: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{number}{unit}") == pytest.approx(number * factor)


class _Model(BaseModel):
    timeout: Duration


def test_pydantic_field() -> None:
    assert _Model.model_validate({"timeout": "1m"}).timeout == 60.0
    assert _Model.model_validate({"timeout": 7}).timeout == 7.0
    with pytest.raises(ValidationError, match="bad duration '1y'"):
        _Model.model_validate({"timeout": "1y"})
