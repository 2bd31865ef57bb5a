"""The MuAPI adapter against the shared fixtures (expected.json is the oracle) and its quirks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from relay.errors import PayloadError, VerificationError
from relay.events import TaskEvent
from relay.providers import default_providers
from relay.providers.base import Ignored, Inbound
from relay.providers.muapi import MuapiProvider
from relay.routing.model import SourceConfig
from tests.fixtures_util import expected, load

EXPECTED = expected()
CASES = sorted(k for k in EXPECTED if k.startswith("muapi/"))

NOW = datetime(2025, 9, 14, 12, 0, 0, tzinfo=UTC)
TOKEN = "muapi-url-token-0123456789"


def config(**changes: Any) -> SourceConfig:
    values: dict[str, Any] = {"provider": "muapi", "token": SecretStr(TOKEN)}
    values.update(changes)
    return SourceConfig(**values)


def inbound(payload: Any, cfg: SourceConfig | None = None) -> Inbound:
    return Inbound(
        source="muapi-main",
        config=cfg or config(),
        headers={"content-type": "application/json"},
        body=json.dumps(payload).encode(),
        received_at=NOW,
        path_token=TOKEN,
        query={"token": TOKEN},
    )


def normalize(payload: Any) -> TaskEvent:
    event = MuapiProvider().normalize(inbound(payload), payload, "ev-1")
    assert isinstance(event, TaskEvent)
    return event


def body(**fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": "req-1", "status": "completed", "outputs": []}
    payload.update(fields)
    return payload


@pytest.mark.parametrize("name", CASES)
def test_fixture_matches_oracle(name: str) -> None:
    want = EXPECTED[name]
    payload, _ = load(name)
    provider_status = payload["status"]
    nsfw = list(payload["has_nsfw_contents"])
    provider = MuapiProvider()
    req = inbound(payload)
    provider.authenticate(req)
    event = provider.normalize(req, payload, "ev-1")

    assert isinstance(event, TaskEvent)
    assert (event.provider, event.id, event.source) == ("muapi", "ev-1", "muapi-main")
    assert event.received_at == NOW
    assert event.task_id == want["task_id"]
    assert event.status == want["status"]
    assert event.final is want["final"]
    assert event.provider_status == provider_status
    assert event.test is want.get("test", False)
    got = [(o.kind, o.url) for o in event.outputs]
    assert len(got) == len(want.get("outputs", [])), got
    for (kind, url), (want_kind, want_part) in zip(got, want.get("outputs", []), strict=True):
        assert kind == want_kind
        assert url is not None and want_part in url
    # MuAPI gives no expiry and its CDN URLs are not presigned.
    want_expiry = want.get("expires_at")
    assert all(
        (int(o.expires_at.timestamp()) if o.expires_at else None) == want_expiry
        for o in event.outputs
    )
    assert [o.nsfw for o in event.outputs] == nsfw
    if "error" in want:
        assert event.error is not None
        assert want["error"] in event.error.message
    else:
        assert event.error is None
    if "duration_s" in want:
        assert event.duration_s is not None
        assert abs(event.duration_s - want["duration_s"]) <= 1
    assert event.dedupe_key == f"{event.task_id}:{event.provider_status.lower()}"
    TaskEvent.model_validate_json(event.model_dump_json())


def test_fixture_timing_is_read_as_seconds() -> None:
    payload, _ = load("muapi/image_success.json")
    event = normalize(payload)
    # executionTime 6.84 next to timings.inference 6212 (ms): seconds, not milliseconds.
    assert event.duration_s == 6.84
    assert event.created_at == datetime(2025, 9, 14, 10, 21, 7, 412000, tzinfo=UTC)
    assert event.finished_at is None


def test_registered_by_name() -> None:
    assert isinstance(default_providers()["muapi"], MuapiProvider)
    assert MuapiProvider().name == "muapi"


# -- source checks and authentication ---------------------------------------------------------


def test_check_source_accepts_a_token() -> None:
    assert MuapiProvider().check_source(config()) == []


def test_check_source_requires_a_token_and_refuses_a_secret() -> None:
    assert MuapiProvider().check_source(SourceConfig(provider="muapi")) == [
        ("token", "is required: MuAPI signs nothing, the URL token is the only proof")
    ]
    assert MuapiProvider().check_source(config(secret=SecretStr("s"))) == [
        ("secret", "is not used by MuAPI: put the token in the URL instead")
    ]


def test_authenticate_has_nothing_more_to_check() -> None:
    MuapiProvider().authenticate(inbound(body()))


def test_authenticate_refuses_a_source_without_token() -> None:
    with pytest.raises(VerificationError, match="token"):
        MuapiProvider().authenticate(inbound(body(), SourceConfig(provider="muapi")))


# -- quirks -----------------------------------------------------------------------------------


def test_kind_is_inferred_from_the_extension() -> None:
    outputs = [
        "https://cdn.muapi.ai/o/a.PNG",
        "https://cdn.muapi.ai/o/b.jpeg?x=1",
        "https://cdn.muapi.ai/o/c.mp4",
        "https://cdn.muapi.ai/o/d.webm#t=1",
        "https://cdn.muapi.ai/o/e.mp3",
        "https://cdn.muapi.ai/o/f.wav",
        "https://cdn.muapi.ai/o/g.glb",
        "https://cdn.muapi.ai/o/h.obj",
        "https://cdn.muapi.ai/o/i.zip",
        "https://cdn.muapi.ai/o/no-extension",
    ]
    event = normalize(body(outputs=outputs))
    assert [o.kind for o in event.outputs] == [
        "image", "image", "video", "video", "audio", "audio", "model3d", "model3d", "file", "file",
    ]  # fmt: skip
    assert [o.url for o in event.outputs] == outputs


def test_nsfw_flags_are_zipped_onto_outputs() -> None:
    outputs = ["https://c.example/1.png", "https://c.example/2.png", "https://c.example/3.png"]
    event = normalize(body(outputs=outputs, has_nsfw_contents=[False, True, False]))
    assert [o.nsfw for o in event.outputs] == [False, True, False]


def test_a_shorter_nsfw_list_leaves_the_rest_unknown() -> None:
    outputs = ["https://c.example/1.png", "https://c.example/2.png", "https://c.example/3.png"]
    event = normalize(body(outputs=outputs, has_nsfw_contents=[True]))
    assert [o.nsfw for o in event.outputs] == [True, None, None]


@pytest.mark.parametrize("flags", [None, "yes", {}, [], ["true", 1, None]])
def test_missing_or_odd_nsfw_flags_are_unknown(flags: Any) -> None:
    payload = body(outputs=["https://c.example/1.png"])
    if flags is not None:
        payload["has_nsfw_contents"] = flags
    assert normalize(payload).outputs[0].nsfw is None


def test_skipped_junk_outputs_do_not_shift_the_flags() -> None:
    outputs = [None, "", "https://c.example/1.png", "data:x", "https://c.example/2.png"]
    flags = [True, True, False, True, True]
    event = normalize(body(outputs=outputs, has_nsfw_contents=flags))
    assert [(o.url, o.nsfw) for o in event.outputs] == [
        ("https://c.example/1.png", False),
        ("https://c.example/2.png", True),
    ]


@pytest.mark.parametrize("outputs", [None, "", {}, 5, [1, {}, []], ["data:x", "/tmp/a.png"]])
def test_odd_outputs_give_none(outputs: Any) -> None:
    assert normalize(body(outputs=outputs)).outputs == []


def test_presigned_output_gets_its_expiry() -> None:
    url = (
        "https://bucket.s3.amazonaws.com/o.mp4?X-Amz-Date=20250914T110000Z"
        "&X-Amz-Expires=3600&X-Amz-Signature=abc"
    )
    event = normalize(body(outputs=[url]))
    assert event.outputs[0].expires_at == datetime(2025, 9, 14, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "status", "final"),
    [
        ("completed", "succeeded", True),
        ("Completed", "succeeded", True),
        ("failed", "failed", True),
        ("FAILED", "failed", True),
        ("cancelled", "cancelled", True),
        ("canceled", "cancelled", True),
        ("processing", "processing", False),
        ("queued", "pending", False),
        ("pending", "pending", False),
        ("brand_new", "processing", False),
    ],
)
def test_status_mapping(raw: str, status: str, final: bool) -> None:
    event = normalize(body(status=raw))
    assert (event.status, event.final, event.provider_status) == (status, final, raw)
    assert event.dedupe_key == f"req-1:{raw.lower()}"


def test_progress_only_when_given() -> None:
    assert normalize(body(status="processing")).progress is None
    assert normalize(body(status="processing", progress=33.4)).progress == 33
    assert normalize(body()).progress == 100


def test_request_id_names_the_task_when_id_is_missing() -> None:
    payload = body(request_id="req-2")
    del payload["id"]
    assert normalize(payload).task_id == "req-2"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("id"), "id:"),
        (lambda p: p.update(id=""), "id:"),
        (lambda p: p.update(id=42), "id:"),
        (lambda p: p.update(id=None, request_id=[1]), "id:"),
        (lambda p: p.pop("status"), "status:"),
        (lambda p: p.update(status=None), "status:"),
        (lambda p: p.update(status=["completed"]), "status:"),
    ],
)
def test_missing_required_field_names_it(mutate: Any, field: str) -> None:
    payload = body()
    mutate(payload)
    with pytest.raises(PayloadError) as info:
        normalize(payload)
    assert info.value.reason.startswith(field), info.value.reason


@pytest.mark.parametrize("payload", [[], "x", 3, None, True])
def test_body_not_an_object(payload: Any) -> None:
    with pytest.raises(PayloadError, match=r"^body"):
        normalize(payload)


@pytest.mark.parametrize(
    ("error", "want"),
    [
        ("Failed to download image: 403 Forbidden", "Failed to download image: 403 Forbidden"),
        ("  padded  ", "padded"),
        ({"message": "as an object"}, "as an object"),
    ],
)
def test_error_string(error: Any, want: str) -> None:
    event = normalize(body(status="failed", error=error))
    assert event.error is not None
    assert (event.error.message, event.error.code) == (want, None)


@pytest.mark.parametrize("error", [None, "", "   ", 7, [], {}, {"message": ""}])
def test_no_error(error: Any) -> None:
    assert normalize(body(error=error)).error is None


@pytest.mark.parametrize(
    ("value", "want"),
    [(6.84, 6.84), ("2.13", 2.13), (0, 0.0), (12, 12.0), (-1, None), ("<time>", None),
     (None, None), (True, None), ([], None)],
)  # fmt: skip
def test_execution_time_is_seconds(value: Any, want: float | None) -> None:
    assert normalize(body(executionTime=value)).duration_s == want


def test_model_created_at_and_cost() -> None:
    cost = {"amount_usd": 0.0042, "amount_credits": 1}
    event = normalize(body(model="flux-dev", created_at="2025-09-14T10:21:07Z", cost=cost))
    assert event.model == "flux-dev"
    assert event.created_at == datetime(2025, 9, 14, 10, 21, 7, tzinfo=UTC)
    assert event.usage == cost


def test_odd_optional_fields_are_ignored() -> None:
    event = normalize(body(model=3, created_at="whenever", cost=[1], urls="x", timings=None))
    assert (event.model, event.created_at, event.usage) == (None, None, None)


# -- result families (tests/fixtures/providers/muapi/families): what the oracle cannot say -----


def family(name: str) -> TaskEvent:
    payload, _ = load(f"muapi/families/{name}")
    return normalize(payload)


def test_family_nsfw_flags_stay_with_their_images() -> None:
    assert [o.nsfw for o in family("image_four_with_nsfw.json").outputs] == [
        False,
        True,
        False,
        False,
    ]


def test_an_llm_answer_is_one_text_output_kept_as_sent() -> None:
    (output,) = family("text_llm.json").outputs
    assert (output.kind, output.url) == ("text", None)
    assert output.text is not None and output.text.startswith("```json")


def test_the_submit_answer_is_a_progress_event_with_its_cost() -> None:
    event = family("submit_processing.json")
    assert (event.status, event.final, event.usage) == (
        "processing",
        False,
        {"amount_usd": 0.35, "amount_credits": 70, "bonus_credits_used": 0, "refunded": False},
    )


def test_a_lone_url_and_a_map_of_urls_are_read() -> None:
    assert [o.url for o in normalize(body(outputs="https://c.example/1.png")).outputs] == [
        "https://c.example/1.png"
    ]
    mapped = {"video": "https://c.example/v.mp4", "cover": "https://c.example/c.jpg"}
    assert [(o.kind, o.url) for o in normalize(body(outputs=mapped)).outputs] == [
        ("video", "https://c.example/v.mp4"),
        ("image", "https://c.example/c.jpg"),
    ]


def test_object_entries_give_their_url_type_and_text() -> None:
    outputs = [
        {"url": "https://c.example/render?id=1", "type": "video/mp4"},
        {"url": "https://c.example/m", "content_type": "model/gltf-binary"},
        {"glb_url": "https://c.example/mesh"},
        {"text": "a caption"},
        {"url": "https://c.example/wm.mp4", "no_watermark_url": "https://c.example/clean.mp4"},
        {"nothing": "here"},
    ]
    event = normalize(body(outputs=outputs))
    assert [(o.kind, o.url or o.text) for o in event.outputs] == [
        ("video", "https://c.example/render?id=1"),
        ("model3d", "https://c.example/m"),
        ("model3d", "https://c.example/mesh"),
        ("text", "a caption"),
        ("video", "https://c.example/clean.mp4"),
    ]


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("tripo3d-p1-image-to-3d", "model3d"),
        ("meshy-6-text-to-3d", "model3d"),
        ("kling-v2.6-pro-t2v", "video"),
        ("minimax-hailuo-02-pro-i2v", "video"),
        ("mmaudio-v2/video-to-video", "video"),
        ("mmaudio-v2/video-to-audio", "audio"),
        ("suno-create-music", "audio"),
        ("minimax-speech-2.6-hd", "audio"),
        ("wan2.5-text-to-image", "image"),
        ("ai-background-remover", "image"),
        ("flux-dev", "image"),
        ("something-new", "file"),
    ],
)
def test_a_url_without_extension_takes_its_kind_from_the_model(model: str, kind: str) -> None:
    event = normalize(body(model=model, outputs=["https://cdn.muapi.ai/o/3f9a", "https://c/x.png"]))
    assert [o.kind for o in event.outputs] == [kind, "image"]


def test_output_is_read_when_outputs_has_nothing() -> None:
    event = normalize(body(outputs=[], output={"text": "  words  "}))
    assert [(o.kind, o.text) for o in event.outputs] == [("text", "words")]
    both = body(outputs=["https://c.example/1.png"], output="https://c.example/2.png")
    assert [o.url for o in normalize(both).outputs] == ["https://c.example/1.png"]


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ('{"a":1,"b":"c/d"}', [("text", '{"a":1,"b":"c/d"}')]),
        ("Yes", [("text", "Yes")]),
        ("outputs/a.png", []),
        ("a.mp4", []),
        ("blob:https://x", []),
        ("   ", []),
    ],
)
def test_words_are_text_and_paths_or_other_schemes_are_nothing(value: str, want: Any) -> None:
    event = normalize(body(outputs=[value, value]))
    assert [(o.kind, o.text) for o in event.outputs] == want


def test_a_wrapped_callback_is_read_and_raw_stays_whole() -> None:
    payload = {"code": 200, "message": "success", "data": body(outputs=["https://c/1.mp4"])}
    event = normalize(payload)
    assert (event.task_id, event.status, event.outputs[0].kind) == ("req-1", "succeeded", "video")
    assert event.raw["code"] == 200


@pytest.mark.parametrize("raw", ["created", "submitted"])
def test_creation_statuses_are_pending(raw: str) -> None:
    event = normalize(body(status=raw, outputs=None))
    assert (event.status, event.final, event.outputs) == ("pending", False, [])


# -- property: any JSON gives an event or our payload error, nothing else ---------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
URLS = (
    st.sampled_from(["https://c.example/a.png", "https://c.example/b.mp4", "", "x", "a/b.png"])
    | st.fixed_dictionaries(
        {},
        optional={
            "url": st.sampled_from(["https://c.example/c", "data:x"]) | JSON,
            "type": st.sampled_from(["video/mp4", "3d"]) | JSON,
            "text": JSON,
            "nsfw": JSON,
            "no_watermark_url": JSON,
        },
    )
    | JSON
)
PAYLOADS = JSON | st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=10) | JSON,
        "request_id": st.text(max_size=10) | JSON,
        "status": st.sampled_from(["completed", "failed", "processing", "Weird"]) | JSON,
        "outputs": st.lists(URLS, max_size=4) | st.dictionaries(st.text(max_size=4), URLS) | JSON,
        "output": URLS | st.lists(URLS, max_size=2),
        "data": JSON,
        "has_nsfw_contents": st.lists(st.booleans() | JSON, max_size=4) | JSON,
        "error": JSON,
        "executionTime": st.floats() | JSON,
        "created_at": st.text(max_size=30) | st.integers() | JSON,
        "progress": JSON,
        "model": st.sampled_from(["tripo3d-p1-image-to-3d", "suno-create-music"]) | JSON,
        "cost": JSON,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS)
def test_any_json_gives_event_or_payload_error(payload: Any) -> None:
    try:
        result = MuapiProvider().normalize(inbound(payload), payload, "ev-1")
    except PayloadError:
        return
    assert isinstance(result, TaskEvent | Ignored)
    if isinstance(result, TaskEvent):
        # The event must survive the trip to JSON (the store and the webhook channel need it).
        TaskEvent.model_validate_json(result.model_dump_json())


# -- the status API (verify: fetch) -----------------------------------------------------------


def callback_event(task_id: str = "req-1") -> TaskEvent:
    event = normalize(body(id=task_id))
    assert event.final
    return event


def test_is_a_status_lookup() -> None:
    from relay.providers.base import StatusLookup

    assert isinstance(MuapiProvider(), StatusLookup)
    assert MuapiProvider.default_api_url == "https://api.muapi.ai"


def test_status_request_uses_the_default_api_and_x_api_key() -> None:
    request = MuapiProvider().status_request(config(api_key=SecretStr("k-1")), "a3f6-7b4d")
    assert request.url == "https://api.muapi.ai/api/v1/predictions/a3f6-7b4d/result"
    assert dict(request.headers) == {"x-api-key": "k-1"}


def test_status_request_quotes_the_task_id_into_the_configured_api_url() -> None:
    cfg = config(api_key=SecretStr("k-1"), api_url="http://127.0.0.1:9999")
    request = MuapiProvider().status_request(cfg, "../../admin?x=1")
    assert request.url == (
        "http://127.0.0.1:9999/api/v1/predictions/..%2F..%2Fadmin%3Fx%3D1/result"
    )


def test_from_status_is_what_the_provider_says() -> None:
    callback = callback_event()
    answer = body(outputs=["https://cdn.example/true.png"], cost={"amount_usd": 0.01})
    trusted = MuapiProvider().from_status(inbound(answer), answer, callback)
    assert trusted is not None
    assert [o.url for o in trusted.outputs] == ["https://cdn.example/true.png"]
    assert trusted.usage == {"amount_usd": 0.01}
    # The callback's identity (dedupe key, arrival) is the cross-checker's to give.
    assert trusted.id == callback.id


def test_from_status_reads_an_answer_without_id_and_a_wrapped_one() -> None:
    callback = callback_event()
    anonymous = {"status": "processing", "outputs": []}
    trusted = MuapiProvider().from_status(inbound(anonymous), anonymous, callback)
    assert trusted is not None and (trusted.task_id, trusted.status) == ("req-1", "processing")
    wrapped = {"code": 200, "data": body()}
    trusted = MuapiProvider().from_status(inbound(wrapped), wrapped, callback)
    assert trusted is not None and trusted.status == "succeeded"


@pytest.mark.parametrize(
    "answer",
    [{"detail": "Prediction not found"}, {}, {"code": 404, "data": None}, body(id="req-other")],
)
def test_from_status_none_when_the_answer_names_no_such_task(answer: Any) -> None:
    assert MuapiProvider().from_status(inbound(answer), answer, callback_event()) is None


@pytest.mark.parametrize("answer", [[], "x", None, {"id": "req-1"}])
def test_from_status_payload_error_when_no_answer_can_be_read(answer: Any) -> None:
    with pytest.raises(PayloadError):
        MuapiProvider().from_status(inbound(answer), answer, callback_event())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=PAYLOADS)
def test_from_status_any_json_gives_event_none_or_payload_error(answer: Any) -> None:
    callback = callback_event()
    try:
        result = MuapiProvider().from_status(inbound(answer), answer, callback)
    except PayloadError:
        return
    if result is not None:
        assert result.task_id == callback.task_id
        TaskEvent.model_validate_json(result.model_dump_json())
