"""What every channel shows about an event (relay.render.summary)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from relay.events import Output, TaskError
from relay.render.models import model_display
from relay.render.names import ProviderInfo, ProviderNames
from relay.render.summary import summarize
from relay.render.text import (
    and_more,
    clean_text,
    format_time,
    human_duration,
    one_line,
    shorten,
    web_url,
)
from tests.events_factory import make_event
from tests.render.fixture_events import PROVIDER_NAMES, fixture_events

T0 = datetime(2025, 7, 1, 12, 0, 0, tzinfo=UTC)


def image(url: str = "https://cdn.example/i.png", **kw: Any) -> Output:
    return Output(kind="image", url=url, **kw)


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit", "want"),
    [
        ("short", 10, "short"),
        ("exactly10!", 10, "exactly10!"),
        ("a longer sentence", 8, "a longe…"),
        ("word    then", 6, "word…"),
        ("please modify your prompt", 23, "please modify your…"),
        ("no-spaces-in-this-id-at-all", 10, "no-spaces…"),
        ("abc", 1, "…"),
        ("abc", 0, ""),
    ],
)
def test_shorten(text: str, limit: int, want: str) -> None:
    got = shorten(text, limit)
    assert got == want
    assert len(got) <= max(limit, 0)


def test_and_more() -> None:
    assert and_more(3) == "… and 3 more"
    assert and_more(62, "output") == "… and 62 more outputs"
    assert and_more(1, "output") == "… and 1 more output"


@pytest.mark.parametrize(
    ("seconds", "want"),
    [
        (None, None),
        (-1.0, None),
        (float("nan"), None),
        (float("inf"), None),
        (0.0, "0 s"),
        (0.42, "0.4 s"),
        (2.13, "2.1 s"),
        (9.0, "9 s"),
        (42.0, "42 s"),
        (59.6, "1 min"),
        (185.0, "3 min 5 s"),
        (181.2, "3 min 1 s"),
        (3600.0, "1 h"),
        (3725.0, "1 h 2 min"),
        (90000.0, "1 d 1 h"),
        (172800.0, "2 d"),
    ],
)
def test_human_duration(seconds: float | None, want: str | None) -> None:
    assert human_duration(seconds) == want


def test_format_time_has_no_microseconds_and_says_utc() -> None:
    when = datetime(2024, 8, 24, 15, 4, 13, 530132, tzinfo=UTC)
    assert format_time(when) == "2024-08-24 15:04 UTC"
    assert format_time(when, seconds=True) == "2024-08-24 15:04:13 UTC"
    # Naive is taken as UTC; other zones are converted.
    assert format_time(datetime(2024, 8, 24, 15, 4)) == "2024-08-24 15:04 UTC"
    plus2 = datetime(2024, 8, 24, 17, 4, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert format_time(plus2) == "2024-08-24 17:04 UTC"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://cdn.example/a.png", True),
        ("http://cdn.example/a.png?x=1&y=2#f", True),
        ("javascript:alert(1)", False),
        ("JavaScript://cdn.example/%0aalert(1)", False),
        ("data:image/png;base64,AAAA", False),
        ("ftp://cdn.example/a.png", False),
        ("//cdn.example/a.png", False),
        ("https:///nohost", False),
        ("https://user@evil.example/", False),
        ("https://cdn.example/a b.png", False),
        ("https://cdn.example/a\n.png", False),
        (" https://cdn.example/a.png", False),
        ("https://cdn.example/\u202egnp.exe", False),
        ("", False),
        (None, False),
    ],
)
def test_web_url(url: str | None, ok: bool) -> None:
    assert web_url(url) == (url if ok else None)


def test_web_url_writes_the_scheme_in_lower_case() -> None:
    assert web_url("HTTPS://CDN.EXAMPLE/A.PNG") == "https://CDN.EXAMPLE/A.PNG"
    assert web_url("Http://cdn.example/a.png") == "http://cdn.example/a.png"


def test_clean_text_drops_controls_and_bidi_overrides() -> None:
    raw = "  a\x00b\r\nc\u202ed\x1b[31m\u2028e\t f  "
    assert clean_text(raw) == "a b\ncd [31m\ne f"
    assert one_line(raw) == "a b cd [31m e f"
    assert one_line("x\r\nBcc: y@z") == "x Bcc: y@z"
    assert clean_text(None) == ""


@pytest.mark.parametrize(
    ("model", "want"),
    [
        ("kling", "Kling"),
        ("kling-v2-master", "Kling"),
        ("midjourney", "Midjourney"),
        ("mj", "Midjourney"),
        ("luma", "Luma"),
        ("suno", "Suno"),
        ("chirp-v3-5", "Suno"),
        ("music-s", "Suno"),
        ("music-u", "Udio"),
        ("Qubico/flux1-dev-advanced", "Flux"),
        ("Qubico/flux1-schnell", "Flux"),
        ("flux", "Flux"),
        ("Qubico/joycaption", "JoyCaption"),
        ("Qubico/wanx", "Wan"),
        ("Qubico/trellis", "Trellis"),
        ("veo3", "Veo"),
        ("hailuo", "Hailuo"),
        ("Qubico/image-toolkit", "Qubico/image-toolkit"),
        ("some new model", "some new model"),
        ("mjx", "mjx"),
        ("wand", "wand"),
        ("  kling\r\n", "Kling"),
        ("a\x00b", "a b"),
        ("", None),
        ("   ", None),
        ("/", "/"),
        (None, None),
    ],
)
def test_model_display(model: str | None, want: str | None) -> None:
    assert model_display(model) == want


def test_provider_display() -> None:
    display = PROVIDER_NAMES.display
    assert display("goapi") == "GoAPI"
    assert display("apimart") == "APIMart"
    assert display("goapi-account") == "GoAPI account"
    assert display("standard") == "Standard Webhooks"
    assert display("brand-new") == "brand-new"
    assert display(" brand\u202e-new\n") == "brand-new"
    assert display("") == "unknown provider"


def test_an_unknown_provider_is_shown_by_name_and_never_as_an_alert() -> None:
    """An event from another relay may name a provider this one does not have."""
    summary = summarize(make_event(provider="elsewhere", model=None), ProviderNames())
    assert summary.provider == "elsewhere"
    assert summary.alert is False
    assert ("Provider", "elsewhere") in summary.facts


def test_alerts_come_from_the_declared_names() -> None:
    """Whatever provider declares ``alerts`` is titled as its account alert, phrased with its
    own phrases, without repeating its brand."""
    names = ProviderNames(
        {"acme": ProviderInfo("AcmeAI ops", alerts=True, alert_phrases={"k1": "AcmeAI key gone"})}
    )
    known = make_event(provider="acme", status="failed", task_type="k1", outputs=[])
    assert summarize(known, names).title == "AcmeAI ops alert: Key gone"
    other = make_event(provider="acme", status="failed", task_type="acme_ai_new_thing", outputs=[])
    assert summarize(other, names).title == "AcmeAI ops alert: New thing"
    assert summarize(known, PROVIDER_NAMES).alert is False


# -- titles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        ({"model": "kling", "task_type": "video_generation"}, "Kling video ready"),
        (
            {"model": "midjourney", "task_type": "imagine", "status": "failed", "outputs": []},
            "Midjourney imagine failed",
        ),
        (
            {
                "model": "luma",
                "status": "processing",
                "progress": 45,
                "outputs": [],
            },
            "Luma video: processing 45%",
        ),
        (
            {"model": "luma", "status": "processing", "outputs": []},
            "Luma video: processing",
        ),
        ({"model": "luma", "status": "pending", "outputs": []}, "Luma video: pending"),
        ({"model": "kling", "status": "cancelled", "outputs": []}, "Kling video cancelled"),
        (
            {
                "model": "suno",
                "task_type": "music",
                "outputs": [Output(kind="audio", url="https://cdn.example/a.mp3")],
            },
            "Suno music ready",
        ),
        (
            {
                "model": "music-u",
                "task_type": "generate_music",
                "outputs": [Output(kind="audio", url="https://cdn.example/a.mp3")],
            },
            "Udio music ready",
        ),
        (
            {"model": "Qubico/flux1-dev-advanced", "task_type": "kontext", "outputs": [image()]},
            "Flux image ready",
        ),
        (
            {"model": "midjourney", "task_type": "imagine", "outputs": [image(), image()]},
            "Midjourney images ready",
        ),
        (
            {"model": None, "task_type": "IMG_TO_VIDEO", "provider": "novita", "outputs": []},
            "Novita video finished",
        ),
        (
            {
                "model": None,
                "task_type": None,
                "provider": "apimart",
                "status": "failed",
                "outputs": [],
            },
            "APIMart task failed",
        ),
        (
            {"model": None, "task_type": None, "provider": "muapi", "outputs": []},
            "MuAPI task finished",
        ),
        (
            {
                "model": "Qubico/joycaption",
                "task_type": "joycaption-beta-one",
                "outputs": [Output(kind="text", text="a caption")],
            },
            "JoyCaption caption ready",
        ),
        (
            {"model": "Qubico/trellis", "outputs": [Output(kind="model3d", url="https://x.ex/m")]},
            "Trellis 3D model ready",
        ),
        (
            {"model": "odd\u0000model", "task_type": "face_swap", "outputs": []},
            "odd model face swap finished",
        ),
        (
            {"model": "m", "task_type": "\u0000!!weird//type!!" * 5, "outputs": []},
            "m task finished",
        ),
    ],
)
def test_titles(overrides: dict[str, Any], want: str) -> None:
    assert summarize(make_event(**overrides), PROVIDER_NAMES).title == want


def test_a_huge_model_name_keeps_the_title_short_and_the_facts_whole() -> None:
    model = "m" * 500
    summary = summarize(make_event(model=model), PROVIDER_NAMES)
    assert len(summary.title) < 60
    assert summary.title.endswith("… video ready")
    assert dict(summary.facts)["Model"] == shorten(model, 200)


def test_outcome_marks() -> None:
    for status, emoji in [
        ("succeeded", ":white_check_mark:"),
        ("failed", ":x:"),
        ("processing", ":hourglass_flowing_sand:"),
        ("pending", ":inbox_tray:"),
        ("cancelled", ":no_entry_sign:"),
    ]:
        summary = summarize(make_event(status=status), PROVIDER_NAMES)
        assert summary.outcome == status
        assert summary.emoji == emoji
        assert summary.symbol


# -- facts -------------------------------------------------------------------------------------


def test_facts_in_order_with_full_task_id_and_human_duration() -> None:
    task_id = "58cb41b7-556d-46c0-b82e-1e116aa1a31a"
    event = make_event(
        task_id=task_id, model="Qubico/flux1-dev", task_type="txt2img", duration_s=185.0
    )
    assert summarize(event, PROVIDER_NAMES).facts == (
        ("Provider", "GoAPI"),
        ("Model", "Qubico/flux1-dev"),
        ("Task type", "txt2img"),
        ("Task ID", task_id),
        ("Duration", "3 min 5 s"),
    )


def test_facts_skip_what_is_missing_or_already_in_the_title() -> None:
    event = make_event(model="luma", task_type="video", duration_s=None)
    facts = dict(summarize(event, PROVIDER_NAMES).facts)
    assert "Model" not in facts  # "luma" is the title's "Luma"
    assert "Task type" not in facts  # "video" is the title's "video"
    assert "Duration" not in facts
    for label, value in summarize(event, PROVIDER_NAMES).facts:
        assert value and value != "None", label


def test_progress_only_while_not_final() -> None:
    running = summarize(make_event(status="processing", progress=45, outputs=[]), PROVIDER_NAMES)
    assert dict(running.facts)["Progress"] == "45%"
    done = summarize(make_event(status="succeeded", progress=100), PROVIDER_NAMES)
    assert "Progress" not in dict(done.facts)


# -- outputs, expiry, error, test --------------------------------------------------------------


def test_outputs_are_labelled_and_links_checked() -> None:
    event = make_event(
        outputs=[
            image("https://cdn.example/1.png", width=1024, height=768),
            image("javascript:alert(1)"),
            Output(kind="audio", url="https://cdn.example/a.mp3", title="Cat Dance"),
            Output(kind="audio", url="https://cdn.example/b.mp3", title="Cat Dance"),
            Output(kind="video", url=None, thumbnail_url="data:image/png;base64,AA"),
            Output(kind="text", text="  hello\r\nworld  "),
        ]
    )
    views = summarize(event, PROVIDER_NAMES).outputs
    assert [v.label for v in views] == [
        "Image 1 of 2",
        "Image 2 of 2",
        "Cat Dance (1 of 2)",
        "Cat Dance (2 of 2)",
        "Video",
        "Text",
    ]
    assert views[0].size == "1024\u00d7768"
    assert views[0].link == "https://cdn.example/1.png"
    assert views[1].link is None
    assert views[1].url == "javascript:alert(1)"
    assert views[4].thumbnail is None
    assert views[5].text == "hello\nworld"


def test_expires_at_is_the_earliest_and_phrased() -> None:
    soon, later = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    event = make_event(
        received_at=T0,
        outputs=[image(expires_at=later), image(expires_at=soon), image()],
    )
    summary = summarize(event, PROVIDER_NAMES)
    assert summary.expires_at == soon
    assert summary.expiry_phrase() == "Links start to expire"
    one = summarize(make_event(received_at=T0, outputs=[image(expires_at=soon)]), PROVIDER_NAMES)
    assert one.expiry_phrase() == "Link expires"
    gone = summarize(
        make_event(received_at=later, outputs=[image(expires_at=soon)]), PROVIDER_NAMES
    )
    assert gone.expiry_phrase() == "Link expired"
    assert summarize(make_event(), PROVIDER_NAMES).expiry_phrase() is None


def test_error_is_cleaned_and_json_detail_readable() -> None:
    event = make_event(
        status="failed",
        outputs=[],
        error=TaskError(code=" 10000 ", message="bad\r\nthing", detail='{"a": 1, "b": "x y"}'),
    )
    error = summarize(event, PROVIDER_NAMES).error
    assert error is not None
    assert (error.code, error.message, error.detail) == ("10000", "bad\nthing", "a: 1 · b: x y")
    empty = summarize(make_event(status="failed", error=TaskError(message="  ")), PROVIDER_NAMES)
    assert empty.error is not None and empty.error.message == "(no message given)"


def test_test_flag_and_prompt() -> None:
    summary = summarize(make_event(test=True, prompt="  a cat\r\n dancing \x07 "), PROVIDER_NAMES)
    assert summary.test is True
    assert summary.prompt == "a cat\n dancing"
    assert summarize(make_event(prompt="   "), PROVIDER_NAMES).prompt is None


# -- the shared fixtures -----------------------------------------------------------------------


def by_name() -> dict[str, Any]:
    return dict(fixture_events())


def test_fixture_titles() -> None:
    titles = {name: summarize(event, PROVIDER_NAMES).title for name, event in fixture_events()}
    assert titles == {
        "apimart__failed": "APIMart task failed",
        "apimart__image_success": "APIMart image ready",
        "apimart__video_success": "APIMart video ready",
        "goapi__failed_midjourney": "Midjourney imagine failed",
        "goapi__image_success_flux": "Flux image ready",
        "goapi__midjourney_processing_progress": "Midjourney imagine: processing 46%",
        "goapi__text_success_joycaption": "JoyCaption caption ready",
        "goapi__video_success_luma": "Luma video ready",
        "goapi_account__mj_bot_banned": "GoAPI account alert: Midjourney bot banned",
        "goapi_account__mj_penalty_triggered": "GoAPI account alert: Midjourney penalty triggered",
        "goapi_account__quota_exchange_failed": "GoAPI account alert: Quota exchange failed",
        "muapi__failed": "MuAPI task failed",
        "muapi__image_success": "MuAPI image ready",
        "novita__failed": "Novita video failed",
        "novita__image_success": "Novita image ready",
        "novita__test_mode_succeed": "Novita image ready",
        "piapi__audio_success_suno_music": "Suno music ready",
    }


def test_account_alerts_read_as_alerts() -> None:
    events = by_name()
    banned = summarize(events["goapi_account__mj_bot_banned"], PROVIDER_NAMES)
    assert banned.alert is True
    assert banned.emoji == ":rotating_light:"
    assert banned.error is not None
    assert banned.error.code == "mj_bot_banned"
    assert banned.error.message == "Your Midjourney bot has been banned"
    assert banned.error.detail is not None and "bot_name: studio-bot-2" in banned.error.detail
    assert [label for label, _ in banned.facts] == ["Raised", "Alert ID"]
    # A message that only repeats the title is said once.
    penalty = summarize(events["goapi_account__mj_penalty_triggered"], PROVIDER_NAMES)
    assert penalty.error is not None and penalty.error.message == ""
