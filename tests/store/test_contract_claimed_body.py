"""A claimed delivery's webhook body is built from the event's JSON as the store keeps it,
without parsing it: on every backend it must be byte for byte the body built from the event
itself, and the claim's event (parsed when read) must be the event that was ingested. The
fields a claim reads from the store's columns rather than the JSON (for the envelope and the
log lines) must be the JSON's."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from relay.channels.base import Delivery
from relay.channels.webhook import render_body
from relay.events import Output, StoredEvent, TaskError, TaskEvent, field_of
from relay.store.base import NewDelivery, Store
from tests.store.conftest import T0


def rich_event() -> TaskEvent:
    return TaskEvent(
        id="evt_body",
        source="goapi",
        provider="goapi",
        task_id="task-ü-1",
        dedupe_key="goapi:task-ü-1:failed",
        model="flux-1",
        task_type="txt2img",
        prompt='a "quoted" prompt ✓ \\ with\nnewlines and \u2028',
        labels={"team": "vision"},
        status="failed",
        provider_status="failed",
        progress=100,
        final=True,
        outputs=[
            Output(kind="image", url="https://cdn.example/a.png", width=1024, height=768),
            Output(kind="text", text="caption ✓"),
        ],
        error=TaskError(code="E42", message="NSFW detected", detail="blocked"),
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        finished_at=datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC),
        duration_s=54.322,
        received_at=datetime.fromtimestamp(T0 + 0.123456, UTC),
        usage={"credits": 1.5, "nested": [1, None, True]},
        raw={"data": {"task_id": "task-ü-1", "secret": "[redacted]", "list": [1.0, 2.5e-7]}},
    )


async def test_the_body_of_a_claimed_delivery_is_that_of_its_event(store: Store) -> None:
    event = rich_event()
    await store.ingest(event, [NewDelivery("dlv_body", "hook", 0)])
    [claim] = await store.claim(now=T0 + 1, limit=10, lease_seconds=30)
    claimed = Delivery(claim.delivery_id, claim.destination, claim.attempt, claim.event_data)
    built = Delivery(claim.delivery_id, claim.destination, claim.attempt, event)
    for mode, include_raw in (("event", True), ("event", False), ("original", True)):
        assert render_body(claimed, mode, include_raw=include_raw) == render_body(
            built, mode, include_raw=include_raw
        )
    assert claim.event == event
    assert b'"type":"task.failed","timestamp":"2023-11-14T22:13:20.123456Z","data":{' in (
        render_body(claimed, "event")
    )


async def test_the_fields_a_claim_reads_without_parsing_are_the_events(store: Store) -> None:
    event = rich_event()
    await store.ingest(event, [NewDelivery("dlv_fields", "hook", 0)])
    [claim] = await store.claim(now=T0 + 1, limit=10, lease_seconds=30)
    parsed = json.loads(event.model_dump_json())
    for name in ("id", "source", "task_id", "status"):
        assert field_of(claim.event_data, name) == parsed[name]
    received = field_of(claim.event_data, "received_at")
    if isinstance(received, str):
        received = datetime.fromisoformat(received)
    assert received == event.received_at


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC),
    )
)
def test_a_received_time_read_back_from_its_unix_time_is_exact(at: datetime) -> None:
    # The events table keeps received_at as a double; the envelope's timestamp is made from it.
    stored = StoredEvent.from_row(
        "{}", id="e", source="s", task_id="t", status="succeeded", received_at=at.timestamp()
    )
    assert datetime.fromisoformat(stored.field("received_at")) == at
