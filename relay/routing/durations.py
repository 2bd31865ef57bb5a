"""Durations in the rules: ``500ms``, ``5s``, ``5m``, ``2h``, ``1d``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"\d+(?:\.\d+)?"
# "ms" comes before "m" so "500ms" is not read as 500 minutes followed by junk.
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_WHOLE = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
_PLAIN = re.compile(_NUMBER)

_HINT = "use seconds (e.g. 300) or a duration like '500ms', '5s', '5m', '2h', '1d', '1h30m'"


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds.

    Accepts a non-negative int or float (seconds) or a string: plain seconds (``"300"``) or
    one or more number+unit parts (``ms``, ``s``, ``m``, ``h``, ``d``), e.g. ``"1h30m"``.
    Raises ``ValueError`` saying what is wrong otherwise.
    """
    # bool is an int subclass, but `timeout: true` is a mistake, not one second.
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: {_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"bad duration {value!r}: must be a finite number of seconds")
        if seconds < 0:
            raise ValueError(f"bad duration {value!r}: must not be negative")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"bad duration of type {type(value).__name__}: {_HINT}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"bad duration {value!r}: must not be negative")
    if _PLAIN.fullmatch(text):
        return float(text)
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"bad duration {value!r}: {_HINT}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type: seconds as a float, written in the rules as ``parse_duration`` accepts."""


_RATE = re.compile(rf"({_NUMBER})\s*/\s*(ms|s|sec|second|m|min|minute|h|hour|d|day)")
_RATE_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE_HINT = "use sends per unit of time, e.g. '10/s', '300/min', '1000/h'"


def parse_rate(value: object) -> float:
    """Return the seconds between two sends of a rate such as ``"10/s"`` or ``"300/min"``
    (a plain number is sends per second). Raises ``ValueError`` saying what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"bad rate {value!r}: {_RATE_HINT}")
    if isinstance(value, int | float):
        count, unit = float(value), 1.0
    elif isinstance(value, str) and (match := _RATE.fullmatch(value.strip())):
        count, unit = float(match.group(1)), _RATE_UNITS[match.group(2)]
    else:
        raise ValueError(f"bad rate {value!r}: {_RATE_HINT}")
    if not math.isfinite(count) or count <= 0:
        raise ValueError(f"bad rate {value!r}: must be more than 0 sends")
    return unit / count


# A rate as the seconds between two sends.
Rate = Annotated[float, BeforeValidator(parse_rate)]
