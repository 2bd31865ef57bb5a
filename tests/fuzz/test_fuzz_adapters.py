"""Fuzzing every provider adapter through its verified path, and what it makes of a callback
through every renderer.

The contract suite (tests/unit/test_provider_contract.py) proves that any JSON gives an event,
an ``Ignored`` or our own error. This goes further, with callbacks that pass authentication
(the right secret header, URL token or Standard Webhooks signature, a fresh timestamp) so
mutated fixtures reach deep into each adapter. For any such callback:

- ``authenticate`` then ``normalize`` give a TaskEvent, an ``Ignored`` with a reason, or a
  PayloadError / VerificationError: nothing else (no KeyError, TypeError, AttributeError);
- the event is valid: our id and source, a known status whose ``final`` agrees with it, a
  progress of 0-100 or none, a task id and dedupe key, routing labels of strings, and it
  survives the JSON round trip the store makes;
- it renders: a Slack message within limits with no remote markup, and a mail sent as rendered.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from relay.errors import PayloadError, VerificationError
from relay.events import FINAL_STATUSES, STATUSES, TaskEvent
from relay.providers import default_providers
from relay.providers.base import Ignored, Inbound
from relay.render.slack import slack_message, slack_thread_reply
from relay.routing.model import SourceConfig
from tests.fuzz.strategies import JSON, PROVIDER_FIXTURES, mutated, near_fixtures
from tests.fuzz.test_fuzz_render import assert_inert, assert_mail_on_the_wire
from tests.render.fixture_events import PROVIDER_NAMES, fixture_events
from tests.render.test_slack_render import assert_within_limits
from tests.unit.test_provider_contract import SECRET, TOKEN, WHSEC, source

PROVIDERS = sorted(default_providers())
EVENT_ID = "evt_01JFUZZ0000000000000000000"

# The standard provider reads relay's own envelope: every fixture's event, enveloped.
ENVELOPES = [
    {
        "type": f"task.{event.status}",
        "timestamp": event.received_at.isoformat(),
        "data": event.model_dump(mode="json"),
    }
    for _, event in fixture_events()
    if isinstance(event, TaskEvent)
]
SAMPLES: dict[str, list[Any]] = {**PROVIDER_FIXTURES, "standard": ENVELOPES}
# The body timestamps of the fixtures that carry one: refreshed when a draw leaves them as is,
# so the replay window lets the callback through.
_FIXTURE_TIMESTAMPS = {
    sample["timestamp"]
    for samples in SAMPLES.values()
    for sample in samples
    if isinstance(sample, dict) and isinstance(sample.get("timestamp"), int)
}


def _payloads(name: str) -> st.SearchStrategy[Any]:
    samples = SAMPLES[name]
    return st.one_of(JSON, near_fixtures(samples), mutated(samples), mutated(samples))


def verified_inbound(name: str, config: SourceConfig, payload: Any) -> Inbound:
    """The callback as the endpoint hands it over, carrying the right proof for its source."""
    stamp = payload.get("timestamp") if isinstance(payload, dict) else None
    if isinstance(stamp, int) and stamp in _FIXTURE_TIMESTAMPS:
        payload["timestamp"] = int(time.time())
    body = json.dumps(payload)
    now = datetime.now(UTC)
    headers = {"content-type": "application/json"}
    if name == "standard":
        headers["webhook-id"] = "msg_fuzz"
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = Webhook(WHSEC).sign("msg_fuzz", now, body)
    elif config.secret is not None:
        headers["x-webhook-secret"] = SECRET
    return Inbound(
        source=f"{name}-main",
        config=config,
        headers=headers,
        body=body.encode(),
        received_at=now,
        path_token=TOKEN if config.token is not None else None,
    )


def adapt(name: str, payload: Any) -> TaskEvent | Ignored | None:
    """What the receiver's verify-and-normalize makes of ``payload``; None for our own
    refusal (PayloadError, VerificationError). Any other exception fails the test."""
    provider = default_providers()[name]
    config = source(name)
    inbound = verified_inbound(name, config, payload)
    try:
        provider.authenticate(inbound)
        return provider.normalize(inbound, payload, EVENT_ID)
    except (PayloadError, VerificationError) as exc:
        assert exc.reason and exc.status in (400, 401)
        for secret in (SECRET, TOKEN, WHSEC):
            assert secret not in exc.reason
        return None


def assert_valid_event(name: str, event: TaskEvent) -> None:
    assert event.id == EVENT_ID
    assert event.source == f"{name}-main"
    assert event.status in STATUSES
    assert event.final == (event.status in FINAL_STATUSES), (event.status, event.final)
    assert event.progress is None or 0 <= event.progress <= 100, event.progress
    assert event.task_id and event.dedupe_key
    assert isinstance(event.provider_status, str)
    for values in event.match_labels().values():
        assert values and all(isinstance(v, str) for v in values)
    again = TaskEvent.model_validate_json(event.model_dump_json())
    assert again.model_dump(mode="json") == event.model_dump(mode="json")


@pytest.mark.parametrize("name", PROVIDERS)
def test_every_unchanged_fixture_passes_the_verified_path(name: str) -> None:
    """The fuzz below is not all refusals: each fixture, as recorded, is let through."""
    for sample in SAMPLES[name]:
        result = adapt(name, json.loads(json.dumps(sample)))
        assert result is not None, sample


@pytest.mark.parametrize("name", PROVIDERS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_verified_callback_gives_a_valid_event_that_renders(
    name: str, data: st.DataObject
) -> None:
    result = adapt(name, data.draw(_payloads(name)))
    if result is None:
        return
    if isinstance(result, Ignored):
        assert result.reason
        return
    assert_valid_event(name, result)
    message = slack_message(result, PROVIDER_NAMES)
    assert_within_limits(message)
    assert_inert(message, result)
    reply = slack_thread_reply(result, PROVIDER_NAMES)
    if reply is not None:
        assert_within_limits(reply)
        assert_inert(reply, result)
    assert_mail_on_the_wire(result, None)
