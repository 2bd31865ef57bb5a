"""The Standard Webhooks adapter: another relay's signed envelope back into a TaskEvent."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from relay import signing
from relay.channels.base import Delivery
from relay.channels.webhook import render_body
from relay.errors import PayloadError, VerificationError
from relay.events import Output, TaskError, TaskEvent
from relay.providers import default_providers
from relay.providers.base import Inbound
from relay.providers.standard import StandardProvider
from relay.routing.model import SourceConfig
from tests.events_factory import make_event

NOW = datetime(2025, 7, 1, 12, 0, 0, tzinfo=UTC)
NOW_TS = int(NOW.timestamp())
KEY = b"relay-a-to-relay-b-key-0123456789"
OLD_KEY = b"the-previous-key-being-rotated-out"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
PROVIDER = StandardProvider()


def config(secret: str | None = SECRET, window: float = 300.0) -> SourceConfig:
    return SourceConfig(
        provider="standard",
        secret=SecretStr(secret) if secret is not None else None,
        replay_window=window,
    )


def upstream_event(**overrides: Any) -> TaskEvent:
    fields: dict[str, Any] = {
        "id": "evt_upstream_1",
        "source": "goapi",
        "provider": "goapi",
        "task_id": "task-42",
        "dedupe_key": "task-42:completed:1751371100",
        "model": "kling",
        "task_type": "video_generation",
        "prompt": "a cat surfing",
        "status": "succeeded",
        "provider_status": "completed",
        "progress": 100,
        "outputs": [
            Output(kind="video", url="https://cdn.example/v.mp4", width=1280, height=720),
            Output(kind="text", text="a caption"),
        ],
        "created_at": datetime(2025, 7, 1, 11, 58, tzinfo=UTC),
        "finished_at": datetime(2025, 7, 1, 11, 59, tzinfo=UTC),
        "duration_s": 60.0,
        "received_at": datetime(2025, 7, 1, 11, 59, 30, tzinfo=UTC),
        "usage": {"credits": 3},
        "raw": {"data": {"task_id": "task-42", "config": {"secret": "[redacted]"}}},
    }
    fields.update(overrides)
    return make_event(**fields)


def envelope_bytes(event: TaskEvent | None = None) -> bytes:
    """Exactly what relay A's webhook channel sends for this event."""
    return render_body(Delivery("dlv_1", "relay-b", 1, event or upstream_event()), "event")


def signed(
    body: bytes,
    *,
    key: bytes = KEY,
    msg_id: str = "dlv_1",
    timestamp: int = NOW_TS,
) -> dict[str, str]:
    return signing.headers([key], msg_id, timestamp, body)


def inbound(
    body: bytes,
    headers: dict[str, str] | None = None,
    source_config: SourceConfig | None = None,
    *,
    verify: bool = True,
) -> Inbound:
    return Inbound(
        source="from-relay-a",
        config=source_config or config(),
        headers=signed(body) if headers is None else headers,
        body=body,
        received_at=NOW,
        verify=verify,
    )


def receive(body: bytes, headers: dict[str, str] | None = None, **kw: Any) -> TaskEvent:
    req = inbound(body, headers, **kw)
    PROVIDER.authenticate(req)
    event = PROVIDER.normalize(req, json.loads(body), "evt_ours")
    assert isinstance(event, TaskEvent)
    return event


def test_registered_as_standard() -> None:
    assert isinstance(default_providers()["standard"], StandardProvider)
    assert PROVIDER.name == "standard"


def test_a_relay_envelope_comes_back_as_the_same_event_under_our_identity() -> None:
    sent = upstream_event()
    event = receive(envelope_bytes(sent))
    assert event.id == "evt_ours"
    assert event.source == "from-relay-a"
    assert event.received_at == NOW
    assert event.dedupe_key == "dlv_1"
    kept = set(TaskEvent.model_fields) - {"id", "source", "received_at", "dedupe_key", "raw"}
    for name in kept:
        assert getattr(event, name) == getattr(sent, name), name
    # The envelope is the raw body: the upstream event id stays findable there.
    assert event.raw["type"] == "task.succeeded"
    assert event.raw["data"]["id"] == "evt_upstream_1"
    TaskEvent.model_validate_json(event.model_dump_json())


@pytest.mark.parametrize("status", ["pending", "processing", "succeeded", "failed", "cancelled"])
def test_every_status_round_trips(status: str) -> None:
    error = TaskError(code="E1", message="prompt rejected") if status == "failed" else None
    sent = upstream_event(status=status, final=status not in ("pending", "processing"), error=error)
    event = receive(envelope_bytes(sent))
    assert (event.status, event.final, event.error) == (sent.status, sent.final, sent.error)


def test_the_webhook_id_is_the_dedupe_key_so_a_retry_is_a_duplicate() -> None:
    body = envelope_bytes()
    first = receive(body, signed(body, msg_id="dlv_7", timestamp=NOW_TS - 100))
    retry = receive(body, signed(body, msg_id="dlv_7", timestamp=NOW_TS))
    other = receive(body, signed(body, msg_id="dlv_8"))
    assert first.dedupe_key == retry.dedupe_key == "dlv_7"
    assert other.dedupe_key == "dlv_8"


def test_secrets_in_the_envelope_are_redacted() -> None:
    sent = upstream_event(raw={"secret": "leaked", "nested": {"api_key": "k-123"}})
    event = receive(envelope_bytes(sent))
    dumped = event.model_dump_json()
    assert "leaked" not in dumped and "k-123" not in dumped


def test_tampered_body_is_401() -> None:
    body = envelope_bytes()
    tampered = body.replace(b"a cat surfing", b"a dog surfing")
    with pytest.raises(VerificationError) as info:
        PROVIDER.authenticate(inbound(tampered, signed(body)))
    assert info.value.reason == "webhook-signature: no signature matches"


def test_wrong_key_is_401() -> None:
    body = envelope_bytes()
    with pytest.raises(VerificationError, match="no signature matches"):
        PROVIDER.authenticate(inbound(body, signed(body, key=b"someone-else-entirely")))


def test_rotated_keys() -> None:
    body = envelope_bytes()
    both = config(f"{OLD_SECRET} {SECRET}")
    # A sender still on the old key and one already on the new key are both accepted.
    PROVIDER.authenticate(inbound(body, signed(body, key=OLD_KEY), both))
    PROVIDER.authenticate(inbound(body, signed(body, key=KEY), both))
    # Once the old secret is dropped, its signatures stop working.
    with pytest.raises(VerificationError):
        PROVIDER.authenticate(inbound(body, signed(body, key=OLD_KEY), config(SECRET)))


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (-301, "is too old (outside the 300 s replay window)"),
        (301, "is in the future (outside the 300 s replay window)"),
    ],
)
def test_stale_or_future_timestamp_is_401(offset: int, reason: str) -> None:
    body = envelope_bytes()
    with pytest.raises(VerificationError) as info:
        PROVIDER.authenticate(inbound(body, signed(body, timestamp=NOW_TS + offset)))
    assert info.value.reason == f"webhook-timestamp {NOW_TS + offset} {reason}"


def test_replay_window_follows_config() -> None:
    body = envelope_bytes()
    old = signed(body, timestamp=NOW_TS - 500)
    with pytest.raises(VerificationError, match="60 s replay window"):
        PROVIDER.authenticate(inbound(body, old, config(window=60)))
    PROVIDER.authenticate(inbound(body, old, config(window=600)))


GOOD_BODY = envelope_bytes()
GOOD = signed(GOOD_BODY)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"webhook-id": None}, "webhook-id header missing"),
        ({"webhook-id": ""}, "webhook-id header missing"),
        ({"webhook-timestamp": None}, "webhook-timestamp header missing"),
        ({"webhook-timestamp": "yesterday"}, "webhook-timestamp: not an integer"),
        ({"webhook-timestamp": "1.7e9"}, "webhook-timestamp: not an integer"),
        ({"webhook-signature": None}, "webhook-signature header missing"),
        ({"webhook-signature": "garbage"}, "webhook-signature: no valid v1 signature"),
        ({"webhook-signature": "v1"}, "webhook-signature: no valid v1 signature"),
        ({"webhook-signature": "v1,not base64!"}, "webhook-signature: no valid v1 signature"),
        ({"webhook-signature": "v2,AAAA"}, "webhook-signature: no valid v1 signature"),
        ({"webhook-signature": "v1,AAAA"}, "webhook-signature: no signature matches"),
    ],
)
def test_every_malformed_header_is_401_with_a_reason(
    changes: dict[str, str | None], reason: str
) -> None:
    headers = dict(GOOD)
    for name, value in changes.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(VerificationError) as info:
        PROVIDER.authenticate(inbound(GOOD_BODY, headers))
    assert info.value.reason.startswith(reason)
    assert GOOD["webhook-signature"] not in info.value.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([1, 2], "body: not a JSON object"),
        ("task.succeeded", "body: not a JSON object"),
        ({"data": {}}, "type: not a relay task event"),
        ({"type": "invoice.paid", "data": {}}, "type: not a relay task event"),
        ({"type": 7, "data": {}}, "type: not a relay task event"),
        ({"type": "task.succeeded"}, "data: missing or not an object"),
        ({"type": "task.succeeded", "data": []}, "data: missing or not an object"),
        ({"type": "task.succeeded", "data": {}}, "data.provider: Field required"),
        ({"type": "task.succeeded", "data": {"other": "shape"}}, "data.provider: Field required"),
    ],
)
def test_a_body_that_is_not_a_relay_envelope_is_400(payload: Any, reason: str) -> None:
    body = json.dumps(payload).encode()
    with pytest.raises(PayloadError) as info:
        PROVIDER.normalize(inbound(body), payload, "evt_ours")
    assert info.value.reason.startswith(reason)


def envelope_dict(**data_changes: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(envelope_bytes())
    envelope["data"].update(data_changes)
    return envelope


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "done"}, "data.status: Input should be"),
        ({"task_id": 42}, "data.task_id: Input should be a valid string"),
        ({"task_id": ""}, "data.task_id: blank"),
        ({"task_id": " \t"}, "data.task_id: blank"),
        ({"outputs": [{"kind": "hologram"}]}, "data.outputs.0.kind: Input should be"),
        ({"created_at": "not a time"}, "data.created_at: Input should be a valid datetime"),
    ],
)
def test_a_bad_event_field_is_400_naming_it(changes: dict[str, Any], reason: str) -> None:
    payload = envelope_dict(**changes)
    with pytest.raises(PayloadError) as info:
        PROVIDER.normalize(inbound(json.dumps(payload).encode()), payload, "evt_ours")
    assert info.value.reason.startswith(reason)


def test_fields_a_newer_sender_adds_are_kept_in_raw_not_refused() -> None:
    # Relays in a chain are upgraded one at a time: a 400 here would kill the delivery.
    payload = envelope_dict(surprise={"from": "the future"})
    event = PROVIDER.normalize(inbound(json.dumps(payload).encode()), payload, "evt_ours")
    assert isinstance(event, TaskEvent)
    assert "surprise" not in event.model_dump()
    assert event.raw["data"]["surprise"] == {"from": "the future"}


def test_type_must_match_the_status() -> None:
    payload = envelope_dict()
    payload["type"] = "task.failed"
    with pytest.raises(PayloadError, match=r"^type: 'task.failed' does not match data.status"):
        PROVIDER.normalize(inbound(json.dumps(payload).encode()), payload, "evt_ours")


def test_dry_run_without_headers_falls_back_to_the_upstream_id() -> None:
    payload = envelope_dict()
    event = PROVIDER.normalize(inbound(b"{}", {}, verify=False), payload, "evt_ours")
    assert isinstance(event, TaskEvent)
    assert event.dedupe_key == "evt_upstream_1"


def test_authenticate_without_a_usable_secret_is_refused() -> None:
    body = envelope_bytes()
    with pytest.raises(VerificationError, match="needs a whsec_ secret"):
        PROVIDER.authenticate(inbound(body, source_config=config(None)))
    with pytest.raises(VerificationError, match="no valid whsec_ secret"):
        PROVIDER.authenticate(inbound(body, source_config=config("not-a-whsec")))


@pytest.mark.parametrize(
    ("secret", "problems"),
    [
        (SECRET, []),
        (f"{OLD_SECRET} {SECRET}", []),
        (f"  {OLD_SECRET}\n{SECRET} ", []),
        (None, [("secret", "is required: one or more whsec_ secrets, separated by spaces")]),
        ("", []),  # the loader itself reports an empty secret
        ("   ", [("secret", "holds no whsec_ secret")]),
        ("plain-shared-secret", [("secret", "webhook secret must start with whsec_")]),
        ("whsec_", [("secret", "webhook secret is empty after whsec_")]),
        (
            f"{SECRET} whsec_***",
            [("secret", "webhook secret is not valid base64 after whsec_ (secret 2 of 2)")],
        ),
    ],
)
def test_check_source(secret: str | None, problems: list[tuple[str, str]]) -> None:
    assert PROVIDER.check_source(config(secret)) == problems
    for _, message in problems:
        assert "***" not in message and "plain-shared-secret" not in message


# The property: any JSON value normalizes to a TaskEvent or raises PayloadError, nothing else.

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def mostly(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten: enough valid values that many examples become events."""
    return st.integers(0, 9).flatmap(lambda n: other if n == 0 else good)


TIMES = st.sampled_from(["2025-07-01T12:00:00Z", "2025-07-01T12:00:00.123+02:00", 1751371200])
OUTPUTS = st.lists(
    mostly(
        st.fixed_dictionaries(
            {"kind": mostly(st.sampled_from(["image", "video", "text"]), JSON)},
            optional={"url": mostly(st.text(max_size=20), JSON), "width": st.integers()},
        ),
        JSON,
    ),
    max_size=3,
)
DATA = st.fixed_dictionaries(
    {
        "provider": mostly(st.just("goapi"), JSON),
        "task_id": mostly(st.text(max_size=10), JSON),
        "status": mostly(
            st.sampled_from(["pending", "processing", "succeeded", "failed", "cancelled"]),
            st.just("done") | JSON,
        ),
        "provider_status": mostly(st.just("completed"), JSON),
        "final": mostly(st.booleans(), JSON),
    },
    optional={
        "id": JSON,
        "source": JSON,
        "dedupe_key": JSON,
        "received_at": JSON,
        "raw": JSON,
        "created_at": mostly(TIMES, JSON),
        "outputs": mostly(OUTPUTS, JSON),
        "error": mostly(st.fixed_dictionaries({"message": st.text(max_size=10)}), JSON),
        "progress": mostly(st.integers(0, 100), JSON),
        "usage": mostly(st.dictionaries(st.sampled_from(["credits", "token"]), JSON), JSON),
        "secret": JSON,
    },
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(mostly(DATA, JSON))
    status = data.get("status") if isinstance(data, dict) else None
    # Mostly the type the sender derives from the status, so that many examples get through.
    matching = f"task.{status}" if isinstance(status, str) else "task.succeeded"
    kind = draw(mostly(st.just(matching), st.sampled_from(["task.failed", "task.", "ping"]) | JSON))
    envelope = {"type": kind, "data": data}
    if draw(st.booleans()):
        envelope["timestamp"] = draw(mostly(TIMES, JSON))
    return envelope


PAYLOADS = mostly(envelopes(), JSON)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS)
def test_any_json_gives_an_event_or_a_payload_error(payload: Any) -> None:
    req = inbound(b"{}", {"webhook-id": "dlv_1"})
    try:
        result = PROVIDER.normalize(req, payload, "evt_ours")
    except PayloadError:
        return
    assert isinstance(result, TaskEvent)
    assert (result.id, result.source, result.dedupe_key) == ("evt_ours", "from-relay-a", "dlv_1")
    # The event must survive the trip to JSON (the store and the webhook channel need it).
    TaskEvent.model_validate_json(result.model_dump_json())
