"""Reading the shared provider fixtures (copied under tests/fixtures/providers)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "providers"


def expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
    data.pop("_doc", None)
    return data


def load(name: str, *, now: float | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A fixture body (with a fresh ``timestamp`` where it has one) and its headers."""
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    if "timestamp" in body:
        body["timestamp"] = int(now if now is not None else time.time())
    headers_file = FIXTURES / name.replace(".json", ".headers.json")
    headers: dict[str, str] = {}
    if headers_file.exists():
        headers = {k.lower(): v for k, v in json.loads(headers_file.read_text()).items()}
    return body, headers
