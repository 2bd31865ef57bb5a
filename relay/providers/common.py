"""Helpers every provider adapter shares: constant-time compares, lenient time parsing, media
kinds from URLs, S3 expiry, redaction, and typed getters over untrusted JSON.

Everything here is total over its input: garbage in gives ``None`` (or the input unchanged), never
an exception, so an adapter built from these helpers cannot leak a KeyError or ValueError as a 500.
"""

from __future__ import annotations

import hmac
import itertools
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from relay.events import OutputKind

REDACTED = "[redacted]"

# Compared after lower-casing and turning "-" into "_", so "X-Api-Key" and "x_api_key" both match.
SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "secret",
        "webhook_secret",
        "x_webhook_secret",
        "api_key",
        "apikey",
        "x_api_key",
        "authorization",
        "password",
        "token",
        "access_token",
    }
)


def _spellings(key: str) -> Iterator[str]:
    """``key`` with "-" or "_" at each of its separators."""
    parts = key.split("_")
    for seps in itertools.product("_-", repeat=len(parts) - 1):
        yield parts[0] + "".join(sep + part for sep, part in zip(seps, parts[1:], strict=True))


# A key is sensitive when its lower-case form is one of these: one set look-up per key on the
# redaction walk, which runs on every callback.
_SENSITIVE_SPELLINGS: frozenset[str] = frozenset(
    spelling for key in SENSITIVE_KEYS for spelling in _spellings(key)
)

KIND_BY_EXTENSION: dict[str, OutputKind] = {
    **dict.fromkeys(("png", "jpg", "jpeg", "webp", "gif", "bmp", "avif", "heic"), "image"),
    **dict.fromkeys(("mp4", "mov", "webm", "mkv", "avi", "m4v"), "video"),
    **dict.fromkeys(("mp3", "wav", "m4a", "aac", "ogg", "flac", "opus"), "audio"),
    **dict.fromkeys(("glb", "gltf", "obj", "fbx", "stl", "usdz", "ply"), "model3d"),
    **dict.fromkeys(("txt", "srt", "vtt", "json"), "file"),
}

# Unix times above this are milliseconds: 1e12 s is the year 33658, 1e12 ms is 2001.
_MILLISECONDS_ABOVE = 1e12
_UNSIGNED = re.compile(r"\d+(?:\.\d+)?")
_SIGNED = re.compile(r"-?\d+(?:\.\d+)?")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
# S3 caps presigned URLs at 7 days; anything far beyond is not a real expiry, and an unbounded
# value would overflow datetime arithmetic.
_MAX_EXPIRES_S = 10 * 365 * 86400
# isinstance() with a tuple: ``int | float`` would build a union object on every call.
_NUMBER = (int, float)


def secrets_equal(expected: str, given: str | None) -> bool:
    """Compare a configured secret with a received one in constant time. ``None`` never matches."""
    if given is None:
        return False
    # surrogatepass: a header decoded from odd bytes must compare unequal, not raise.
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass")
    )


def parse_time(value: Any) -> datetime | None:
    """Read a provider time as an aware UTC datetime, or ``None`` when there is no usable time.

    Accepts ISO 8601 strings (any number of fractional digits, ``Z`` or an offset; naive means
    UTC), unix seconds as int, float or numeric string, and unix milliseconds (values over 1e12).
    Go's zero time (year 1), empty values, zero and anything unparseable give ``None``.
    """
    # Strings first: most providers send ISO 8601 text.
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        # A plain number holds neither "-" nor ":", and nearly every ISO time holds one: those
        # skip the regex.
        if "-" not in text and ":" not in text and _UNSIGNED.fullmatch(text):
            seconds = as_float(text)
            return None if seconds is None else _from_unix(seconds)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return _aware_utc(parsed)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime):
        return _aware_utc(value)
    if isinstance(value, _NUMBER):
        seconds = as_float(value)
        return None if seconds is None else _from_unix(seconds)
    return None


def _from_unix(seconds: float) -> datetime | None:
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    if seconds > _MILLISECONDS_ABOVE:
        seconds /= 1000.0
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _aware_utc(value: datetime) -> datetime | None:
    # Go marshals an unset time.Time as 0001-01-01T00:00:00Z (with odd offsets in some zones).
    if value.year <= 1:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def s3_expiry(url: Any) -> datetime | None:
    """When an S3 presigned URL stops working: ``X-Amz-Date`` plus ``X-Amz-Expires`` seconds.

    Parameter names are matched case-insensitively. ``None`` when the URL is not presigned or the
    values are malformed.
    """
    if not isinstance(url, str) or "?" not in url:
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    params = {name.lower(): value for name, value in parse_qsl(query)}
    date_text = params.get("x-amz-date", "").strip()
    expires_text = params.get("x-amz-expires", "").strip()
    if not expires_text.isdigit() or not expires_text.isascii():
        return None
    expires = int(expires_text)
    if expires > _MAX_EXPIRES_S:
        return None
    try:
        signed = datetime.strptime(date_text, _AMZ_DATE).replace(tzinfo=UTC)
        return signed + timedelta(seconds=expires)
    except (ValueError, OverflowError):
        return None


def kind_from_url(url: Any) -> OutputKind:
    """Guess a media kind from a URL's file extension, ignoring query and fragment; else file."""
    if not isinstance(url, str):
        return "file"
    path = url.split("#", 1)[0].split("?", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if "." not in name:
        return "file"
    return KIND_BY_EXTENSION.get(name.rsplit(".", 1)[-1].lower(), "file")


def is_sensitive_key(key: Any) -> bool:
    """Whether a JSON key names a credential whose value must never be shown."""
    return isinstance(key, str) and key.lower() in _SENSITIVE_SPELLINGS


def redact(payload: Any) -> Any:
    """A deep copy of a JSON value with credential values replaced by ``"[redacted]"``.

    A value is replaced when its key is sensitive (see ``SENSITIVE_KEYS``) and it is a non-empty
    string or a number; strings in a list under such a key are replaced too. This runs on every
    callback, so the usual shallow bodies take a fast recursive walk; anything nested deeper than
    ``_FAST_DEPTH`` takes the iterative one, so no body can exhaust the stack.
    """
    try:
        return _redact_fast(payload, False, 0)
    except _TooDeep:
        return _redact_iterative(payload)


def redact_in_place(payload: Any) -> Any:
    """Like ``redact``, but changes ``payload`` itself and returns it.

    For bodies we just parsed and own: adapters call it last, once every field they need is
    read, because a copy of the whole body on every callback was a measurable share of ingest.
    Iterative, so any depth is safe.
    """
    # (container, it is a list sitting under a sensitive key)
    stack: list[tuple[Any, bool]] = [(payload, False)]
    while stack:
        node, sensitive = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(item, dict):
                    stack.append((item, False))
                    continue
                key_sensitive = isinstance(key, str) and key.lower() in _SENSITIVE_SPELLINGS
                if isinstance(item, list):
                    stack.append((item, key_sensitive))
                elif key_sensitive and _is_secret_value(item):
                    node[key] = REDACTED
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, dict):
                    stack.append((item, False))
                elif isinstance(item, list):
                    stack.append((item, sensitive))
                elif sensitive and _is_secret_value(item):
                    node[index] = REDACTED
    return payload


_FAST_DEPTH = 200


class _TooDeep(Exception):
    pass


def _redact_fast(value: Any, sensitive: bool, depth: int) -> Any:
    if isinstance(value, dict):
        if depth > _FAST_DEPTH:
            raise _TooDeep
        out: dict[Any, Any] = {}
        for key, item in value.items():
            key_sensitive = is_sensitive_key(key)
            if key_sensitive or isinstance(item, dict | list | tuple):
                out[key] = _redact_fast(item, key_sensitive, depth + 1)
            else:
                out[key] = item
        return out
    if isinstance(value, list | tuple):
        if depth > _FAST_DEPTH:
            raise _TooDeep
        return [_redact_fast(item, sensitive, depth + 1) for item in value]
    if sensitive and _is_secret_value(value):
        return REDACTED
    return value


def _redact_iterative(payload: Any) -> Any:
    root: list[Any] = [None]
    # (source value, destination container, index or key in it, value sits under a sensitive key)
    stack: list[tuple[Any, Any, Any, bool]] = [(payload, root, 0, False)]
    while stack:
        value, target, slot, sensitive = stack.pop()
        if isinstance(value, dict):
            copy: dict[Any, Any] = {}
            target[slot] = copy
            for key, item in value.items():
                copy[key] = None
                stack.append((item, copy, key, is_sensitive_key(key)))
        elif isinstance(value, list | tuple):
            items: list[Any] = [None] * len(value)
            target[slot] = items
            for index, item in enumerate(value):
                stack.append((item, items, index, sensitive))
        elif sensitive and _is_secret_value(value):
            target[slot] = REDACTED
        else:
            target[slot] = value
    return root[0]


def _is_secret_value(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def get_dict(obj: Any, key: str) -> dict[str, Any] | None:
    """``obj[key]`` when ``obj`` is a dict and the value is a dict, else ``None``."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else None


def get_list(obj: Any, key: str) -> list[Any] | None:
    """``obj[key]`` when ``obj`` is a dict and the value is a list, else ``None``."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else None


def get_str(obj: Any, key: str) -> str | None:
    """``obj[key]`` stripped, when it is a string with some non-blank text, else ``None``."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, str):
        return value.strip() or None
    return None


def get_float(obj: Any, key: str) -> float | None:
    """``obj[key]`` as a finite float: from an int, a float or a numeric string, else ``None``."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return as_float(value)


def get_int(obj: Any, key: str) -> int | None:
    """``obj[key]`` as an int when it is a whole number (int, integral float, digit string)."""
    number = get_float(obj, key)
    if number is None or not number.is_integer():
        return None
    return int(number)


def as_float(value: Any) -> float | None:
    """A JSON value as a finite float (int, float or a plain numeric string), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _SIGNED.fullmatch(text):
            return None
        value = text
    elif not isinstance(value, _NUMBER):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


def scrub_literal_in_place(payload: Any, secret: str, replacement: str = REDACTED) -> Any:
    """Replace every occurrence of ``secret`` inside every string of ``payload``, in place.

    For a source's URL token: providers echo the URL we gave them (with the token in it) in
    fields no key-based redaction can know about, such as debug copies of the request.
    """
    stack: list[Any] = [payload]
    while stack:
        node = stack.pop()
        items: Any = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in list(items):
            if isinstance(item, str):
                if secret in item:
                    node[key] = item.replace(secret, replacement)
            elif isinstance(item, dict | list):
                stack.append(item)
    return payload
