"""The GoAPI / PiAPI adapter against the recorded fixtures (expected.json is the oracle)."""

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
from relay.providers.unified import UnifiedProvider
from relay.routing.model import SourceConfig

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
UNIFIED_CASES = sorted(k for k in EXPECTED if k.startswith(("goapi/", "piapi/")))

NOW = datetime(2025, 7, 1, 12, 0, 0, tzinfo=UTC)
NOW_TS = int(NOW.timestamp())
SECRET = "s3cr3t-relay-goapi"


def secret_config(secret: str = SECRET, window: float = 300.0) -> SourceConfig:
    return SourceConfig(provider="goapi", secret=SecretStr(secret), replay_window=window)


def token_config() -> SourceConfig:
    return SourceConfig(provider="goapi", token=SecretStr("url-token-0123456789"))


def inbound(
    payload: Any,
    config: SourceConfig,
    headers: dict[str, str] | None = None,
    received_at: datetime = NOW,
) -> Inbound:
    return Inbound(
        source="goapi-main",
        config=config,
        headers=headers if headers is not None else {"x-webhook-secret": SECRET},
        body=json.dumps(payload).encode(),
        received_at=received_at,
    )


def fixture_case(name: str) -> tuple[dict[str, Any], dict[str, str]]:
    payload = json.loads((FIXTURES / name).read_text())
    payload["timestamp"] = NOW_TS
    headers_file = FIXTURES / name.replace(".json", ".headers.json")
    raw_headers = json.loads(headers_file.read_text()) if headers_file.exists() else {}
    return payload, {k.lower(): v for k, v in raw_headers.items()}


def normalize(payload: Any, config: SourceConfig | None = None, **kw: Any) -> TaskEvent:
    event = UnifiedProvider("goapi").normalize(
        inbound(payload, config or secret_config(), **kw), payload, "ev-1"
    )
    assert isinstance(event, TaskEvent)
    return event


def minimal(**data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"task_id": "t-1", "model": "m", "status": "completed"}
    body.update(data)
    return {"timestamp": NOW_TS, "data": body}


@pytest.mark.parametrize("name", UNIFIED_CASES)
def test_fixture_matches_oracle(name: str) -> None:
    expected = EXPECTED[name]
    payload, headers = fixture_case(name)
    provider = UnifiedProvider(expected["provider"])
    secret = headers.get("x-webhook-secret")
    config = secret_config(secret) if secret else token_config()
    req = inbound(payload, config, headers)

    provider.authenticate(req)
    event = provider.normalize(req, payload, "ev-1")

    assert isinstance(event, TaskEvent)
    assert event.provider == expected["provider"]
    assert event.id == "ev-1"
    assert event.source == "goapi-main"
    assert event.received_at == NOW
    assert event.test is False
    for key in ("task_id", "status", "provider_status", "final", "model", "task_type", "progress"):
        if key in expected:
            assert getattr(event, key) == expected[key], key
    if "prompt" in expected:
        assert event.prompt is not None
        assert expected["prompt"] in event.prompt
    if "outputs" in expected:
        got = [(o.kind, o.text if o.kind == "text" else o.url) for o in event.outputs]
        assert len(got) == len(expected["outputs"]), got
        for (kind, value), (want_kind, want_part) in zip(got, expected["outputs"], strict=True):
            assert kind == want_kind
            assert value is not None
            assert want_part in value
    if "error" in expected:
        assert event.error is not None
        assert expected["error"] in event.error.message
    if "duration_s" in expected:
        if expected["duration_s"] is None:
            assert event.duration_s is None
        else:
            assert event.duration_s is not None
            assert abs(event.duration_s - expected["duration_s"]) <= 1
    if "finished_at" in expected:
        assert event.finished_at is None
    assert event.dedupe_key == f"{event.task_id}:{event.provider_status.lower()}:{NOW_TS}"


@pytest.mark.parametrize("name", UNIFIED_CASES)
def test_secret_is_redacted_in_raw(name: str) -> None:
    payload, headers = fixture_case(name)
    secret = headers.get("x-webhook-secret")
    event = normalize(payload, secret_config(secret) if secret else token_config(), headers=headers)
    dumped = event.model_dump_json()
    if secret:
        assert secret not in dumped
        assert event.raw["data"]["config"]["webhook_config"]["secret"] == "[redacted]"
    # The original payload is left alone: redaction works on a copy.
    assert payload["data"]["config"]["webhook_config"]["endpoint"]


def test_default_providers_registry() -> None:
    providers = default_providers()
    assert sorted(providers) == [
        "apimart",
        "goapi",
        "goapi-account",
        "muapi",
        "novita",
        "piapi",
        "standard",
    ]
    assert all(p.name == key for key, p in providers.items())
    assert default_providers()["goapi"] is not providers["goapi"]


def test_authenticate_accepts_matching_secret() -> None:
    UnifiedProvider("goapi").authenticate(inbound(minimal(), secret_config()))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "x-webhook-secret header missing"),
        ({"x-webhook-secret": ""}, "x-webhook-secret header missing"),
        ({"x-webhook-secret": "wrong"}, "x-webhook-secret does not match"),
        ({"x-webhook-secret": SECRET + "x"}, "x-webhook-secret does not match"),
        ({"x-webhook-secret": "\udcff"}, "x-webhook-secret does not match"),
    ],
)
def test_authenticate_rejects_bad_secret(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(VerificationError) as info:
        UnifiedProvider("goapi").authenticate(inbound(minimal(), secret_config(), headers))
    assert info.value.reason == reason
    assert SECRET not in str(info.value)


def test_authenticate_token_only_source_accepts_without_header() -> None:
    UnifiedProvider("piapi").authenticate(inbound(minimal(), token_config(), {}))


def test_authenticate_refuses_source_without_secret_or_token() -> None:
    with pytest.raises(VerificationError):
        UnifiedProvider("goapi").authenticate(
            inbound(minimal(), SourceConfig(provider="goapi"), {})
        )


@pytest.mark.parametrize("offset", [-301, 301, -86400, 10**6])
def test_timestamp_outside_window_is_refused(offset: int) -> None:
    payload = minimal()
    payload["timestamp"] = NOW_TS + offset
    with pytest.raises(VerificationError) as info:
        normalize(payload)
    assert info.value.reason == f"timestamp {NOW_TS + offset} is outside the 300 s replay window"


@pytest.mark.parametrize("offset", [-300, 0, 299])
def test_timestamp_inside_window_is_accepted(offset: int) -> None:
    payload = minimal()
    payload["timestamp"] = NOW_TS + offset
    assert normalize(payload).task_id == "t-1"


def test_timestamp_window_follows_config() -> None:
    payload = minimal()
    payload["timestamp"] = NOW_TS - 500
    with pytest.raises(VerificationError, match="60 s replay window"):
        normalize(payload, secret_config(window=60))
    assert normalize(payload, secret_config(window=600)).task_id == "t-1"


def test_timestamp_as_numeric_string() -> None:
    payload = minimal()
    payload["timestamp"] = str(NOW_TS)
    assert normalize(payload).dedupe_key == f"t-1:completed:{NOW_TS}"


@pytest.mark.parametrize("value", [None, "", "soon", True, [], {}, float("nan")])
def test_timestamp_missing_or_malformed(value: Any) -> None:
    payload = minimal()
    if value is None:
        del payload["timestamp"]
    else:
        payload["timestamp"] = value
    with pytest.raises(VerificationError, match=r"^timestamp"):
        normalize(payload)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("data"), "data:"),
        (lambda p: p.update(data=[1]), "data:"),
        (lambda p: p["data"].pop("task_id"), "data.task_id:"),
        (lambda p: p["data"].update(task_id=42), "data.task_id:"),
        (lambda p: p["data"].update(task_id="  "), "data.task_id:"),
        (lambda p: p["data"].pop("status"), "data.status:"),
        (lambda p: p["data"].update(status=None), "data.status:"),
        (lambda p: p["data"].update(status=["completed"]), "data.status:"),
    ],
)
def test_missing_required_field_names_it(mutate: Any, field: str) -> None:
    payload = minimal()
    mutate(payload)
    with pytest.raises(PayloadError) as info:
        normalize(payload)
    assert info.value.reason.startswith(field)


@pytest.mark.parametrize("body", [[], "x", 3, None])
def test_body_not_an_object(body: Any) -> None:
    with pytest.raises(PayloadError, match=r"^body"):
        normalize(body)


@pytest.mark.parametrize(
    ("raw", "status", "final"),
    [
        ("COMPLETED", "succeeded", True),
        ("Staged", "pending", False),
        ("pending", "pending", False),
        ("Running", "processing", False),
        ("starting", "processing", False),
        ("success", "succeeded", True),
        ("SUCCEEDED", "succeeded", True),
        ("Failed", "failed", True),
        ("error", "failed", True),
        ("canceled", "cancelled", True),
        ("Cancelled", "cancelled", True),
        ("retry_queued", "processing", False),
    ],
)
def test_status_mapping(raw: str, status: str, final: bool) -> None:
    event = normalize(minimal(status=raw))
    assert (event.status, event.final, event.provider_status) == (status, final, raw)
    assert event.dedupe_key == f"t-1:{raw.lower()}:{NOW_TS}"


def test_kling_works_prefers_no_watermark() -> None:
    output = {
        "type": "m2v_txt2video",
        "status": 99,
        "works": [
            {
                "content_type": "video",
                "status": 99,
                "cover": {
                    "resource": "https://cdn.example.com/k/cover.jpg",
                    "resource_without_watermark": "",
                    "width": 1280,
                    "height": 720,
                },
                "video": {
                    "resource": "https://cdn.example.com/k/watermarked.mp4",
                    "resource_without_watermark": "https://storage.example.com/k/clean.mp4",
                    "width": 1280,
                    "height": 720,
                    "duration": 5100,
                },
            }
        ],
        # Newer Kling responses repeat the clean URL here: it must not become a second output.
        "video_url": "https://storage.example.com/k/clean.mp4",
    }
    event = normalize(minimal(model="kling", input={"prompt": "a cat surfing"}, output=output))
    assert event.prompt == "a cat surfing"
    assert len(event.outputs) == 1
    video = event.outputs[0]
    assert (video.kind, video.url) == ("video", "https://storage.example.com/k/clean.mp4")
    assert (video.width, video.height) == (1280, 720)
    assert video.thumbnail_url == "https://cdn.example.com/k/cover.jpg"


def test_kling_image_work_and_top_level_video_urls() -> None:
    output = {
        "works": [{"image": {"resource": "https://cdn.example.com/k/img.png"}}, "junk", None],
        "video_urls": ["https://cdn.example.com/k/a.mp4", "", 7],
    }
    event = normalize(minimal(output=output))
    assert [(o.kind, o.url) for o in event.outputs] == [
        ("image", "https://cdn.example.com/k/img.png"),
        ("video", "https://cdn.example.com/k/a.mp4"),
    ]


def test_3d_model_file_and_combined_video() -> None:
    output = {
        "model_file": "https://cdn.example.com/3d/model.glb",
        "combined_video": "https://cdn.example.com/3d/turntable.mp4",
    }
    event = normalize(minimal(model="Qubico/trellis", output=output))
    assert [(o.kind, o.url) for o in event.outputs] == [
        ("model3d", "https://cdn.example.com/3d/model.glb"),
        ("video", "https://cdn.example.com/3d/turntable.mp4"),
    ]


def urls(event: TaskEvent) -> list[tuple[str, str | None]]:
    return [(o.kind, o.url or o.text) for o in event.outputs]


def test_kling_top_video_url_is_the_first_works_clip() -> None:
    # PiAPI repeats the first clip's clean copy as output.video_url: never a second output,
    # and the URL to use when the work only has its watermarked resource.
    work = {
        "video": {"resource": "https://k.example.com/1-wm.mp4", "resource_without_watermark": ""}
    }
    second = {"video": {"resource": "https://k.example.com/2-wm.mp4"}}
    output = {"video_url": "https://s.example.com/1.mp4", "works": [work, second]}
    assert urls(normalize(minimal(output=output))) == [
        ("video", "https://s.example.com/1.mp4"),
        ("video", "https://k.example.com/2-wm.mp4"),
    ]
    work["video"]["resource_without_watermark"] = "https://s.example.com/1-clean.mp4"
    assert urls(normalize(minimal(output=output)))[0] == (
        "video",
        "https://s.example.com/1-clean.mp4",
    )
    assert len(normalize(minimal(output=output)).outputs) == 2


def test_kling_works_as_a_map_and_an_audio_work() -> None:
    # Kling Sound's result shape is not documented: an audio work is read like the others.
    output = {"works": {"w1": {"audio": {"resource": "https://k.example.com/sound.mp3"}}}}
    assert urls(normalize(minimal(output=output))) == [("audio", "https://k.example.com/sound.mp3")]


def test_luma_video_raw_wins_and_video_is_the_fallback() -> None:
    output: dict[str, Any] = {
        "video": {"url": "https://l.example.com/wm.mp4", "width": 1152, "height": 864},
        "video_raw": None,
        "thumbnail": {"url": "https://l.example.com/thumb.jpg"},
        "last_frame": "https://l.example.com/last.jpg",
    }
    event = normalize(minimal(output=output))
    assert urls(event) == [
        ("video", "https://l.example.com/wm.mp4"),
        ("image", "https://l.example.com/last.jpg"),
    ]
    assert (event.outputs[0].width, event.outputs[0].thumbnail_url) == (
        1152,
        "https://l.example.com/thumb.jpg",
    )
    output["video_raw"] = {"url": "https://l.example.com/raw.mp4"}
    assert urls(normalize(minimal(output=output)))[0] == ("video", "https://l.example.com/raw.mp4")


def test_hailuo_download_url_is_the_same_clip_only_when_a_video() -> None:
    output = {
        "video_url": "https://h.example.com/v.mp4",
        "download_url": "https://h.example.com/v-dl.mp4",
        "cover_url": "https://h.example.com/cover.jpeg",
    }
    event = normalize(minimal(output=output))
    assert urls(event) == [("video", "https://h.example.com/v.mp4")]
    assert event.outputs[0].thumbnail_url == "https://h.example.com/cover.jpeg"
    # A download that is not a video is a file of its own; alone, a download is the result.
    output["download_url"] = "https://h.example.com/project.zip"
    assert len(normalize(minimal(output=output)).outputs) == 2
    assert urls(normalize(minimal(output={"download_url": "https://h.example.com/v.mp4"}))) == [
        ("video", "https://h.example.com/v.mp4")
    ]


@pytest.mark.parametrize(
    ("output", "want"),
    [({"percent": 37}, 37), ({"task_progress": "55"}, 55), ({"progress": 10, "percent": 90}, 10),
     ({"percent": ""}, None)],
)  # fmt: skip
def test_progress_keys(output: dict[str, Any], want: int | None) -> None:
    assert normalize(minimal(status="processing", output=output)).progress == want


@pytest.mark.parametrize(
    ("output", "want"),
    [
        ({"description": "1\ufe0f\u20e3 a\n\n2\ufe0f\u20e3 b\n\n3\u20e3 c"}, ["a", "b", "c"]),
        ({"description": "one plain prompt"}, ["one plain prompt"]),
        ({"description": ["x", "y", "x", 3]}, ["x", "y"]),
        ({"descriptions": ["p1", "p2"]}, ["p1", "p2"]),
        ({"description": ""}, []),
    ],
)
def test_midjourney_describe_variants(output: dict[str, Any], want: list[str]) -> None:
    event = normalize(minimal(model="midjourney", task_type="describe", output=output))
    assert [(o.kind, o.text) for o in event.outputs] == [("text", t) for t in want]


@pytest.mark.parametrize(
    ("output", "want"),
    [({"seed": 12345}, ["12345"]), ({"seed": "987"}, ["987"]), ({"seed": 0}, []),
     ({"seed": True}, []), ({"seed": 5, "image_url": "https://m.example.com/i.png"}, [])],
)  # fmt: skip
def test_midjourney_seed_is_text_only_without_other_outputs(
    output: dict[str, Any], want: list[str]
) -> None:
    texts = [o.text for o in normalize(minimal(output=output)).outputs if o.kind == "text"]
    assert texts == want


def test_clips_and_songs_read_as_list_or_map() -> None:
    clip = {"audio_url": "https://a.example.com/c.mp3", "title": " T ", "image_url": "x:bad"}
    song = {"song_path": "https://a.example.com/s.mp3", "image_path": "https://a.example.com/s.jpg"}
    event = normalize(minimal(output={"clips": [clip], "songs": {"id-1": song, "id-2": None}}))
    assert urls(event) == [
        ("audio", "https://a.example.com/c.mp3"),
        ("audio", "https://a.example.com/s.mp3"),
    ]
    # Only web URLs become thumbnails.
    assert (event.outputs[0].title, event.outputs[0].thumbnail_url) == ("T", None)
    assert event.outputs[1].thumbnail_url == "https://a.example.com/s.jpg"


def test_object_video_prefers_no_watermark() -> None:
    # OmniHuman may answer with an object (public client code reads its
    # resource_without_watermark): one output, the clean URL.
    video = {
        "resource": "https://o.example.com/wm.mp4",
        "resource_without_watermark": "https://o.example.com/c.mp4",
    }
    assert urls(normalize(minimal(output={"video": video}))) == [
        ("video", "https://o.example.com/c.mp4")
    ]


def test_text_results_and_string_media_keys() -> None:
    output = {
        "title": "Calm breeze",
        "text": "[Verse] calm",
        "image": "https://i.example.com/a.webp",
        "audio": "https://i.example.com/a.wav",
        "lyrics_pairs": [{"title": "W", "text": "[Verse] w"}, {"text": ""}, "junk"],
    }
    event = normalize(minimal(output=output))
    assert [(o.kind, o.url or o.text, o.title) for o in event.outputs] == [
        ("text", "[Verse] calm", "Calm breeze"),
        ("text", "[Verse] w", "W"),
        ("audio", "https://i.example.com/a.wav", None),
        ("image", "https://i.example.com/a.webp", None),
    ]


def test_trellis_no_background_image_and_model_file_object() -> None:
    output = {
        "model_file": {"url": "https://t.example.com/m.glb"},
        "no_background_image": "https://t.example.com/nobg.png",
    }
    assert urls(normalize(minimal(output=output))) == [
        ("model3d", "https://t.example.com/m.glb"),
        ("image", "https://t.example.com/nobg.png"),
    ]


@pytest.mark.parametrize("output", [None, 5, "x", True, {}, []])
def test_null_or_odd_output_gives_no_outputs(output: Any) -> None:
    event = normalize(minimal(output=output))
    assert event.outputs == []
    assert event.progress == 100


def test_midjourney_image_urls_win_and_intermediate_are_skipped() -> None:
    output = {
        "image_url": "https://img.example.com/grid.png",
        "image_urls": ["https://img.example.com/1.png", "https://img.example.com/2.png"],
        "temporary_image_urls": ["https://img.example.com/tmp.png"],
        "intermediate_image_urls": ["https://img.example.com/progress.webp"],
    }
    event = normalize(minimal(model="midjourney", output=output))
    assert [o.url for o in event.outputs] == [
        "https://img.example.com/1.png",
        "https://img.example.com/2.png",
    ]
    output["image_urls"] = []
    assert [o.url for o in normalize(minimal(output=output)).outputs] == [
        "https://img.example.com/grid.png"
    ]
    output["image_url"] = ""
    assert [o.url for o in normalize(minimal(output=output)).outputs] == [
        "https://img.example.com/tmp.png"
    ]


def test_generic_output_keys_and_duplicates() -> None:
    output = {
        "audio_url": "https://cdn.example.com/a.mp3",
        "images": [{"url": "https://cdn.example.com/i.webp", "width": 512, "height": 512}],
        "url": "https://cdn.example.com/a.mp3",
        "download_url": "https://cdn.example.com/pack.zip?sig=1",
        "image_base64": "iVBORw0KGgo=",
        "video": "data:video/mp4;base64,AAAA",
    }
    event = normalize(minimal(output=output))
    assert [(o.kind, o.url) for o in event.outputs] == [
        ("audio", "https://cdn.example.com/a.mp3"),
        ("image", "https://cdn.example.com/i.webp"),
        ("file", "https://cdn.example.com/pack.zip?sig=1"),
    ]
    assert event.outputs[1].width == 512


def test_suno_clips_skip_those_without_audio() -> None:
    output = [
        {
            "audio_url": "https://cdn.example.com/1.mp3",
            "title": "One",
            "image_url": "https://c/1.jpg",
        },
        {"audio_url": "", "title": "Pending"},
        {"title": "No audio"},
    ]
    event = normalize(minimal(model="suno", output=output))
    assert len(event.outputs) == 1
    clip = event.outputs[0]
    assert (clip.kind, clip.title, clip.thumbnail_url) == ("audio", "One", "https://c/1.jpg")


def test_s3_presigned_url_gives_expiry() -> None:
    url = (
        "https://bucket.s3.amazonaws.com/out/img.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&x-amz-date=20250701T115500Z&X-Amz-Expires=3600&X-Amz-Signature=abc"
    )
    event = normalize(minimal(output={"image_url": url}))
    assert event.outputs[0].expires_at == datetime(2025, 7, 1, 12, 55, tzinfo=UTC)


@pytest.mark.parametrize(
    ("progress", "status", "want"),
    [(46, "processing", 46), (46.6, "processing", 47), ("12", "processing", 12),
     (150, "processing", 100), (-3, "processing", 0), ("x", "processing", None),
     (None, "processing", None), (True, "processing", None), (10, "completed", 100)],
)  # fmt: skip
def test_progress(progress: Any, status: str, want: int | None) -> None:
    event = normalize(minimal(status=status, output={"progress": progress}))
    assert event.progress == want


def test_prompt_sources_in_order() -> None:
    assert normalize(minimal(input={"prompt": " ", "user_prompt": "u"})).prompt == "u"
    assert normalize(minimal(input={"gpt_description_prompt": "g"})).prompt == "g"
    assert normalize(minimal(input={"text": "t"})).prompt == "t"
    luma = {"generation": {"prompt": "expanded"}}
    assert normalize(minimal(input={}, output=luma)).prompt == "expanded"
    assert normalize(minimal(input="odd")).prompt is None


@pytest.mark.parametrize(
    ("error", "code", "message", "detail"),
    [
        ({"code": 10000, "message": "m", "raw_message": "r"}, "10000", "m", "r"),
        ({"code": 10000, "message": "", "raw_message": "r"}, "10000", "r", None),
        ({"code": 0, "message": "m", "raw_message": "m"}, None, "m", None),
        ({"code": "E42", "message": ""}, "E42", "error code E42", None),
        ("plain text", None, "plain text", None),
    ],
)
def test_error_mapping(error: Any, code: str | None, message: str, detail: str | None) -> None:
    event = normalize(minimal(status="failed", error=error))
    assert event.error is not None
    assert (event.error.code, event.error.message, event.error.detail) == (code, message, detail)


@pytest.mark.parametrize("error", [None, {}, {"code": 0, "message": ""}, {"code": "0"}, 7, []])
def test_no_error(error: Any) -> None:
    assert normalize(minimal(error=error)).error is None


def test_timing_and_usage() -> None:
    meta = {
        "created_at": "2025-06-30T07:11:30.719851187Z",
        "started_at": "2025-06-30T07:11:31Z",
        "ended_at": "2025-06-30T07:12:03.388312371Z",
        "usage": {"type": "llm", "consume": 200000},
    }
    event = normalize(minimal(meta=meta))
    assert event.created_at == datetime(2025, 6, 30, 7, 11, 30, 719851, tzinfo=UTC)
    assert event.started_at == datetime(2025, 6, 30, 7, 11, 31, tzinfo=UTC)
    assert event.duration_s == 32.7
    assert event.usage == {"type": "llm", "consume": 200000}


@pytest.mark.parametrize("meta", [[1, 2], "x", 3, {"created_at": 5, "ended_at": [], "usage": []}])
def test_wrong_typed_meta_is_ignored(meta: Any) -> None:
    event = normalize(minimal(meta=meta))
    assert (event.finished_at, event.duration_s, event.usage) == (None, None, None)


def test_naive_received_at_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert normalize(minimal(), received_at=naive).task_id == "t-1"


def test_received_at_is_ours_not_the_clock() -> None:
    later = NOW + timedelta(hours=1)
    payload = minimal()
    payload["timestamp"] = int(later.timestamp())
    assert normalize(payload, received_at=later).received_at == later


# -- property: any JSON gives an event or one of our two errors, nothing else -----------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
OUTPUT_KEYS = [
    "generation", "video", "works", "video_url", "video_urls", "image_url", "image_urls",
    "temporary_image_urls", "model_file", "combined_video", "text", "audio_url", "images",
    "videos", "audios", "url", "download_url", "progress", "cover", "resource", "clips",
    "songs", "video_raw", "last_frame", "thumbnail", "description", "descriptions",
    "lyrics_pairs", "seed", "cover_url", "no_background_image", "percent", "task_progress",
    "image", "audio", "lyrics", "title", "mesh_url",
]  # fmt: skip
OUTPUT = st.dictionaries(st.sampled_from(OUTPUT_KEYS), JSON, max_size=6) | st.lists(
    st.dictionaries(st.sampled_from(["audio_url", "title", "image_url"]), JSON), max_size=3
)
DATA = st.fixed_dictionaries(
    {
        "task_id": st.text(max_size=10) | JSON,
        "status": st.sampled_from(["completed", "failed", "Processing", "weird"]) | JSON,
    },
    optional={
        "output": OUTPUT | JSON,
        "meta": st.dictionaries(
            st.sampled_from(["created_at", "started_at", "ended_at", "usage"]),
            JSON | st.text(max_size=30) | st.integers(),
        )
        | JSON,
        "error": st.dictionaries(st.sampled_from(["code", "message", "raw_message"]), JSON) | JSON,
        "input": st.dictionaries(st.sampled_from(["prompt", "user_prompt", "text"]), JSON) | JSON,
        "model": JSON,
        "task_type": JSON,
        "config": JSON,
    },
)
PAYLOADS = JSON | st.fixed_dictionaries(
    {"timestamp": st.just(NOW_TS) | st.just(str(NOW_TS)) | JSON, "data": DATA | JSON}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS)
def test_any_json_gives_event_or_our_error(payload: Any) -> None:
    provider = UnifiedProvider("goapi")
    req = inbound(payload, token_config(), {})
    before = copy.deepcopy(payload)
    try:
        result = provider.normalize(req, payload, "ev-1")
    except (PayloadError, VerificationError):
        return
    assert isinstance(result, TaskEvent | Ignored)
    if isinstance(result, TaskEvent):
        # The event must survive the trip to JSON (the store and the webhook channel need it).
        TaskEvent.model_validate_json(result.model_dump_json())
    # normalize must not change its input (raw is a redacted copy).
    assert payload == before
