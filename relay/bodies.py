"""Parsing untrusted request bodies: JSON with bounded nesting, every problem a PayloadError."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from relay.errors import PayloadError


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    """A JSON number with a fraction or an exponent, refused if no double holds it: the stdlib
    would read ``1e400`` as infinity, which neither the store nor the envelope can write as
    JSON again (json.dumps writes ``Infinity``; the admin API refuses it)."""
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else f"{text[:24]}…"
        raise ValueError(f"number {shown} is too large for a double")
    return value


# Built once: json.loads with any keyword builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)

# One pass over the body (bytes.translate) gives its shape, which answers two questions without
# parsing: how many containers it opens (an upper bound on its depth), and whether it holds a
# run of 19 or more digits. orjson reads integers beyond 64 bits as floats, where the stdlib
# keeps them exact; such a number has that many digits in a row, so those bodies (rare: long
# ids, big numbers) go to the stdlib parser.
_SHAPE = bytes(
    0x30 if 0x30 <= byte <= 0x39 else 0x5B if byte in b"[{" else 0x20 for byte in range(256)
)
_LONG_NUMBER = b"0" * 19


def parse_json(body: bytes, max_depth: int) -> Any:
    """Parse a JSON body. Any problem, including nesting deeper than ``max_depth``, is a
    PayloadError naming it.

    orjson parses the usual body, about three times as fast as the stdlib; whatever it refuses
    (invalid JSON, but also what the stdlib accepts: a BOM, lone surrogates, numbers too big
    for a double) is parsed again by the stdlib, which decides and names the problem: a BOM is
    read past, a lone surrogate and a number beyond a double (``1e400``) are refused. Both give
    the same values for every body that reaches orjson.
    """
    if not body.strip():
        raise PayloadError("body is empty; expected a JSON object")
    shape = body.translate(_SHAPE)
    value = _parse(body, max_depth, stdlib=_LONG_NUMBER in shape)
    # Most bodies hold fewer containers than the limit and need no walk at all.
    if shape.count(b"[") > max_depth:
        _check_depth(value, max_depth)
    return value


def _parse(body: bytes, max_depth: int, *, stdlib: bool) -> Any:
    if not stdlib:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the stdlib decides, and names the problem
    return _parse_stdlib(body, max_depth)


def _parse_stdlib(body: bytes, max_depth: int) -> Any:
    try:
        # The C parser guards its own recursion (RecursionError at about 1,000 levels).
        value = _DECODER.decode(body.decode("utf-8-sig"))
    except RecursionError:
        raise PayloadError(f"JSON is nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8 text") from None
    except ValueError as exc:
        raise PayloadError(f"invalid JSON: {exc}") from None
    if b"\\u" in body:
        _check_unicode(value)
    return value


def _check_unicode(value: Any) -> None:
    """The stdlib reads a lone surrogate escape (``"\\ud800"``) as a str no UTF-8 encoder can
    write: refused here, before anything is stored, rather than failing in the store."""
    try:
        _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(
            "JSON holds a lone surrogate escape (like \\ud800): not valid Unicode text"
        ) from None


def _check_depth(value: Any, max_depth: int) -> None:
    # Iterative, so a hostile body cannot make the check itself recurse.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise PayloadError(f"JSON is nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)
