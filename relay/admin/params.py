"""What the admin API and the CLI read from people: moments in time, page cursors, ids.

One reading for both, so `relay replay --since 2h` and `POST /admin/replay {"since": "2h"}` mean
the same thing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
from datetime import UTC, datetime

from relay.routing.durations import parse_duration
from relay.store.base import LABEL_NAME, Cursor

# Ids are ours (evt_…, dlv_…, qcb_…): anything else cannot name a row, so it is refused before
# it reaches a database (PostgreSQL refuses NUL characters with an error, not an empty answer).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_ID = re.compile(ID_PATTERN)
_UNIT = re.compile(r"[a-z]\s*$")

MOMENT_HELP = (
    "an age such as 30m, 2h or 7d (that long ago), an ISO 8601 time such as "
    "2026-12-01T09:30:00Z, or unix seconds"
)


def is_id(text: str) -> bool:
    # fullmatch: the pattern's "$" (kept for the schemas' JSON Schema) also matches before a
    # final newline, so match() would take "evt_1\n" for an id.
    return bool(_ID.fullmatch(text))


def parse_moment(text: str, now: float) -> float:
    """Unix seconds from an age (``2h``: two hours before ``now``), an ISO 8601 time (UTC when
    it names no zone) or unix seconds. Raises ValueError saying what it accepts."""
    value = text.strip()
    if not value:
        raise ValueError(f"empty time: use {MOMENT_HELP}")
    if _UNIT.search(value):
        with contextlib.suppress(ValueError):
            return now - parse_duration(value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and 0 <= seconds < 1e11:
            return seconds
        raise ValueError(f"bad time {text!r}: unix seconds out of range")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: use {MOMENT_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def encode_cursor(cursor: Cursor) -> str:
    """An opaque page token for the row at ``cursor`` (its time and id)."""
    raw = json.dumps([cursor[0], cursor[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """The cursor a page token stands for. Raises ValueError for anything we did not make."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        at, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("bad cursor: pass the next_cursor of the previous page") from None
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise ValueError("bad cursor: pass the next_cursor of the previous page")
    if not isinstance(row_id, str) or not is_id(row_id):
        raise ValueError("bad cursor: pass the next_cursor of the previous page")
    return float(at), row_id


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_labels(items: list[str]) -> tuple[tuple[str, str], ...]:
    """``["team=media", "batch=b42"]`` as label filters. Raises ValueError naming the bad one."""
    labels = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value or not LABEL_NAME.fullmatch(name):
            raise ValueError(f"bad label filter {item!r}: write name=value, e.g. team=media")
        labels.append((name, value))
    return tuple(labels)
