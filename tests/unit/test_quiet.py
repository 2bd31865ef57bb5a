"""Mute windows: local weekdays and hours in their time zone, ranges past midnight, an end of
24:00; an inhibit rule's keys."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from relay.routing.quiet import InhibitRule, MuteTime

PARIS = ZoneInfo("Europe/Paris")


def at(day: int, hour: int, minute: int = 0) -> float:
    """A moment of December 2026 in Paris (the 5th is a Saturday)."""
    return datetime(2026, 12, day, hour, minute, tzinfo=PARIS).timestamp()


def window(**keys: object) -> MuteTime:
    return MuteTime.model_validate({"time_zone": "Europe/Paris", **keys})


def test_weekdays_and_hours_past_midnight_in_local_time() -> None:
    nights = window(weekdays=["fri:sun"], hours=["22:00-07:00"])
    assert nights.weekdays == frozenset({4, 5, 6})
    assert nights.covers(at(5, 23, 30))  # Saturday night
    assert nights.covers(at(6, 6, 59))  # Sunday early
    assert not nights.covers(at(6, 7, 0))  # the end is not included
    assert not nights.covers(at(5, 12))  # Saturday noon
    assert not nights.covers(at(7, 1))  # Monday 01:00: the weekday is the moment's own
    assert nights.describe() == "fri,sat,sun 22:00-07:00 Europe/Paris"


def test_all_day_every_day_and_an_end_of_24_00() -> None:
    assert window().covers(at(9, 3))
    evening = window(hours=["18:00-24:00"])
    assert evening.covers(at(9, 23, 59)) and not evening.covers(at(9, 17, 59))
    weekend = window(weekdays="sat")
    assert weekend.covers(at(5, 0)) and not weekend.covers(at(6, 0))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"weekdays": ["sun-mon"]}, "it ends before it starts"),
        ({"hours": ["25:00-07:00"]}, "not a time of day"),
        ({"hours": ["07:00-07:00"]}, "it starts where it ends"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_windows_say_why(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MuteTime.model_validate(keys)


def test_an_inhibit_rule_reads_matchers_and_its_duration() -> None:
    rule = InhibitRule.model_validate(
        {
            "when": 'provider="goapi-account"',
            "mute": ['{provider="goapi", status="failed"}'],
            "for": "2h",
        }
    )
    assert [str(m) for m in rule.mute] == ['provider="goapi"', 'status="failed"']
    assert rule.for_ == 7200.0
    with pytest.raises(ValidationError, match="must be more than 0s"):
        InhibitRule.model_validate({"when": "a=b", "mute": "c=d", "for": 0})
