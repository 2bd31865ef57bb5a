"""The APIMart adapter against the shared fixtures (expected.json is the oracle) and its quirks."""

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
from relay.providers.apimart import ApimartProvider
from relay.providers.base import Ignored, Inbound
from relay.routing.model import SourceConfig
from tests.fixtures_util import expected, load

EXPECTED = expected()
CASES = sorted(k for k in EXPECTED if k.startswith("apimart/"))

NOW = datetime(2025, 11, 14, 3, 0, 0, tzinfo=UTC)
TOKEN = "apimart-url-token-0123456789"


def config(**changes: Any) -> SourceConfig:
    values: dict[str, Any] = {"provider": "apimart", "token": SecretStr(TOKEN)}
    values.update(changes)
    return SourceConfig(**values)


def inbound(payload: Any, cfg: SourceConfig | None = None) -> Inbound:
    return Inbound(
        source="apimart-main",
        config=cfg or config(),
        headers={"content-type": "application/json"},
        body=json.dumps(payload).encode(),
        received_at=NOW,
        path_token=TOKEN,
    )


def normalize(payload: Any) -> TaskEvent:
    event = ApimartProvider().normalize(inbound(payload), payload, "ev-1")
    assert isinstance(event, TaskEvent)
    return event


def task(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "task_1", "status": "completed"}
    body.update(fields)
    return body


def wrapped(**fields: Any) -> dict[str, Any]:
    return {"code": 200, "data": task(**fields)}


def unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


@pytest.mark.parametrize("name", CASES)
def test_fixture_matches_oracle(name: str) -> None:
    want = EXPECTED[name]
    payload, _ = load(name)
    provider_status = payload["data"]["status"]
    provider = ApimartProvider()
    req = inbound(payload)
    provider.authenticate(req)
    event = provider.normalize(req, payload, "ev-1")

    assert isinstance(event, TaskEvent)
    assert (event.provider, event.id, event.source) == ("apimart", "ev-1", "apimart-main")
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
    if "expires_at" in want:
        assert [unix(o.expires_at) for o in event.outputs] == [want["expires_at"]] * len(got)
    assert all(o.nsfw is None for o in event.outputs)  # APIMart does not say
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


def test_failed_fixture_error_fields() -> None:
    payload, _ = load("apimart/failed.json")
    error = normalize(payload).error
    assert error is not None
    assert (error.code, error.detail) == ("400", "content_policy_violation")


def test_registered_by_name() -> None:
    assert isinstance(default_providers()["apimart"], ApimartProvider)
    assert ApimartProvider().name == "apimart"


# -- source checks and authentication ---------------------------------------------------------


def test_check_source_accepts_a_token() -> None:
    assert ApimartProvider().check_source(config()) == []


def test_check_source_requires_a_token() -> None:
    problems = ApimartProvider().check_source(SourceConfig(provider="apimart"))
    assert problems == [
        ("token", "is required: APIMart signs nothing, the URL token is the only proof")
    ]


def test_check_source_refuses_a_secret() -> None:
    problems = ApimartProvider().check_source(config(secret=SecretStr("s")))
    assert problems == [("secret", "is not used by APIMart: put the token in the URL instead")]
    alone = ApimartProvider().check_source(SourceConfig(provider="apimart", secret=SecretStr("s")))
    assert [key for key, _ in alone] == ["token", "secret"]


def test_authenticate_has_nothing_more_to_check() -> None:
    ApimartProvider().authenticate(inbound(task()))


def test_authenticate_refuses_a_source_without_token() -> None:
    with pytest.raises(VerificationError, match="token"):
        ApimartProvider().authenticate(inbound(task(), SourceConfig(provider="apimart")))


# -- quirks -----------------------------------------------------------------------------------

IMAGE = "https://upload.apimart.ai/f/image/a.png"


def test_wrapped_and_bare_bodies_give_the_same_event() -> None:
    fields = {"result": {"images": [{"url": [IMAGE], "expires_at": 1763174708}]}}
    a = normalize(wrapped(**fields))
    b = normalize(task(**fields))
    assert a.model_dump(exclude={"raw"}) == b.model_dump(exclude={"raw"})
    assert a.raw["code"] == 200 and "code" not in b.raw


def test_wrapper_with_a_non_200_code_is_still_read() -> None:
    # The code is the status API's own answer code, not the task's outcome.
    assert normalize({"code": 500, "data": task(status="failed")}).status == "failed"


@pytest.mark.parametrize(
    "url",
    [IMAGE, [IMAGE], ["https://x.example/1.png", "https://x.example/2.png"]],
)
def test_url_is_a_string_or_a_list(url: Any) -> None:
    event = normalize(wrapped(result={"images": [{"url": url, "expires_at": 1763174708}]}))
    urls = url if isinstance(url, list) else [url]
    assert [o.url for o in event.outputs] == urls
    assert all(o.kind == "image" for o in event.outputs)
    assert all(unix(o.expires_at) == 1763174708 for o in event.outputs)


def test_images_videos_audios_each_with_their_expiry() -> None:
    result = {
        "images": [{"url": "https://c.example/i.png", "expires_at": 100}],
        "videos": [{"url": ["https://c.example/v.mp4"], "expires_at": 200}],
        "audios": [
            {"url": ["https://c.example/a.mp3", "https://c.example/b.mp3"], "expires_at": 300},
            {"url": "https://c.example/c.mp3"},
        ],
    }
    event = normalize(wrapped(result=result))
    assert [(o.kind, o.url.rsplit("/", 1)[-1] if o.url else None) for o in event.outputs] == [
        ("image", "i.png"),
        ("video", "v.mp4"),
        ("audio", "a.mp3"),
        ("audio", "b.mp3"),
        ("audio", "c.mp3"),
    ]
    assert [unix(o.expires_at) for o in event.outputs] == [100, 200, 300, 300, None]


def test_presigned_s3_expiry_wins_over_expires_at() -> None:
    url = (
        "https://bucket.s3.amazonaws.com/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Date=20251114T020000Z&X-Amz-Expires=3600&X-Amz-Signature=abc"
    )
    event = normalize(wrapped(result={"videos": [{"url": [url], "expires_at": 1}]}))
    assert event.outputs[0].expires_at == datetime(2025, 11, 14, 3, 0, tzinfo=UTC)


def test_odd_result_items_are_skipped_not_refused() -> None:
    result = {
        "images": [
            None,
            7,
            {"url": None},
            {"url": ["", 5, "data:image/png;base64,AAAA", IMAGE, IMAGE]},
            {"url": IMAGE, "expires_at": "soon"},
        ],
        "videos": {"url": "https://c.example/lone.mp4"},
        "audios": "https://c.example/bare.mp3",
        "unknown": [{"url": "https://c.example/x.bin"}],
    }
    event = normalize(wrapped(result=result, thumbnail_url=3))
    assert [(o.kind, o.url) for o in event.outputs] == [
        ("image", IMAGE),
        ("video", "https://c.example/lone.mp4"),
        ("audio", "https://c.example/bare.mp3"),
    ]


@pytest.mark.parametrize("result", [None, [], "x", 5, {}, {"images": None}, {"images": "nope"}])
def test_result_absent_or_odd_gives_no_outputs(result: Any) -> None:
    assert normalize(wrapped(result=result)).outputs == []


def test_video_thumbnail_from_result() -> None:
    result = {"videos": [{"url": "https://c.example/v.mp4"}], "thumbnail_url": IMAGE}
    assert normalize(wrapped(result=result)).outputs[0].thumbnail_url == IMAGE


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("completed", "succeeded"),
        ("COMPLETED", "succeeded"),
        ("failed", "failed"),
        ("Failed", "failed"),
        ("cancelled", "cancelled"),
        ("canceled", "cancelled"),
        ("CANCELLED", "cancelled"),
    ],
)
def test_final_statuses(raw: str, status: str) -> None:
    event = normalize(wrapped(status=raw))
    assert (event.status, event.final, event.provider_status) == (status, True, raw)
    assert event.dedupe_key == f"task_1:{raw.lower()}"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("processing", "processing"),
        ("pending", "pending"),
        ("submitted", "pending"),
        ("queued", "pending"),
        ("in_progress", "processing"),
        ("something_new", "processing"),
    ],
)
def test_other_statuses_are_progress_not_errors(raw: str, status: str) -> None:
    event = normalize(wrapped(status=raw, progress=40))
    assert (event.status, event.final, event.progress) == (status, False, 40)


@pytest.mark.parametrize("value", [None, "", 5, ["completed"], {}])
def test_missing_or_odd_status_is_kept_as_progress(value: Any) -> None:
    # APIMart never retries a 4xx: a body that names its task is kept, never refused.
    body = wrapped()
    if value is None:
        del body["data"]["status"]
    else:
        body["data"]["status"] = value
    event = normalize(body)
    assert (event.status, event.final, event.provider_status) == ("processing", False, "unknown")
    assert event.dedupe_key == "task_1:unknown"


@pytest.mark.parametrize(
    ("progress", "status", "want"),
    [(40, "processing", 40), ("12", "processing", 12), (150, "processing", 100),
     (-3, "processing", 0), ("x", "processing", None), (True, "processing", None),
     (None, "processing", None), (0, "completed", 100), (0, "failed", 0)],
)  # fmt: skip
def test_progress(progress: Any, status: str, want: int | None) -> None:
    assert normalize(wrapped(status=status, progress=progress)).progress == want


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": 200, "data": {"status": "completed"}}, "data.id:"),
        ({"code": 200, "data": {"id": "", "status": "completed"}}, "data.id:"),
        ({"code": 200, "data": {"id": "  ", "status": "completed"}}, "data.id:"),
        ({"code": 200, "data": {"id": None}}, "data.id:"),
        ({"code": 200, "data": {"id": True}}, "data.id:"),
        ({"status": "completed"}, "id:"),
        ({"code": 200, "data": None}, "id:"),
        ({"code": 200, "data": [{"status": "submitted"}]}, "id:"),
        ({"code": 200, "data": []}, "id:"),
        ({}, "id:"),
    ],
)
def test_missing_task_id_names_it(body: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError) as info:
        normalize(body)
    assert info.value.reason.startswith(field), info.value.reason


@pytest.mark.parametrize("body", [[], "x", 3, None, True])
def test_body_not_an_object(body: Any) -> None:
    with pytest.raises(PayloadError, match=r"^body"):
        normalize(body)


def test_task_id_fallbacks() -> None:
    assert normalize({"code": 200, "data": {"task_id": "t-9"}}).task_id == "t-9"
    assert normalize({"id": 12345, "status": "completed"}).task_id == "12345"
    assert normalize(task(id=" padded ")).task_id == "padded"


def test_unknown_fields_and_odd_optional_types_are_ignored() -> None:
    body = wrapped(
        progress=[1],
        created="yesterday",
        completed={"at": 1},
        actual_time="n/a",
        estimated_time=None,
        model=7,
        error=[],
        result={"images": [{"url": IMAGE, "expires_at": [1]}]},
        brand_new={"nested": [1, 2]},
    )
    body["extra"] = "top-level"
    event = normalize(body)
    assert event.status == "succeeded"
    assert (event.created_at, event.finished_at, event.duration_s) == (None, None, None)
    assert (event.model, event.error) == (None, None)
    assert event.outputs[0].expires_at is None


@pytest.mark.parametrize(
    ("error", "code", "message", "detail"),
    [
        ({"code": 400, "message": "m", "type": "content_policy_violation"}, "400", "m",
         "content_policy_violation"),
        ({"code": "E42", "message": "m"}, "E42", "m", None),
        ({"code": 500, "type": "server_error"}, "500", "server_error", None),
        ({"code": 500}, "500", "error code 500", None),
        ({"message": "only a message"}, None, "only a message", None),
        ("plain text", None, "plain text", None),
    ],
)  # fmt: skip
def test_error_mapping(error: Any, code: str | None, message: str, detail: str | None) -> None:
    event = normalize(wrapped(status="failed", error=error))
    assert event.error is not None
    assert (event.error.code, event.error.message, event.error.detail) == (code, message, detail)


@pytest.mark.parametrize("error", [None, {}, {"code": 0, "message": ""}, "", "  ", 7, []])
def test_no_error(error: Any) -> None:
    assert normalize(wrapped(error=error)).error is None


def test_timing_and_model() -> None:
    event = normalize(wrapped(created=1763088289, completed=1763088308, actual_time=99, model="m"))
    assert event.created_at == datetime.fromtimestamp(1763088289, UTC)
    assert event.finished_at == datetime.fromtimestamp(1763088308, UTC)
    # The timestamps win; actual_time is the fallback.
    assert event.duration_s == 19
    assert event.model == "m"


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"actual_time": 405}, 405),
        ({"created": 1763088289, "actual_time": "19"}, 19),
        ({"completed": 1763088308, "actual_time": 19.5}, 19.5),
        ({"actual_time": -1}, None),
        ({}, None),
        ({"created": 1763088308, "completed": 1763088289}, None),
    ],
)
def test_actual_time_when_timestamps_are_missing(fields: dict[str, Any], want: float) -> None:
    assert normalize(wrapped(**fields)).duration_s == want


def test_raw_is_the_whole_body_redacted() -> None:
    body = wrapped(token="leak-me")
    event = normalize(body)
    assert event.raw["data"]["token"] == "[redacted]"
    assert "leak-me" not in event.model_dump_json()


# -- result families (tests/fixtures/providers/apimart/families): what the oracle cannot say ---


def family(name: str) -> TaskEvent:
    payload, _ = load(f"apimart/families/{name}")
    return normalize(payload)


def test_a_submit_answer_is_a_creation_notice_and_raw_stays_whole() -> None:
    event = family("creation_submitted.json")
    assert (event.status, event.final, event.dedupe_key) == (
        "pending",
        False,
        "task_01KPQ7J7DWB7QZ3WCEK3YVPBRA:submitted",
    )
    assert event.raw["data"][0]["status"] == "submitted"


def test_a_pending_task_names_its_media_type() -> None:
    event = family("creation_pending_task.json")
    assert (event.task_type, event.model, event.outputs) == ("image", "gpt-4o-image", [])


def test_data_urls_are_never_outputs() -> None:
    event = family("image_data_url_mixed.json")
    assert all(o.url and o.url.startswith("https://") for o in event.outputs)


def test_results_given_as_maps_are_read_like_lists() -> None:
    result = {
        "images": {
            "0": {"url": "https://c.example/0.png"},
            "1": {"url": "https://c.example/1.png"},
        },
        "videos": [{"url": {"a": "https://c.example/v.mp4"}, "expires_at": 5}],
    }
    event = normalize(wrapped(result=result))
    assert [(o.kind, o.url) for o in event.outputs] == [
        ("image", "https://c.example/0.png"),
        ("image", "https://c.example/1.png"),
        ("video", "https://c.example/v.mp4"),
    ]


@pytest.mark.parametrize(
    "item",
    [
        {"url": "https://c.example/wm.mp4", "no_watermark_url": "https://c.example/clean.mp4"},
        {"watermark_url": "https://c.example/wm.mp4", "url": "https://c.example/clean.mp4"},
        {"url_no_watermark": ["https://c.example/clean.mp4"], "url": ["https://c.example/wm.mp4"]},
    ],
)
def test_a_watermarked_copy_is_the_same_output_and_the_clean_one_wins(item: Any) -> None:
    event = normalize(wrapped(result={"videos": [item]}))
    assert [o.url for o in event.outputs] == ["https://c.example/clean.mp4"]


def test_an_items_own_cover_and_title_go_with_it() -> None:
    clip = {
        "audio_url": "https://c.example/a.mp3",
        "image_url": "https://c.example/cover.jpg",
        "title": "Night Drive",
    }
    event = normalize(wrapped(result={"audios": [clip]}))
    assert [(o.kind, o.url, o.thumbnail_url, o.title) for o in event.outputs] == [
        ("audio", "https://c.example/a.mp3", "https://c.example/cover.jpg", "Night Drive")
    ]


def test_single_url_fields_are_read_only_when_no_list_has_a_file() -> None:
    assert [o.kind for o in normalize(wrapped(result={"video_url": IMAGE})).outputs] == ["video"]
    both = {"images": [{"url": IMAGE}], "image_url": "https://c.example/other.png"}
    assert [o.url for o in normalize(wrapped(result=both)).outputs] == [IMAGE]


def test_a_bare_result_list_takes_kinds_from_the_url_then_the_task_type() -> None:
    result = ["https://c.example/a.png", "https://c.example/render?id=7", "data:x"]
    event = normalize(wrapped(type="video", result=result))
    assert [(o.kind, o.url) for o in event.outputs] == [
        ("image", "https://c.example/a.png"),
        ("video", "https://c.example/render?id=7"),
    ]
    untyped = normalize(wrapped(result=["https://c.example/render?id=7"]))
    assert untyped.outputs[0].kind == "file"


def test_text_results_are_text_outputs() -> None:
    result = {"text": " A red fox. ", "texts": ["A red fox.", {"text": "Second take"}, 3, ""]}
    event = normalize(wrapped(result=result))
    assert [(o.kind, o.text, o.url) for o in event.outputs] == [
        ("text", "A red fox.", None),
        ("text", "Second take", None),
    ]


@pytest.mark.parametrize(("value", "want"), [("45%", 45), (" 12.6 % ", 13), ("%", None)])
def test_progress_spelled_as_a_percentage(value: str, want: int | None) -> None:
    assert normalize(wrapped(status="processing", progress=value)).progress == want


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"cost": 0.12}, {"cost": 0.12}),
        ({"cost": {"amount": 0.12}}, {"amount": 0.12}),
        ({"usage": {"credits": 3}, "cost": 1}, {"credits": 3}),
        ({"cost": "free"}, None),
        ({}, None),
    ],
)
def test_usage_is_apimarts_own_billing(fields: dict[str, Any], want: Any) -> None:
    assert normalize(wrapped(**fields)).usage == want


# -- property: any JSON gives an event or our payload error, nothing else ---------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
URLS = st.sampled_from([IMAGE, "https://c.example/v.mp4", "", "ftp://x", "data:x"]) | JSON
ITEM = st.fixed_dictionaries(
    {},
    optional={
        key: URLS | st.lists(URLS, max_size=3) | st.dictionaries(st.text(max_size=3), URLS)
        for key in ("url", "no_watermark_url", "watermark_url", "audio_url", "image_url")
    }
    | {"expires_at": JSON | st.integers(), "title": JSON, "cover_url": URLS},
)
RESULT = st.dictionaries(
    st.sampled_from(
        [
            "images",
            "videos",
            "audios",
            "image",
            "video_url",
            "url",
            "thumbnail_url",
            "text",
            "texts",
        ]
    ),
    st.lists(ITEM | JSON, max_size=3) | st.dictionaries(st.text(max_size=3), ITEM) | JSON,
    max_size=4,
)
TASK = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=10) | JSON,
        "task_id": st.text(max_size=10) | JSON,
        "status": st.sampled_from(["completed", "FAILED", "cancelled", "processing"]) | JSON,
        "progress": JSON,
        "result": RESULT | JSON,
        "error": st.dictionaries(st.sampled_from(["code", "message", "type"]), JSON) | JSON,
        "created": st.integers() | JSON,
        "completed": st.integers() | JSON,
        "actual_time": JSON,
        "model": JSON,
        "type": st.sampled_from(["image", "video", "audio"]) | JSON,
        "object": JSON,
        "cost": JSON,
        "usage": JSON,
    },
)
PAYLOADS = (
    JSON
    | TASK
    | st.fixed_dictionaries({"code": JSON, "data": TASK | st.lists(TASK | JSON, max_size=2) | JSON})
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS)
def test_any_json_gives_event_or_payload_error(payload: Any) -> None:
    try:
        result = ApimartProvider().normalize(inbound(payload), payload, "ev-1")
    except PayloadError:
        return
    assert isinstance(result, TaskEvent | Ignored)
    if isinstance(result, TaskEvent):
        # The event must survive the trip to JSON (the store and the webhook channel need it).
        TaskEvent.model_validate_json(result.model_dump_json())


# -- the status API (verify: fetch) -----------------------------------------------------------


def callback_event(task_id: str = "task_1") -> TaskEvent:
    event = normalize(wrapped(id=task_id))
    assert event.final
    return event


def test_is_a_status_lookup() -> None:
    from relay.providers.base import StatusLookup

    assert isinstance(ApimartProvider(), StatusLookup)
    assert ApimartProvider.default_api_url == "https://api.apimart.ai"


def test_status_request_uses_the_default_api_and_a_bearer_key() -> None:
    request = ApimartProvider().status_request(config(api_key=SecretStr("k-1")), "task_01K")
    assert request.url == "https://api.apimart.ai/v1/tasks/task_01K"
    assert dict(request.headers) == {"Authorization": "Bearer k-1"}


def test_status_request_quotes_the_task_id_into_the_configured_api_url() -> None:
    cfg = config(api_key=SecretStr("k-1"), api_url="http://127.0.0.1:9999")
    request = ApimartProvider().status_request(cfg, "../../admin?x=1#y")
    assert request.url == "http://127.0.0.1:9999/v1/tasks/..%2F..%2Fadmin%3Fx%3D1%23y"


def test_from_status_is_what_the_provider_says() -> None:
    callback = callback_event()
    answer = wrapped(result={"images": [{"url": ["https://cdn.example/true.png"]}]})
    trusted = ApimartProvider().from_status(inbound(answer), answer, callback)
    assert trusted is not None
    assert [o.url for o in trusted.outputs] == ["https://cdn.example/true.png"]
    # The callback's identity (dedupe key, arrival) is the cross-checker's to give.
    assert trusted.id == callback.id
    assert trusted.raw == answer


def test_from_status_reads_a_bare_task_and_one_without_its_id() -> None:
    callback = callback_event()
    bare = task(status="processing")
    trusted = ApimartProvider().from_status(inbound(bare), bare, callback)
    assert trusted is not None and trusted.status == "processing"
    anonymous = {"code": 200, "data": {"status": "completed"}}
    trusted = ApimartProvider().from_status(inbound(anonymous), anonymous, callback)
    assert trusted is not None and trusted.task_id == "task_1"


@pytest.mark.parametrize(
    "answer",
    [
        {"code": 404, "message": "task not found"},
        {"code": "404", "data": None},
        {"code": 400, "error": {"message": "invalid task id"}},
        {"code": 200},
        {"code": 200, "data": None},
        {"code": 200, "data": {}},
        {"error": {"code": 404, "message": "not found", "type": "not_found"}},
        wrapped(id="task_other"),
    ],
)
def test_from_status_none_when_the_answer_names_no_such_task(answer: Any) -> None:
    assert ApimartProvider().from_status(inbound(answer), answer, callback_event()) is None


@pytest.mark.parametrize(
    "answer", [[], "x", None, {"code": 500, "message": "busy"}, {"code": 401}, {"code": 429}]
)
def test_from_status_payload_error_when_no_answer_can_be_read(answer: Any) -> None:
    with pytest.raises(PayloadError):
        ApimartProvider().from_status(inbound(answer), answer, callback_event())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=PAYLOADS)
def test_from_status_any_json_gives_event_none_or_payload_error(answer: Any) -> None:
    callback = callback_event()
    try:
        result = ApimartProvider().from_status(inbound(answer), answer, callback)
    except PayloadError:
        return
    if result is not None:
        assert result.task_id == callback.task_id
        TaskEvent.model_validate_json(result.model_dump_json())
