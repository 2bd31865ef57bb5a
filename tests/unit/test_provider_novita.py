"""The Novita adapter against the shared fixtures (expected.json is the oracle) and its quirks."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from relay.errors import PayloadError, VerificationError
from relay.events import TaskEvent
from relay.providers import default_providers
from relay.providers.base import Ignored, Inbound
from relay.providers.novita import NovitaProvider, redact_hook_url
from relay.routing.model import SourceConfig

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
NOVITA_CASES = sorted(k for k in EXPECTED if k.startswith("novita/"))

NOW = datetime(2025, 7, 1, 12, 0, 0, tzinfo=UTC)
# The token the shared fixtures echo in extra.webhook.url (as ?token=...).
TOKEN = "nv_7Kq2"
S3_URL = (
    "https://faas-output-image.s3.ap-southeast-1.amazonaws.com/out/img.png"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20250701T115500Z&X-Amz-Expires=3600"
    "&X-Amz-SignedHeaders=host&X-Amz-Signature=abc"
)


def config(token: str | None = TOKEN, secret: str | None = None) -> SourceConfig:
    return SourceConfig(
        provider="novita",
        token=SecretStr(token) if token is not None else None,
        secret=SecretStr(secret) if secret is not None else None,
    )


def inbound(
    payload: Any, path_token: str | None = TOKEN, cfg: SourceConfig | None = None
) -> Inbound:
    return Inbound(
        source="novita-main",
        config=cfg or config(),
        headers={"content-type": "application/json"},
        body=json.dumps(payload).encode(),
        received_at=NOW,
        path_token=path_token,
    )


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return body


def run(payload: Any) -> TaskEvent | Ignored:
    return NovitaProvider().normalize(inbound(payload), payload, "ev-1")


def normalize(payload: Any) -> TaskEvent:
    event = run(payload)
    assert isinstance(event, TaskEvent)
    return event


def minimal(
    status: str = "TASK_STATUS_SUCCEED",
    *,
    task: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    **lists: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": {"task_id": "t-1", "status": status, "reason": "", "task_type": "TXT_TO_IMG"},
        "extra": extra if extra is not None else {"webhook": {"url": "https://r.example/x"}},
        "images": [],
        "videos": [],
        "audios": [],
    }
    body["task"].update(task or {})
    body.update(lists)
    return {"event_type": "ASYNC_TASK_RESULT", "payload": body}


# -- the shared fixtures ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NOVITA_CASES)
def test_fixture_matches_oracle(name: str) -> None:
    expected = EXPECTED[name]
    payload = fixture(name)
    provider = NovitaProvider()
    req = inbound(payload)
    provider.authenticate(req)
    result = provider.normalize(req, payload, "ev-1")

    if expected.get("ignored"):
        assert isinstance(result, Ignored)
        assert "ASYNC_TASK_RESULT" in result.reason
        return
    assert isinstance(result, TaskEvent)
    event = result
    assert (event.id, event.source, event.provider) == ("ev-1", "novita-main", "novita")
    assert event.received_at == NOW
    assert event.test is expected.get("test", False)
    for key in ("task_id", "status", "final", "task_type"):
        if key in expected:
            assert getattr(event, key) == expected[key], key
    want_provider_status = {"succeeded": "TASK_STATUS_SUCCEED", "failed": "TASK_STATUS_FAILED"}
    assert event.provider_status == want_provider_status[expected["status"]]
    assert event.dedupe_key == f"{event.task_id}:{event.provider_status}"
    got = [(o.kind, o.url) for o in event.outputs]
    assert len(got) == len(expected["outputs"]), got
    for (kind, url), (want_kind, want_part) in zip(got, expected["outputs"], strict=True):
        assert kind == want_kind
        assert url is not None and want_part in url
    for output in event.outputs:
        # Novita only flags NSFW when detection was asked for; these fixtures did not.
        assert output.nsfw is None
    if "expires_at" in expected:
        assert event.outputs[0].expires_at is not None
        assert event.outputs[0].expires_at.timestamp() == expected["expires_at"]
    if "error" in expected:
        assert event.error is not None
        assert expected["error"] in event.error.message
    else:
        assert event.error is None
    TaskEvent.model_validate_json(event.model_dump_json())


def test_test_mode_fixture_expiry_falls_back_to_ttl() -> None:
    # Its URL has X-Amz-Expires but no X-Amz-Date, so the "3600" ttl counts from receipt.
    event = normalize(fixture("novita/test_mode_succeed.json"))
    assert event.test is True
    assert event.outputs[0].expires_at == NOW + timedelta(seconds=3600)


@pytest.mark.parametrize("name", [n for n in NOVITA_CASES if not EXPECTED[n].get("ignored")])
def test_token_is_nowhere_in_the_stored_raw(name: str) -> None:
    payload = fixture(name)
    event = normalize(payload)
    dumped = event.model_dump_json()
    assert TOKEN not in dumped
    echoed = event.raw["payload"]["extra"]["webhook"]["url"]
    if "relay.example.com" in echoed:
        assert echoed == "https://relay.example.com/hooks/novita?token=[redacted]"


def test_token_in_the_url_path_is_redacted() -> None:
    token = "tok-0123456789abcdef"
    payload = minimal(
        extra={"webhook": {"url": f"https://relay.example.com/hooks/novita/{token}/callback"}}
    )
    event = NovitaProvider().normalize(inbound(payload, token, config(token)), payload, "ev-1")
    assert isinstance(event, TaskEvent)
    assert event.raw["payload"]["extra"]["webhook"]["url"] == (
        "https://relay.example.com/hooks/novita/[redacted]/callback"
    )
    assert token not in event.model_dump_json()


@pytest.mark.parametrize(
    ("url", "tokens", "want"),
    [
        ("https://r.io/hooks/nv/abc", (), "https://r.io/hooks/nv/[redacted]"),
        ("https://r.io/hooks/nv/abc/callback", (), "https://r.io/hooks/nv/[redacted]/callback"),
        ("https://r.io/hooks/nv/callback", (), "https://r.io/hooks/nv/callback"),
        ("https://r.io/hooks/nv", (), "https://r.io/hooks/nv"),
        ("https://r.io/hooks/nv?token=abc&x=1", (), "https://r.io/hooks/nv?token=[redacted]&x=1"),
        ("https://r.io/hooks/nv?Token=abc#frag", (), "https://r.io/hooks/nv?Token=[redacted]#frag"),
        ("https://r.io/hooks/nv?token=", (), "https://r.io/hooks/nv?token="),
        ("https://r.io/in/abc/x?k=abc", ("abc",), "https://r.io/in/[redacted]/x?k=[redacted]"),
        ("https://your-webhook-endpoint-url", ("abc",), "https://your-webhook-endpoint-url"),
        ("", ("abc",), ""),
        ("not a url at all", ("",), "not a url at all"),
    ],
)
def test_redact_hook_url(url: str, tokens: tuple[str, ...], want: str) -> None:
    assert redact_hook_url(url, tokens) == want


def test_default_providers_has_novita() -> None:
    providers = default_providers()
    assert isinstance(providers["novita"], NovitaProvider)
    assert providers["novita"].name == "novita"


# -- source checks and authentication --------------------------------------------------------


def test_check_source_requires_a_token_and_refuses_a_secret() -> None:
    provider = NovitaProvider()
    assert provider.check_source(config()) == []
    problems = provider.check_source(config(token=None, secret="shh"))
    assert problems == [
        ("token", "is required: Novita signs nothing, the URL token is the only proof"),
        ("secret", "is not used by Novita: put the token in the URL instead"),
    ]
    assert all("shh" not in message for _, message in problems)


def test_authenticate_checks_the_token_again() -> None:
    provider = NovitaProvider()
    provider.authenticate(inbound(minimal()))
    with pytest.raises(VerificationError, match="token does not match"):
        provider.authenticate(inbound(minimal(), path_token="guess"))
    with pytest.raises(VerificationError, match="token does not match"):
        provider.authenticate(inbound(minimal(), path_token=None))
    with pytest.raises(VerificationError, match="needs a token"):
        provider.authenticate(inbound(minimal(), cfg=config(token=None, secret="s")))


# -- event types and required fields ---------------------------------------------------------


@pytest.mark.parametrize("event_type", ["ASYNC_TASK_PROGRESS", "PING", "async_task_results"])
def test_other_event_types_are_ignored(event_type: str) -> None:
    payload = minimal()
    payload["event_type"] = event_type
    result = run(payload)
    assert isinstance(result, Ignored)
    assert event_type in result.reason


def test_event_type_is_compared_case_insensitively() -> None:
    payload = minimal()
    payload["event_type"] = "async_task_result"
    assert normalize(payload).status == "succeeded"


def test_ignored_does_not_need_a_valid_payload() -> None:
    assert isinstance(run({"event_type": "SOMETHING_NEW", "payload": "whatever"}), Ignored)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("event_type"), "event_type:"),
        (lambda p: p.update(event_type=7), "event_type:"),
        (lambda p: p.pop("payload"), "payload:"),
        (lambda p: p.update(payload=[]), "payload:"),
        (lambda p: p["payload"].pop("task"), "payload.task:"),
        (lambda p: p["payload"].update(task="x"), "payload.task:"),
        (lambda p: p["payload"]["task"].pop("task_id"), "payload.task.task_id:"),
        (lambda p: p["payload"]["task"].update(task_id=""), "payload.task.task_id:"),
        (lambda p: p["payload"]["task"].update(task_id=12), "payload.task.task_id:"),
        (lambda p: p["payload"]["task"].pop("status"), "payload.task.status:"),
        (lambda p: p["payload"]["task"].update(status=None), "payload.task.status:"),
    ],
)
def test_missing_required_field_names_it(mutate: Any, field: str) -> None:
    payload = minimal()
    mutate(payload)
    with pytest.raises(PayloadError) as info:
        run(payload)
    assert info.value.reason.startswith(field)


@pytest.mark.parametrize("body", [[], "x", 3, None])
def test_body_not_an_object(body: Any) -> None:
    with pytest.raises(PayloadError, match=r"^body"):
        run(body)


# -- statuses, progress, error ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "final", "progress"),
    [
        ("TASK_STATUS_SUCCEED", "succeeded", True, 100),
        ("TASK_STATUS_FAILED", "failed", True, None),
        ("TASK_STATUS_QUEUED", "pending", False, 35),
        ("TASK_STATUS_PROCESSING", "processing", False, 35),
        ("task_status_processing", "processing", False, 35),
        ("TASK_STATUS_SOMETHING_NEW", "processing", False, 35),
    ],
)
def test_status_mapping(raw: str, status: str, final: bool, progress: int | None) -> None:
    event = normalize(minimal(raw, task={"progress_percent": 35}))
    assert (event.status, event.final, event.provider_status) == (status, final, raw)
    assert event.progress == progress
    assert event.dedupe_key == f"t-1:{raw.upper()}"


@pytest.mark.parametrize(
    ("value", "want"),
    [(0, 0), (46.6, 47), ("12", 12), (150, 100), (-3, 0), ("x", None), (None, None), (True, None)],
)
def test_progress_while_processing(value: Any, want: int | None) -> None:
    event = normalize(minimal("TASK_STATUS_PROCESSING", task={"progress_percent": value}))
    assert event.progress == want


def test_reason_is_the_error() -> None:
    event = normalize(minimal("TASK_STATUS_FAILED", task={"reason": "  out of credits  "}))
    assert event.error is not None
    assert (event.error.code, event.error.message) == (None, "out of credits")


@pytest.mark.parametrize("reason", ["", "   ", None, 42, {"m": 1}])
def test_no_reason_no_error(reason: Any) -> None:
    assert normalize(minimal("TASK_STATUS_FAILED", task={"reason": reason})).error is None


# -- outputs: kinds, ttl, S3 expiry, nsfw ----------------------------------------------------


def test_images_videos_and_audios() -> None:
    event = normalize(
        minimal(
            images=[{"image_url": "https://c.example/1.png", "image_url_ttl": "0"}],
            videos=[{"video_url": "https://c.example/v.mp4", "video_url_ttl": 600}],
            audios=[{"audio_url": "https://c.example/a.mp3", "audio_url_ttl": "120"}],
        )
    )
    assert [(o.kind, o.url, o.expires_at) for o in event.outputs] == [
        ("image", "https://c.example/1.png", None),
        ("video", "https://c.example/v.mp4", NOW + timedelta(seconds=600)),
        ("audio", "https://c.example/a.mp3", NOW + timedelta(seconds=120)),
    ]


@pytest.mark.parametrize(
    ("ttl", "want"),
    [
        ("0", None),
        (0, None),
        ("3600", NOW + timedelta(seconds=3600)),
        (3600, NOW + timedelta(seconds=3600)),
        (" 3600 ", NOW + timedelta(seconds=3600)),
        (-5, None),
        ("soon", None),
        (None, None),
        (True, None),
        (10**12, None),
    ],
)
def test_ttl_string_or_int_zero_is_unknown(ttl: Any, want: datetime | None) -> None:
    image = {"image_url": "https://c.example/1.png", "image_url_ttl": ttl}
    assert normalize(minimal(images=[image])).outputs[0].expires_at == want


@pytest.mark.parametrize("ttl", ["0", 0, "3600", 7200])
def test_s3_expiry_wins_over_any_ttl(ttl: Any) -> None:
    image = {"image_url": S3_URL, "image_url_ttl": ttl}
    expires = normalize(minimal(images=[image])).outputs[0].expires_at
    assert expires == datetime(2025, 7, 1, 12, 55, tzinfo=UTC)


@pytest.mark.parametrize(
    ("result", "want"),
    [
        (None, None),
        ({"valid": True, "confidence": 0.93}, True),
        ({"valid": False, "confidence": 0.02}, False),
        ({"confidence": 0.5}, None),
        ({"valid": "yes"}, None),
        (True, True),
        ("x", None),
    ],
)
def test_nsfw_detection_result(result: Any, want: bool | None) -> None:
    image = {"image_url": "https://c.example/1.png", "nsfw_detection_result": result}
    assert normalize(minimal(images=[image])).outputs[0].nsfw is want


def test_has_nsfw_contents_flags_images_by_position() -> None:
    images = [
        {"image_url": "https://c.example/1.png"},
        {"image_url": "https://c.example/2.png"},
        {"image_url": "https://c.example/3.png", "nsfw_detection_result": {"valid": False}},
    ]
    extra = {"has_nsfw_contents": [False, True, True]}
    event = normalize(minimal(images=images, extra=extra))
    assert [o.nsfw for o in event.outputs] == [False, True, False]


def test_odd_output_entries_are_skipped_and_urls_kept_once() -> None:
    images = [
        {"image_url": "https://c.example/1.png"},
        {"image_url": "https://c.example/1.png"},
        {"image_url": "data:image/png;base64,AAAA"},
        {"image_url": ""},
        {"image_url": 5},
        "https://c.example/plain.webp",
        None,
        [],
    ]
    event = normalize(minimal(images=images, videos="nope", audios={"audio_url": "x"}))
    assert [o.url for o in event.outputs] == [
        "https://c.example/1.png",
        "https://c.example/plain.webp",
    ]


# -- test mode, timings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("webhook", "want"),
    [
        ({"test_mode": {"enabled": True, "return_task_status": "TASK_STATUS_FAILED"}}, True),
        ({"test_mode": {"enabled": False}}, False),
        ({"test_mode": {"enabled": "true"}}, False),
        ({"test_mode": True}, False),
        ({}, False),
        ("x", False),
    ],
)
def test_test_mode_sets_test(webhook: Any, want: bool) -> None:
    assert normalize(minimal(extra={"webhook": webhook})).test is want


def test_debug_info_timings() -> None:
    debug = {
        "request_info": "{}",
        "submit_time_ms": "1751371200000",
        "execute_time_ms": 1751371203000,
        "complete_time_ms": "1751371212500",
    }
    event = normalize(minimal(extra={"debug_info": debug}))
    assert event.created_at == datetime(2025, 7, 1, 12, 0, 0, tzinfo=UTC)
    assert event.started_at == datetime(2025, 7, 1, 12, 0, 3, tzinfo=UTC)
    assert event.finished_at == datetime(2025, 7, 1, 12, 0, 12, 500000, tzinfo=UTC)
    assert event.duration_s == 12.5


@pytest.mark.parametrize("debug", ["x", [1], {"submit_time_ms": "0", "complete_time_ms": []}])
def test_odd_debug_info_is_ignored(debug: Any) -> None:
    event = normalize(minimal(extra={"debug_info": debug}))
    assert (event.created_at, event.finished_at, event.duration_s) == (None, None, None)


# -- result families (tests/fixtures/providers/novita/families): what the oracle cannot say ----


def family(name: str) -> TaskEvent:
    return normalize(fixture(f"novita/families/{name}"))


def test_tts_audio_keeps_its_spoken_text_and_is_one_output() -> None:
    (output,) = family("audio_tts_metadata.json").outputs
    assert (output.kind, output.text) == ("audio", "To be or not to be, that is a question.")


def test_family_nsfw_results_stay_with_their_images() -> None:
    assert [o.nsfw for o in family("image_two_nsfw_int_ttl.json").outputs] == [False, True]


def test_family_video_timings_come_from_debug_info() -> None:
    event = family("video_presigned.json")
    assert event.started_at == datetime(2025, 9, 14, 11, 28, 32, 500000, tzinfo=UTC)
    assert event.duration_s == 92.3


def test_a_result_with_only_its_task_has_no_outputs() -> None:
    event = family("failed_task_only.json")
    assert (event.status, event.outputs, event.test, event.created_at) == (
        "failed",
        [],
        False,
        None,
    )


def test_media_given_as_maps_or_lone_items_are_read() -> None:
    images = {"0": {"image_url": "https://c.example/0.png"}, "1": "https://c.example/1.png"}
    videos = {"video_url": "https://c.example/v.mp4", "video_url_ttl": "60"}
    event = normalize(minimal(images=images, videos=videos, audios=None))
    assert [(o.kind, o.url) for o in event.outputs] == [
        ("image", "https://c.example/0.png"),
        ("image", "https://c.example/1.png"),
        ("video", "https://c.example/v.mp4"),
    ]
    assert event.outputs[2].expires_at == NOW + timedelta(seconds=60)


@pytest.mark.parametrize(
    "item",
    [
        {
            "video_url": "https://c.example/wm.mp4",
            "no_watermark_url": "https://c.example/clean.mp4",
        },
        {
            "video_url_watermark": "https://c.example/wm.mp4",
            "video_url": "https://c.example/clean.mp4",
        },
        {"url": "https://c.example/clean.mp4", "watermark_url": "https://c.example/wm.mp4"},
    ],
)
def test_a_watermarked_copy_is_the_same_output_and_the_clean_one_wins(item: Any) -> None:
    assert [o.url for o in normalize(minimal(videos=[item])).outputs] == [
        "https://c.example/clean.mp4"
    ]


@pytest.mark.parametrize(
    ("metadata", "want"),
    [
        ([{"text": "One."}, {"text": "Two."}, {"start_time": 3}], "One. Two."),
        ({"text": "  "}, None),
        ("just text", None),
        (None, None),
    ],
)
def test_audio_metadata_text(metadata: Any, want: str | None) -> None:
    audio = {"audio_url": "https://c.example/a.mp3", "audio_metadata": metadata}
    assert normalize(minimal(audios=[audio])).outputs[0].text == want


def test_spoken_text_is_only_read_for_audio() -> None:
    image = {"image_url": "https://c.example/1.png", "audio_metadata": {"text": "no"}}
    assert normalize(minimal(images=[image])).outputs[0].text is None


# -- property: any JSON gives an event, Ignored, or our payload error, nothing else ----------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
URL = st.sampled_from(["https://c.example/a.png", S3_URL, "http://x/y.mp4", ""]) | JSON
TTL = st.sampled_from(["0", 0, "3600", 3600, -1, "1e400", 10**30]) | JSON


def media(url_key: str, ttl_key: str) -> st.SearchStrategy[Any]:
    item = st.fixed_dictionaries(
        {},
        optional={
            url_key: URL,
            "url": URL,
            "no_watermark_url": URL,
            f"{url_key}_watermark": URL,
            "audio_metadata": st.fixed_dictionaries({}, optional={"text": JSON})
            | st.lists(st.fixed_dictionaries({}, optional={"text": JSON}), max_size=2)
            | JSON,
            ttl_key: TTL,
            "nsfw_detection_result": st.none()
            | st.fixed_dictionaries({}, optional={"valid": JSON, "confidence": JSON})
            | JSON,
        },
    )
    return st.lists(item | JSON, max_size=3) | st.dictionaries(st.text(max_size=3), item) | JSON


TASK = st.fixed_dictionaries(
    {
        "task_id": st.text(max_size=10) | JSON,
        "status": st.sampled_from(list(("TASK_STATUS_SUCCEED", "TASK_STATUS_QUEUED", "weird")))
        | JSON,
    },
    optional={"reason": JSON, "progress_percent": JSON, "task_type": JSON, "eta": JSON},
)
EXTRA = st.fixed_dictionaries(
    {},
    optional={
        "webhook": st.fixed_dictionaries(
            {},
            optional={
                "url": st.just(f"https://r.example/hooks/novita/{TOKEN}") | JSON,
                "test_mode": st.fixed_dictionaries({}, optional={"enabled": JSON}) | JSON,
            },
        )
        | JSON,
        "debug_info": st.dictionaries(
            st.sampled_from(["submit_time_ms", "execute_time_ms", "complete_time_ms"]), JSON
        )
        | JSON,
        "has_nsfw_contents": JSON,
    },
)
BODY = st.fixed_dictionaries(
    {"task": TASK | JSON},
    optional={
        "extra": EXTRA | JSON,
        "images": media("image_url", "image_url_ttl"),
        "videos": media("video_url", "video_url_ttl"),
        "audios": media("audio_url", "audio_url_ttl"),
    },
)
PAYLOADS = JSON | st.fixed_dictionaries(
    {
        "event_type": st.sampled_from(["ASYNC_TASK_RESULT", "OTHER"]) | JSON,
        "payload": BODY | JSON,
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS)
def test_any_json_gives_event_ignored_or_payload_error(payload: Any) -> None:
    snapshot = copy.deepcopy(payload)
    try:
        result = run(payload)
    except PayloadError:
        return
    assert isinstance(result, TaskEvent | Ignored)
    if isinstance(result, TaskEvent):
        # The event must survive the trip to JSON (the store and the webhook channel need it).
        TaskEvent.model_validate_json(result.model_dump_json())
        assert TOKEN not in json.dumps(result.raw["payload"].get("extra"), default=str)
    else:
        assert payload == snapshot


# -- the status API (verify: fetch) -----------------------------------------------------------


def api_config(**changes: Any) -> SourceConfig:
    values: dict[str, Any] = {"provider": "novita", "token": SecretStr(TOKEN)}
    values.update(changes)
    return SourceConfig(**values)


def callback_event() -> TaskEvent:
    event = normalize(minimal())
    assert event.final
    return event


def answer_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The Task Result API's answer: what the webhook carries under ``payload``."""
    answer: dict[str, Any] = copy.deepcopy(payload["payload"])
    return answer


def test_is_a_status_lookup() -> None:
    from relay.providers.base import StatusLookup

    assert isinstance(NovitaProvider(), StatusLookup)
    assert NovitaProvider.default_api_url == "https://api.novita.ai"


def test_status_request_uses_the_default_api_and_a_bearer_key() -> None:
    request = NovitaProvider().status_request(api_config(api_key=SecretStr("k-1")), "f6ae-2e81")
    assert request.url == "https://api.novita.ai/v3/async/task-result?task_id=f6ae-2e81"
    assert dict(request.headers) == {"Authorization": "Bearer k-1"}


def test_status_request_encodes_the_task_id_into_the_query_of_the_configured_api() -> None:
    cfg = api_config(api_key=SecretStr("k-1"), api_url="http://127.0.0.1:9999")
    request = NovitaProvider().status_request(cfg, "a&task_id=b#c d/e")
    assert request.url == (
        "http://127.0.0.1:9999/v3/async/task-result?task_id=a%26task_id%3Db%23c+d%2Fe"
    )


def test_from_status_is_what_the_provider_says() -> None:
    callback = callback_event()
    answer = answer_of(minimal(images=[{"image_url": "https://cdn.example/true.png"}]))
    trusted = NovitaProvider().from_status(inbound(answer), answer, callback)
    assert trusted is not None
    assert [o.url for o in trusted.outputs] == ["https://cdn.example/true.png"]
    # The callback's identity (dedupe key, arrival) is the cross-checker's to give.
    assert trusted.id == callback.id
    assert trusted.raw["event_type"] == "ASYNC_TASK_RESULT"


def test_from_status_scrubs_our_token_from_an_echoed_hook_url() -> None:
    hook = f"https://relay.example/hooks/novita-main/{TOKEN}?token={TOKEN}"
    answer = answer_of(minimal(extra={"webhook": {"url": hook}}))
    trusted = NovitaProvider().from_status(inbound(answer), answer, callback_event())
    assert trusted is not None
    assert TOKEN not in json.dumps(trusted.raw)
    assert trusted.raw["payload"]["extra"]["webhook"]["url"] == (
        "https://relay.example/hooks/novita-main/[redacted]?token=[redacted]"
    )


def test_from_status_reads_a_task_without_its_id() -> None:
    answer = answer_of(minimal("TASK_STATUS_PROCESSING"))
    del answer["task"]["task_id"]
    trusted = NovitaProvider().from_status(inbound(answer), answer, callback_event())
    assert trusted is not None and (trusted.task_id, trusted.final) == ("t-1", False)


@pytest.mark.parametrize(
    "answer",
    [
        {"code": 404, "reason": "TASK_NOT_FOUND", "message": "task not found"},
        {},
        {"task": None},
        answer_of(minimal(task={"task_id": "t-other"})),
    ],
)
def test_from_status_none_when_the_answer_names_no_such_task(answer: Any) -> None:
    assert NovitaProvider().from_status(inbound(answer), answer, callback_event()) is None


@pytest.mark.parametrize("answer", [[], "x", None, {"task": {"task_id": "t-1"}}])
def test_from_status_payload_error_when_no_answer_can_be_read(answer: Any) -> None:
    with pytest.raises(PayloadError):
        NovitaProvider().from_status(inbound(answer), answer, callback_event())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=BODY | JSON)
def test_from_status_any_json_gives_event_none_or_payload_error(answer: Any) -> None:
    callback = callback_event()
    try:
        result = NovitaProvider().from_status(inbound(answer), answer, callback)
    except PayloadError:
        return
    if result is not None:
        assert result.task_id == callback.task_id
        TaskEvent.model_validate_json(result.model_dump_json())
        assert TOKEN not in json.dumps(result.raw["payload"].get("extra"), default=str)
