"""Alertmanager-style label matchers: ``=``, ``!=``, ``=~`` and ``!~`` (README: Rules).

Ops already know this syntax from Alertmanager, so we keep its quirks where they help: regexes
are anchored at both ends, values may be quoted or not, and a backslash before anything other
than ``"``, ``\\`` or ``n`` is kept (so ``"kling\\.v1"`` is the regex ``kling\\.v1``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from relay.events import LABEL_NAMES

Op = Literal["=", "!=", "=~", "!~"]

_OPS: tuple[Op, ...] = get_args(Op)
# Longest first, so "=~" is not read as "=" followed by a value starting with "~".
_OPS_BY_LENGTH: tuple[Op, ...] = tuple(sorted(_OPS, key=len, reverse=True))
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Python refuses global flags such as (?i) anywhere but at the start, so a leading flag group
# is moved in front of the anchors instead of being wrapped with the rest of the value.
_LEADING_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
_MISSING: tuple[str, ...] = ("",)


_LABEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _compile(name: str, op: str, value: str) -> re.Pattern[str]:
    text = f"{name}{op}{_quote(value)}"
    try:
        # Compiled bare first so an error's position refers to the value as written.
        re.compile(value)
        flags = _LEADING_FLAGS.match(value)
        prefix, body = (flags.group(0), value[flags.end() :]) if flags else ("", value)
        return re.compile(rf"{prefix}\A(?:{body})\Z")
    except re.error as exc:
        raise ValueError(f"bad regex in '{text}': {exc}") from None


@dataclass(frozen=True, slots=True)
class Matcher:
    """One condition on an event label. Build with ``parse_matchers`` or directly."""

    name: str
    op: Op
    value: str
    regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _negative: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built-in labels, or a name sources may declare (checked against them by the loader).
        if self.name not in LABEL_NAMES and not _LABEL_NAME.fullmatch(self.name):
            raise ValueError(
                f"unknown label '{self.name}' in '{self}' (valid: {', '.join(sorted(LABEL_NAMES))}"
                ", or a label the sources declare)"
            )
        if self.op not in _OPS:
            raise ValueError(f"unknown operator '{self.op}' (valid: {', '.join(_OPS)})")
        regex = _compile(self.name, self.op, self.value) if self.op in ("=~", "!~") else None
        # Frozen dataclass: the derived fields are set once here and never again.
        object.__setattr__(self, "regex", regex)
        object.__setattr__(self, "_negative", self.op in ("!=", "!~"))

    def matches(self, labels: Mapping[str, tuple[str, ...]]) -> bool:
        """Whether the labels satisfy this matcher.

        Labels are multi-valued and a missing label counts as ``("",)``. ``=`` and ``=~`` hold
        when any value matches; ``!=`` and ``!~`` hold when no value matches the positive form.
        """
        values = labels.get(self.name, _MISSING)
        pattern = self.regex
        if pattern is None:
            hit = self.value in values
        else:
            hit = any(pattern.match(v) is not None for v in values)
        return hit != self._negative

    def __str__(self) -> str:
        return f"{self.name}{self.op}{_quote(self.value)}"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _coerce, serialization=core_schema.to_string_ser_schema()
        )


def _coerce(value: object) -> Matcher:
    if isinstance(value, Matcher):
        return value
    if isinstance(value, str):
        parsed = parse_matchers(value)
        if len(parsed) == 1:
            return parsed[0]
        raise ValueError(f"expected exactly one matcher in '{value}', found {len(parsed)}")
    raise ValueError("a matcher must be a string like 'status=\"failed\"'")


def matcher_items(value: object) -> object:
    """A rules value of matchers (one string, or a list of strings and matchers) as the list
    of matchers it holds, each string split by ``parse_matchers``; anything else as it is,
    for the model to refuse. A pydantic ``mode="before"`` validator."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        out: list[object] = []
        for item in value:
            out.extend(parse_matchers(item) if isinstance(item, str) else [item])
        return out
    return value


def parse_matchers(text: str) -> list[Matcher]:
    """Parse one matcher or a comma-separated list, optionally wrapped in ``{...}``.

    ``'status="failed"'``, ``'{status="failed", model=~"kling|luma"}'`` and ``status=failed``
    are all accepted; ``{}`` is the empty list. Raises ``ValueError`` saying what is wrong.
    """
    body = text.strip()
    if body.startswith("{"):
        if not body.endswith("}"):
            raise ValueError(f"bad matcher '{text}': missing closing '}}'")
        body = body[1:-1].strip()
        if not body:
            return []
    if not body:
        raise ValueError("empty matcher: write e.g. 'status=\"failed\"'")
    return _Scanner(text, body).matchers()


class _Scanner:
    """A cursor over the text between the braces; one instance per ``parse_matchers`` call."""

    def __init__(self, text: str, body: str) -> None:
        self.text = text
        self.body = body
        self.pos = 0

    def fail(self, why: str) -> ValueError:
        return ValueError(f"bad matcher '{self.text}': {why}")

    def skip_spaces(self) -> None:
        while self.pos < len(self.body) and self.body[self.pos].isspace():
            self.pos += 1

    def matchers(self) -> list[Matcher]:
        found: list[Matcher] = []
        while True:
            self.skip_spaces()
            found.append(self.matcher())
            self.skip_spaces()
            if self.pos == len(self.body):
                return found
            if self.body[self.pos] != ",":
                raise self.fail(f"expected ',' between matchers at position {self.pos}")
            self.pos += 1
            self.skip_spaces()
            if self.pos == len(self.body):  # a trailing comma, as Alertmanager allows
                return found

    def matcher(self) -> Matcher:
        label = _LABEL.match(self.body, self.pos)
        if label is None:
            raise self.fail(f"expected a label name at position {self.pos}")
        self.pos = label.end()
        self.skip_spaces()
        op = next((o for o in _OPS_BY_LENGTH if self.body.startswith(o, self.pos)), None)
        if op is None:
            raise self.fail(f"expected one of {', '.join(_OPS)} after '{label.group(0)}'")
        self.pos += len(op)
        self.skip_spaces()
        value = self.quoted() if self.body.startswith('"', self.pos) else self.unquoted()
        return Matcher(label.group(0), op, value)

    def quoted(self) -> str:
        out: list[str] = []
        i = self.pos + 1
        while i < len(self.body):
            char = self.body[i]
            if char == '"':
                self.pos = i + 1
                return "".join(out)
            if char == "\\" and i + 1 < len(self.body):
                nxt = self.body[i + 1]
                # Alertmanager keeps unknown escapes as written, which regexes rely on.
                out.append({"n": "\n", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
                i += 2
                continue
            out.append(char)
            i += 1
        raise self.fail("unterminated quoted value")

    def unquoted(self) -> str:
        end = self.body.find(",", self.pos)
        end = len(self.body) if end == -1 else end
        value = self.body[self.pos : end].strip()
        if '"' in value:
            raise self.fail(f"stray '\"' in unquoted value '{value}'")
        # Most likely a forgotten comma ('status=failed model=x'): refuse rather than guess.
        if any(char.isspace() for char in value):
            raise self.fail(f"unquoted value '{value}' has a space: quote it or add a ','")
        self.pos = end
        return value
