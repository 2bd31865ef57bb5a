"""``${VAR}`` and ``${VAR:-default}`` in rule values, applied after YAML parsing.

Substituting after parsing means a variable's value is always one string: its characters
(quotes, colons, newlines) cannot change the structure of the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

KeyPath = tuple[str | int, ...]

# A lone "$" not followed by "{" or "$" stays literal: regexes in matchers end with "$".
_REFERENCE = re.compile(
    r"\$(?:(?P<dollar>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<default>:-[^}]*)?\}"
    r"|(?P<malformed>\{))"
)


@dataclass
class Expansion:
    """The result of ``expand``: the new tree plus what went wrong and which defaults were used.

    ``problems`` and ``defaults_used`` pair a key path with a message or a variable name. No
    message carries a variable's value.
    """

    value: object = None
    problems: list[tuple[KeyPath, str]] = field(default_factory=list)
    defaults_used: list[tuple[KeyPath, str]] = field(default_factory=list)


def expand(data: object, env: Mapping[str, str]) -> Expansion:
    """Substitute variables in every string value of ``data`` (dict keys are left alone).

    Shell semantics: ``${VAR:-default}`` uses the default when VAR is unset *or* empty;
    ``${VAR}`` with VAR unset is a problem; ``$$`` is a literal ``$``.
    """
    result = Expansion()
    result.value = _walk(data, env, (), result)
    return result


def _walk(data: object, env: Mapping[str, str], path: KeyPath, out: Expansion) -> object:
    if isinstance(data, str):
        return _expand_string(data, env, path, out)
    if isinstance(data, dict):
        return {key: _walk(value, env, (*path, str(key)), out) for key, value in data.items()}
    if isinstance(data, list):
        return [_walk(item, env, (*path, index), out) for index, item in enumerate(data)]
    return data


def _expand_string(text: str, env: Mapping[str, str], path: KeyPath, out: Expansion) -> str:
    def replace(found: re.Match[str]) -> str:
        if found.group("dollar"):
            return "$"
        name = found.group("name")
        if name is None:
            out.problems.append(
                (
                    path,
                    f"malformed '${{' at character {found.start()}: write ${{NAME}} or "
                    "${NAME:-default}, or $$ for a literal $",
                )
            )
            return ""
        default = found.group("default")
        value = env.get(name)
        if default is not None and not value:
            out.defaults_used.append((path, name))
            return default[2:]
        if value is None:
            out.problems.append(
                (
                    path,
                    f"environment variable {name} is not set "
                    f"(set it, or write ${{{name}:-default}} to give a default)",
                )
            )
            return ""
        return value

    return _REFERENCE.sub(replace, text)
