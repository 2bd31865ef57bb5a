"""Quiet times in the rules (README: Rules, mute times and inhibitions): a route's recurring
``mute_times`` and the ``inhibit`` rules that let an account alert silence per-task failures.

Both hold deliveries as ``silenced`` rather than dropping them: nothing is lost, and what was
held can be replayed once the noise is over.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.routing.durations import Duration
from relay.routing.matchers import Matcher, matcher_items

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HOURS = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


def _day(name: str) -> int:
    text = name.strip().lower()
    for number, day in enumerate(_DAYS):
        if text in (day, day[:3]):
            return number
    raise ValueError(f"bad weekday {name!r}: write monday..sunday or mon..sun")


class MuteTime(BaseModel):
    """One recurring window: the moments whose local weekday is one of ``weekdays`` (all days
    if none) and whose local time is inside one of ``hours`` (all day if none), in
    ``time_zone``. ``"22:00-07:00"`` runs past midnight; the end is not included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weekdays: frozenset[int] = frozenset()
    hours: tuple[tuple[time, time], ...] = ()
    time_zone: str = "UTC"

    @field_validator("weekdays", mode="before")
    @classmethod
    def _weekdays(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        days: set[int] = set()
        for item in value:
            if not isinstance(item, str):
                raise ValueError("must be a list of weekdays like [saturday, sunday]")
            # Ranges: monday:friday (Alertmanager's form) or mon-fri.
            first, sep, last = item.replace(":", "-").partition("-")
            if sep:
                start, end = _day(first), _day(last)
                if end < start:
                    raise ValueError(f"bad weekday range {item!r}: it ends before it starts")
                days.update(range(start, end + 1))
            else:
                days.add(_day(item))
        return frozenset(days)

    @field_validator("hours", mode="before")
    @classmethod
    def _hours(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            found = _HOURS.fullmatch(item.strip()) if isinstance(item, str) else None
            if found is None:
                raise ValueError(f"bad hours {item!r}: write a range like '22:00-07:00'")
            h1, m1, h2, m2 = (int(g) for g in found.groups())
            if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
                raise ValueError(f"bad hours {item!r}: not a time of day")
            end = time(0, 0) if h2 == 24 else time(h2, m2)
            if time(h1, m1) == end and h2 != 24:
                raise ValueError(f"bad hours {item!r}: it starts where it ends")
            out.append((time(h1, m1), end))
        return tuple(out)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (write e.g. Europe/Paris)") from None
        return value

    def zone(self) -> tzinfo:
        return UTC if self.time_zone == "UTC" else ZoneInfo(self.time_zone)

    def covers(self, now: float) -> bool:
        """Whether the unix time ``now`` is inside this window."""
        local = datetime.fromtimestamp(now, self.zone())
        if self.weekdays and local.weekday() not in self.weekdays:
            return False
        if not self.hours:
            return True
        at = local.time().replace(tzinfo=None)
        for start, end in self.hours:
            # An end of 00:00 is midnight at the end of the day.
            if start < end or end == time(0, 0):
                if start <= at and (end == time(0, 0) or at < end):
                    return True
            elif at >= start or at < end:
                return True
        return False

    def describe(self) -> str:
        days = ",".join(_DAYS[d][:3] for d in sorted(self.weekdays)) or "every day"
        hours = ",".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in self.hours) or "all day"
        return f"{days} {hours} {self.time_zone}"


class InhibitRule(BaseModel):
    """While an event matching ``when`` (an account alert) is recent — for ``for`` after it
    arrived — deliveries of events matching ``mute`` are held as silenced. Each such alert
    opens a silence of its own (listed by ``relay silence list``, ended early with
    ``relay silence expire``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    when: list[Matcher] = Field(min_length=1)
    mute: list[Matcher] = Field(min_length=1)
    for_: Duration = Field(alias="for")

    _when = field_validator("when", mode="before")(matcher_items)
    _mute = field_validator("mute", mode="before")(matcher_items)

    @field_validator("for_")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0s")
        return value
