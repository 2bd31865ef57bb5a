"""The email rendering: snapshots of the text part, the subject line, HTML escaping."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.events import Output, TaskError
from relay.render.mail import MailContent, mail_content
from tests.events_factory import make_event
from tests.render.fixture_events import (
    PROVIDER_NAMES,
    SNAPSHOTS,
    check_snapshot,
    fixture_events,
)

T0 = datetime(2025, 7, 1, 12, 0, 0, tzinfo=UTC)
FIXTURE_EVENTS = fixture_events()
NAMES = [name for name, _ in FIXTURE_EVENTS]
TASK_ID = "1a2b3c4d-5e6f-4a0b-9c8d-7e6f5a4b3c2d"


class _Collector(HTMLParser):
    """Every tag and attribute of an HTML document, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html_text: str) -> _Collector:
    collector = _Collector()
    collector.feed(html_text)
    collector.close()
    return collector


def assert_safe_mail(mail: MailContent) -> None:
    """One-line subject; HTML whose only tags are ours and whose links are all http(s)."""
    assert mail.subject and len(mail.subject) <= 200
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in mail.subject)
    assert mail.subject == mail.subject.strip()
    doc = parse(mail.html)
    allowed = {
        "html", "head", "meta", "title", "body", "div", "p", "h1", "table", "tr", "td",
        "a", "img", "blockquote", "code", "strong", "span", "br",
    }  # fmt: skip
    for tag, attrs in doc.tags:
        assert tag in allowed, tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("href", "src"):
            if name in attrs:
                value = attrs[name] or ""
                assert re.match(r"https?://", value), (tag, name, value)
    assert "<style" not in mail.html
    assert "<link" not in mail.html
    assert mail.text.endswith("\n")


# -- snapshots ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fixture_snapshot(name: str) -> None:
    mail = mail_content(dict(FIXTURE_EVENTS)[name], PROVIDER_NAMES)
    assert_safe_mail(mail)
    check_snapshot(SNAPSHOTS / "mail" / f"{name}.txt", f"Subject: {mail.subject}\n\n{mail.text}")


def test_no_stale_snapshots() -> None:
    files = sorted(p.stem for p in (SNAPSHOTS / "mail").glob("*.txt"))
    assert files == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_html_has_the_same_content_as_the_text(name: str) -> None:
    event = dict(FIXTURE_EVENTS)[name]
    mail = mail_content(event, PROVIDER_NAMES)
    html_text = " ".join(parse(mail.html).text)
    assert event.task_id in html_text
    for output in event.outputs:
        if output.url:
            assert output.url in mail.text
            assert output.url in " ".join(str(a.get("href")) for _, a in parse(mail.html).tags)
    if event.error is not None:
        assert event.error.code is None or event.error.code in html_text


# -- subjects ----------------------------------------------------------------------------------


def test_subject_for_a_success() -> None:
    mail = mail_content(make_event(task_id=TASK_ID, model="kling"), PROVIDER_NAMES)
    assert mail.subject == "[relay] Kling video ready: task 1a2b3c4d…"


def test_subject_for_a_failure_carries_the_short_error() -> None:
    event = make_event(
        task_id=TASK_ID,
        status="failed",
        model="midjourney",
        task_type="imagine",
        outputs=[],
        error=TaskError(code="10000", message="failed to do task: midjourney rejected the prompt"),
    )
    assert mail_content(event, PROVIDER_NAMES).subject == (
        "[relay] FAILED Midjourney imagine: failed to do task: midjourney rejected the prompt"
    )
    long = event.model_copy(update={"error": TaskError(message="x " * 500)})
    subject = mail_content(long, PROVIDER_NAMES).subject
    assert subject.endswith("…") and len(subject) < 120


def test_subject_for_tests_progress_and_alerts() -> None:
    test = mail_content(make_event(task_id=TASK_ID, model="kling", test=True), PROVIDER_NAMES)
    assert test.subject == "[relay] [TEST] Kling video ready: task 1a2b3c4d…"
    progress = mail_content(
        make_event(task_id=TASK_ID, model="luma", status="processing", progress=45, outputs=[]),
        PROVIDER_NAMES,
    )
    assert progress.subject == "[relay] Luma video processing 45%: task 1a2b3c4d…"
    names = dict(FIXTURE_EVENTS)
    alert = mail_content(names["goapi_account__mj_bot_banned"], PROVIDER_NAMES)
    assert alert.subject == "[relay] GoAPI account alert: Midjourney bot banned"
    apimart = mail_content(names["apimart__image_success"], PROVIDER_NAMES)
    assert apimart.subject == "[relay] APIMart image ready: task_01KA040M…"


@pytest.mark.parametrize(
    "field",
    ["error", "model", "task_id", "task_type"],
)
def test_subject_cannot_inject_headers(field: str) -> None:
    hostile = "x\r\nBcc: x@y\n\rSubject: pwned\x00\x1b\u2028\u0085\u202e"
    cases: dict[str, dict[str, Any]] = {
        "error": {"status": "failed", "error": TaskError(message=hostile)},
        "model": {"model": hostile},
        "task_id": {"task_id": hostile},
        "task_type": {"task_type": hostile, "outputs": []},
    }
    overrides = cases[field]
    mail = mail_content(make_event(**overrides), PROVIDER_NAMES)
    assert_safe_mail(mail)
    assert "\r" not in mail.subject and "\n" not in mail.subject
    if field in ("error", "model"):
        # Shown, but as part of the one line.
        assert "Bcc: x@y" in mail.subject


def test_subject_is_at_most_200_characters() -> None:
    mail = mail_content(make_event(model="M" * 500, task_id="t" * 1000, test=True), PROVIDER_NAMES)
    assert len(mail.subject) <= 200


# -- escaping ----------------------------------------------------------------------------------

SCRIPT = "<script>alert(\"x\")</script> & 'q'"


def test_every_payload_value_is_html_escaped() -> None:
    event = make_event(
        task_id=f"id{SCRIPT}",
        source=f"src{SCRIPT}",
        model=f"m{SCRIPT}",
        task_type=f"t{SCRIPT}",
        prompt=SCRIPT,
        status="failed",
        error=TaskError(code=f"c{SCRIPT}", message=SCRIPT, detail=SCRIPT),
        outputs=[
            Output(kind="video", url='https://cdn.example/v.mp4?a=1&b="2"', title=SCRIPT),
            Output(kind="text", text=SCRIPT, title=SCRIPT),
            Output(kind="image", url="https://cdn.example/i.png", title=SCRIPT),
        ],
    )
    mail = mail_content(event, PROVIDER_NAMES)
    assert_safe_mail(mail)
    assert "<script" not in mail.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in mail.html
    assert 'href="https://cdn.example/v.mp4?a=1&amp;b=&quot;2&quot;"' in mail.html
    # The text part is not HTML: it shows the values as they are.
    assert SCRIPT in mail.text


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        " javascript:alert(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "vbscript:msgbox",
        "//evil.example/x",
    ],
)
def test_only_http_urls_become_links(url: str) -> None:
    event = make_event(
        outputs=[
            Output(kind="image", url=url),
            Output(kind="video", url="https://cdn.example/v.mp4", thumbnail_url=url),
        ]
    )
    mail = mail_content(event, PROVIDER_NAMES)
    assert_safe_mail(mail)
    srcs = [a.get("src") for tag, a in parse(mail.html).tags if tag == "img"]
    assert srcs == []  # the bad thumbnail is not used either
    assert "not a web link" in mail.html
    assert "not a web link" in mail.text


# -- content -----------------------------------------------------------------------------------


def test_image_thumbnails_are_linked_images() -> None:
    event = make_event(
        outputs=[
            Output(kind="image", url="https://cdn.example/i.png", width=1024, height=1024),
            Output(
                kind="image",
                url="https://cdn.example/big.png",
                thumbnail_url="https://cdn.example/small.png",
            ),
            Output(
                kind="audio",
                url="https://cdn.example/a.mp3",
                thumbnail_url="https://cdn.example/cover.jpg",
            ),
        ]
    )
    html_text = mail_content(event, PROVIDER_NAMES).html
    assert '<a href="https://cdn.example/i.png"><img src="https://cdn.example/i.png"' in html_text
    assert 'width="480"' in html_text
    assert '<a href="https://cdn.example/big.png"><img src="https://cdn.example/small.png"' in (
        html_text
    )
    assert '<a href="https://cdn.example/a.mp3"><img src="https://cdn.example/cover.jpg"' in (
        html_text
    )


def test_nsfw_image_is_a_link_with_a_warning() -> None:
    event = make_event(
        outputs=[
            Output(
                kind="image",
                url="https://cdn.example/n.png",
                thumbnail_url="https://cdn.example/t.png",
                nsfw=True,
            )
        ]
    )
    mail = mail_content(event, PROVIDER_NAMES)
    assert "<img" not in mail.html
    assert 'href="https://cdn.example/n.png"' in mail.html
    assert "NSFW" in mail.html
    assert "NSFW" in mail.text


def test_text_outputs_failed_progress_and_null_outputs_render() -> None:
    caption = mail_content(
        make_event(model="Qubico/joycaption", outputs=[Output(kind="text", text="a\nb")]),
        PROVIDER_NAMES,
    )
    assert "a<br>\nb" in caption.html
    assert "- Caption:\n    a\n    b" in caption.text
    failed = mail_content(
        make_event(status="failed", outputs=[], error=TaskError(code="E1", message="boom")),
        PROVIDER_NAMES,
    )
    assert "Error (code E1):\n  boom" in failed.text
    assert "boom" in failed.html
    progress = mail_content(
        make_event(status="processing", progress=45, outputs=[]), PROVIDER_NAMES
    )
    assert re.search(r"^Progress: +45%$", progress.text, re.MULTILINE)
    empty = mail_content(make_event(outputs=[]), PROVIDER_NAMES)
    assert "Output" not in empty.text
    for mail in (caption, failed, progress, empty):
        assert_safe_mail(mail)


def test_test_mark_and_expiry() -> None:
    event = make_event(
        test=True,
        received_at=T0,
        outputs=[
            Output(
                kind="video",
                url="https://cdn.example/v.mp4",
                expires_at=T0 + timedelta(hours=1, microseconds=5),
            )
        ],
    )
    mail = mail_content(event, PROVIDER_NAMES)
    assert "TEST EVENT" in mail.text
    assert "TEST EVENT" in mail.html
    assert "Link expires 2025-07-01 13:00 UTC." in mail.text
    assert "Link expires 2025-07-01 13:00 UTC." in mail.html


def test_80_outputs_are_listed_up_to_a_point() -> None:
    outputs = [Output(kind="image", url=f"https://cdn.example/{i}.png") for i in range(80)]
    mail = mail_content(make_event(prompt="p" * 60000, outputs=outputs), PROVIDER_NAMES)
    assert_safe_mail(mail)
    assert "… and 30 more outputs" in mail.text
    assert "… and 30 more outputs" in mail.html
    assert mail.html.count("<img") == 12
    assert len(mail.text) < 20000


def test_long_error_is_shortened() -> None:
    event = make_event(status="failed", outputs=[], error=TaskError(message="E" * 10000))
    mail = mail_content(event, PROVIDER_NAMES)
    assert "E" * 3000 in mail.text
    assert "E" * 5000 not in mail.text
    assert "…" in mail.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(max_size=200),
    url=st.text(max_size=60),
    status=st.sampled_from(["pending", "processing", "succeeded", "failed", "cancelled"]),
    kind=st.sampled_from(["image", "video", "audio", "model3d", "text", "file"]),
    test=st.booleans(),
)
def test_any_event_gives_a_safe_mail(
    text: str, url: str, status: str, kind: str, test: bool
) -> None:
    event = make_event(
        prompt=text,
        model=text,
        task_type=text,
        status=status,
        test=test,
        error=TaskError(code=text, message=text, detail=text) if status == "failed" else None,
        outputs=[Output(kind=kind, url=url, title=text, text=text, thumbnail_url=url)],  # type: ignore[arg-type]
    )
    assert_safe_mail(mail_content(event, PROVIDER_NAMES))
