"""Docstrings and comments cite only documents that ship with relay."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {p.name for p in REPO.rglob("*.md") if ".git" not in p.parts}
CITED = re.compile(r"\b([\w.-]+\.md)\b")


def test_every_cited_document_ships() -> None:
    found: list[str] = []
    for path in sorted((REPO / "relay").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found += [f"{path.name}: {name}" for name in CITED.findall(text) if name not in SHIPPED]
        # The design notes the project was started from are not part of it.
        found += [f"{path.name}: DESIGN" for _ in re.finditer(r"\bDESIGN\b", text)]
    assert found == []
