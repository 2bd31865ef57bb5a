"""Small builders for TaskEvents in tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from relay.events import Output, TaskEvent


def make_event(**overrides: Any) -> TaskEvent:
    task_id = overrides.pop("task_id", uuid.uuid4().hex)
    status = overrides.pop("status", "succeeded")
    fields: dict[str, Any] = {
        "id": f"evt_{uuid.uuid4().hex}",
        "source": "goapi",
        "provider": "goapi",
        "task_id": task_id,
        "dedupe_key": f"{task_id}:{status}",
        "status": status,
        "provider_status": {"succeeded": "completed"}.get(status, status),
        "final": status in ("succeeded", "failed", "cancelled"),
        "model": "luma",
        "task_type": "video_generation",
        "outputs": [Output(kind="video", url="https://cdn.example/v.mp4")],
        "received_at": datetime.now(UTC),
        "raw": {"data": {"task_id": task_id}},
    }
    fields.update(overrides)
    return TaskEvent(**fields)
