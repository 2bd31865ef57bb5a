"""The fixture oracle: what a fixture must normalize to, checked the same way for every provider.

Oracle files are JSON objects mapping a fixture path (relative to tests/fixtures/providers) to
its expectations, as in ``expected.json`` beside the fixtures (its ``_doc`` says what each key
means). Besides that shared file, every ``expected.json`` below a provider's folder (for
instance ``goapi/families/expected.json``) adds entries for the fixtures beside it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from relay.events import TaskEvent
from relay.providers.base import Ignored
from tests.fixtures_util import FIXTURES


def oracle() -> dict[str, dict[str, Any]]:
    """Every oracle entry: the shared expected.json and each provider folder's own ones."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(FIXTURES.rglob("expected.json")):
        data: dict[str, Any] = json.loads(path.read_text())
        data.pop("_doc", None)
        for name, want in data.items():
            assert name not in entries, f"{name}: in two oracle files"
            entries[name] = want
    return entries


def fixture_files() -> list[str]:
    """Every fixture body (not headers, not oracles), as oracle keys."""
    return sorted(
        str(p.relative_to(FIXTURES))
        for p in FIXTURES.rglob("*.json")
        if not p.name.endswith(".headers.json") and p.name != "expected.json"
    )


def _unix(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def check(result: TaskEvent | Ignored, want: dict[str, Any]) -> None:
    """Assert that ``result`` is what the oracle entry ``want`` says."""
    if want.get("ignored"):
        assert isinstance(result, Ignored), result
        return
    assert isinstance(result, TaskEvent), result
    event = result
    plain = ("provider", "task_id", "status", "provider_status", "final", "model", "task_type")
    for key in (*plain, "test", "progress"):
        if key in want:
            assert getattr(event, key) == want[key], key
    if "prompt" in want:
        assert event.prompt is not None and want["prompt"] in event.prompt, event.prompt
    if "outputs" in want:
        got = [(o.kind, o.text if o.kind == "text" and not o.url else o.url) for o in event.outputs]
        assert len(got) == len(want["outputs"]), got
        for (kind, value), (want_kind, part) in zip(got, want["outputs"], strict=True):
            assert kind == want_kind, got
            assert value and part in value, (value, part)
        # Never an output without its content.
        for output in event.outputs:
            assert output.url or output.text, output
    if "error" in want:
        if want["error"] is None:
            assert event.error is None
        else:
            assert event.error is not None and want["error"] in event.error.message, event.error
    if "expires_at" in want:
        expiries = {_unix(o.expires_at) for o in event.outputs if o.url}
        assert expiries == {want["expires_at"]}, expiries
    if "finished_at" in want:
        if want["finished_at"] is None:
            assert event.finished_at is None
        else:
            assert _unix(event.finished_at) == want["finished_at"]
    if "duration_s" in want:
        if want["duration_s"] is None:
            assert event.duration_s is None
        else:
            assert event.duration_s is not None
            assert abs(event.duration_s - want["duration_s"]) <= 1, event.duration_s
