"""Plain-text helpers every renderer shares: cleaning, cutting, URLs, times and durations.

Every result is plain text, cleaned of control characters but not escaped: escaping is the
renderer's job (mrkdwn and HTML escape differently).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import UTC, datetime

ELLIPSIS = "…"

_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")
_SPACES = re.compile(r"[ \t\f\v]+")
_ANY_SPACE = re.compile(r"\s+")
_WEB_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?", re.IGNORECASE)


def clean_text(text: str | None, *, multiline: bool = True) -> str:
    """``text`` without control or bidi-override characters, stripped.

    Line breaks are kept (as ``\\n``) when ``multiline``; otherwise every run of whitespace,
    line breaks included, becomes one space.
    """
    if not text:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n")
    text = _BIDI.sub("", text)
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else " " for ch in text)
    if not multiline:
        return _ANY_SPACE.sub(" ", text).strip()
    lines = [_SPACES.sub(" ", line).rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip()


def one_line(text: str | None) -> str:
    """``text`` as one clean line."""
    return clean_text(text, multiline=False)


def humanize(word: str) -> str:
    """An identifier as lower-case words: "mj_bot-banned" -> "mj bot banned"."""
    return _ANY_SPACE.sub(" ", word.replace("_", " ").replace("-", " ")).strip().lower()


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending with "…" when cut (at a word
    boundary when there is one near the end)."""
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    cut = text[: limit - 1]
    # At a word boundary when one is near the end ("…modify your…", not "…modify your pro…").
    space = cut.rfind(" ")
    if space >= 0.8 * len(cut):
        cut = cut[:space]
    return cut.rstrip() + ELLIPSIS


def and_more(n: int, noun: str = "") -> str:
    """The overflow phrase: "… and 3 more", "… and 62 more outputs", "… and 1 more output"."""
    if not noun:
        return f"{ELLIPSIS} and {n} more"
    return f"{ELLIPSIS} and {n} more {noun if n == 1 else noun + 's'}"


def web_url(url: str | None) -> str | None:
    """``url`` when it is an absolute http(s) URL without spaces or control characters (its
    scheme in lower case); otherwise None."""
    if not url or len(url) > 65536:
        return None
    if not _WEB_URL.fullmatch(url):
        return None
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in url):
        return None
    # The scheme in lower case ("HTTPS://" is valid, but not every client links it).
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}://{rest}"


def readable_detail(detail: str) -> str:
    """A JSON object as "key: value · key: value" (what people read); anything else as is."""
    try:
        value = json.loads(detail)
    except ValueError:
        return detail
    if not isinstance(value, dict) or not value:
        return detail
    parts = []
    for key, item in value.items():
        shown = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        parts.append(f"{one_line(str(key))}: {one_line(shown)}")
    return " \u00b7 ".join(parts)


def utc(value: datetime) -> datetime:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_time(value: datetime, *, seconds: bool = False) -> str:
    """ "2025-07-01 12:00 UTC" (with ":05" seconds when asked), never microseconds."""
    return utc(value).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def human_duration(seconds: float | None) -> str | None:
    """ "0.4 s", "42 s", "3 min 5 s", "2 h 5 min", "3 d 4 h"; None for nothing or nonsense."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    if seconds < 10:
        shown = f"{seconds:.1f}".removesuffix(".0")
        return f"{shown} s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
