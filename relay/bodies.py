"""Parsing untrusted request bodies: JSON with bounded nesting, every problem a PayloadError."""

from __future__ import annotations

import json
from typing import Any

from relay.errors import PayloadError


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads with any keyword builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_json(body: bytes, max_depth: int) -> Any:
    """Parse a JSON body. Any problem, including nesting deeper than ``max_depth``, is a
    PayloadError naming it."""
    if not body.strip():
        raise PayloadError("body is empty; expected a JSON object")
    try:
        # The C parser guards its own recursion (RecursionError at about 1,000 levels).
        value = _DECODER.decode(body.decode("utf-8-sig"))
    except RecursionError:
        raise PayloadError(f"JSON is nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8 text") from None
    except ValueError as exc:
        raise PayloadError(f"invalid JSON: {exc}") from None
    # Most bodies hold fewer containers than the limit and need no walk at all.
    if body.count(b"[") + body.count(b"{") > max_depth:
        _check_depth(value, max_depth)
    return value


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
