"""Read one rules file as YAML, refusing duplicate keys, with errors that name the line."""

from __future__ import annotations

from pathlib import Path

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(Exception):
    """The file could not be read or parsed. The message never quotes the file's content."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping.

    Plain PyYAML keeps the last value silently, so a second ``goapi:`` under ``sources`` would
    quietly replace the first; we want that to be an error naming the line.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> object:
    """Parse ``path`` (UTF-8, a single YAML document). An empty file gives ``None``.

    Raises ``YamlFileError`` with "line L, column C: ..." for syntax errors.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise YamlFileError("not UTF-8 text") from None
    except OSError as exc:
        raise YamlFileError(f"cannot read: {exc.strerror}") from None
    try:
        return yaml.load(
            text, Loader=_UniqueKeyLoader
        )  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        # Only the short problem text: str(exc) quotes the offending line, which may be a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlFileError(f"{where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlFileError(f"invalid YAML: {type(exc).__name__}") from None
