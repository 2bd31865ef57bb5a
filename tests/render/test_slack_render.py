"""The Slack rendering: snapshots of every provider fixture, Slack's limits, escaping."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.events import Output, TaskError
from relay.render.slack import (
    SlackMessage,
    enforce_limits,
    escape_mrkdwn,
    escape_within,
    safe_cut,
    slack_message,
    slack_thread_reply,
    slack_webhook_payload,
)
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


# -- the validator -----------------------------------------------------------------------------


def _check_text_object(obj: Any, limit: int, where: str) -> None:
    assert isinstance(obj, dict), where
    assert obj["type"] in ("plain_text", "mrkdwn"), where
    text = obj["text"]
    assert isinstance(text, str) and text.strip(), f"{where}: empty text"
    assert len(text) <= limit, f"{where}: {len(text)} > {limit}"
    if obj["type"] == "mrkdwn":
        assert obj.get("verbatim") is True, f"{where}: mrkdwn must be verbatim"


def _check_image(block: dict[str, Any], where: str) -> None:
    url = block["image_url"]
    assert re.match(r"https?://", url), where
    assert len(url) <= 3000, f"{where}: image_url {len(url)}"
    alt = block["alt_text"]
    assert isinstance(alt, str) and alt.strip() and len(alt) <= 2000, f"{where}: alt_text"
    if "title" in block:
        _check_text_object(block["title"], 2000, f"{where}.title")
        assert block["title"]["type"] == "plain_text"


def assert_within_limits(message: SlackMessage) -> None:
    """Every Slack limit relay promises (DESIGN section 5), over the whole message."""
    assert isinstance(message.text, str) and message.text.strip()
    assert len(message.text) <= 40000
    blocks = message.blocks
    assert 1 <= len(blocks) <= 50, f"{len(blocks)} blocks"
    json.dumps(blocks)
    for i, block in enumerate(blocks):
        where = f"blocks[{i}] ({block['type']})"
        if block["type"] == "header":
            _check_text_object(block["text"], 150, where)
            assert block["text"]["type"] == "plain_text"
        elif block["type"] == "section":
            assert "text" in block or "fields" in block, where
            if "text" in block:
                _check_text_object(block["text"], 3000, where)
            if "fields" in block:
                assert 1 <= len(block["fields"]) <= 10, where
                for j, field in enumerate(block["fields"]):
                    _check_text_object(field, 2000, f"{where}.fields[{j}]")
            if "accessory" in block:
                assert block["accessory"]["type"] == "image"
                _check_image(block["accessory"], f"{where}.accessory")
        elif block["type"] == "image":
            _check_image(block, where)
        elif block["type"] == "context":
            assert 1 <= len(block["elements"]) <= 10, where
            for j, element in enumerate(block["elements"]):
                _check_text_object(element, 3000, f"{where}.elements[{j}]")
        else:
            pytest.fail(f"{where}: unexpected block type")


def mrkdwn_texts(message: SlackMessage) -> list[str]:
    """Every mrkdwn string Slack will parse: the fallback text and every mrkdwn object."""
    found = [message.text]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message.blocks)
    return found


def markup(message: SlackMessage) -> list[str]:
    """Every <...> Slack would treat as markup (links, mentions, dates)."""
    return [m for text in mrkdwn_texts(message) for m in re.findall(r"<[^<>]*>", text)]


def all_text(message: SlackMessage) -> str:
    return json.dumps({"text": message.text, "blocks": message.blocks}, ensure_ascii=False)


# -- snapshots of the shared fixtures ----------------------------------------------------------


def test_every_fixture_either_renders_or_is_ignored() -> None:
    assert len(FIXTURE_EVENTS) == 17
    assert "novita__other_event_type_synthetic" not in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fixture_snapshot(name: str) -> None:
    event = dict(FIXTURE_EVENTS)[name]
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    rendered = json.dumps(
        {"text": message.text, "blocks": message.blocks},
        indent=2,
        sort_keys=False,
        ensure_ascii=False,
    )
    check_snapshot(SNAPSHOTS / "slack" / f"{name}.json", rendered + "\n")


def test_no_stale_snapshots() -> None:
    files = sorted(p.stem for p in (SNAPSHOTS / "slack").glob("*.json"))
    assert files == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_thread_reply_only_for_failures(name: str) -> None:
    event = dict(FIXTURE_EVENTS)[name]
    reply = slack_thread_reply(event, PROVIDER_NAMES)
    if event.status == "failed":
        assert reply is not None
        assert_within_limits(reply)
        assert event.error is not None
        assert event.task_id in all_text(reply)
    else:
        assert reply is None


@pytest.mark.parametrize("name", NAMES)
def test_webhook_payload_is_the_message(name: str) -> None:
    event = dict(FIXTURE_EVENTS)[name]
    message = slack_message(event, PROVIDER_NAMES)
    assert slack_webhook_payload(event, PROVIDER_NAMES) == {
        "text": message.text,
        "blocks": message.blocks,
    }


# -- content -----------------------------------------------------------------------------------


def test_video_success_layout() -> None:
    task_id = "58cb41b7-556d-46c0-b82e-1e116aa1a31a"
    event = make_event(
        task_id=task_id,
        model="kling",
        prompt="a cat dancing",
        duration_s=42.0,
        outputs=[Output(kind="video", url="https://cdn.example/v.mp4", width=1280, height=720)],
    )
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    blocks = message.blocks
    assert blocks[0]["text"]["text"] == ":white_check_mark: Kling video ready"
    assert blocks[1]["text"]["text"] == "*Prompt*\n>a cat dancing"
    fields = [f["text"] for f in blocks[2]["fields"]]
    assert fields == [
        "*Provider*\nGoAPI",
        "*Task type*\n`video_generation`",
        f"*Task ID*\n`{task_id}`",
        "*Duration*\n42 s",
    ]
    assert "<https://cdn.example/v.mp4|Video>" in blocks[3]["text"]["text"]
    assert "1280\u00d7720" in blocks[3]["text"]["text"]
    assert blocks[-1]["type"] == "context"
    assert "Received <!date^" in blocks[-1]["elements"][0]["text"]
    assert task_id in message.text
    assert not any(b["type"] == "image" for b in blocks)


def test_images_become_image_blocks_with_alt_text() -> None:
    event = make_event(
        prompt="two cats",
        outputs=[
            Output(kind="image", url="https://cdn.example/1.png", width=512, height=512),
            Output(kind="image", url="https://cdn.example/2.png"),
        ],
    )
    images = [b for b in slack_message(event, PROVIDER_NAMES).blocks if b["type"] == "image"]
    assert [b["image_url"] for b in images] == [
        "https://cdn.example/1.png",
        "https://cdn.example/2.png",
    ]
    assert images[0]["alt_text"] == "Image 1 of 2: two cats"
    assert images[0]["title"]["text"] == "Image 1 of 2 · 512\u00d7512"


def test_nsfw_image_is_a_link_with_a_warning_not_an_image() -> None:
    event = make_event(outputs=[Output(kind="image", url="https://cdn.example/n.png", nsfw=True)])
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    assert not any(b["type"] == "image" for b in message.blocks)
    assert "image_url" not in all_text(message)
    line = next(t for t in mrkdwn_texts(message) if "n.png" in t)
    assert ":warning:" in line
    assert "NSFW" in line
    assert "<https://cdn.example/n.png|Image>" in line


def test_nsfw_video_has_no_thumbnail() -> None:
    event = make_event(
        outputs=[
            Output(
                kind="video",
                url="https://cdn.example/v.mp4",
                thumbnail_url="https://cdn.example/t.jpg",
                nsfw=True,
            )
        ]
    )
    assert "t.jpg" not in all_text(slack_message(event, PROVIDER_NAMES))


def test_audio_with_thumbnail_gets_an_accessory() -> None:
    event = make_event(
        model="suno",
        task_type="music",
        outputs=[
            Output(
                kind="audio",
                url="https://cdn.example/a.mp3",
                title="Cat Dance",
                thumbnail_url="https://cdn.example/a.jpg",
            )
        ],
    )
    block = next(b for b in slack_message(event, PROVIDER_NAMES).blocks if "accessory" in b)
    assert block["accessory"]["image_url"] == "https://cdn.example/a.jpg"
    assert "<https://cdn.example/a.mp3|Cat Dance>" in block["text"]["text"]


def test_text_outputs_render_quoted() -> None:
    event = make_event(
        model="Qubico/joycaption",
        outputs=[Output(kind="text", text="line one\nline <two> & more")],
    )
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    section = next(t for t in mrkdwn_texts(message) if "line one" in t)
    assert section.endswith(">line one\n>line &lt;two&gt; &amp; more")
    assert ":memo: *Caption*" in section


def test_model3d_and_file_outputs_are_links() -> None:
    event = make_event(
        outputs=[
            Output(kind="model3d", url="https://cdn.example/m.glb"),
            Output(kind="file", url="https://cdn.example/f.zip"),
        ]
    )
    text = all_text(slack_message(event, PROVIDER_NAMES))
    assert "<https://cdn.example/m.glb|3D model>" in text
    assert "<https://cdn.example/f.zip|File>" in text


def test_null_outputs_render() -> None:
    event = make_event(outputs=[], model="luma")
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    assert message.blocks[0]["text"]["text"] == ":white_check_mark: Luma video finished"


def test_output_without_url_or_with_odd_url() -> None:
    event = make_event(
        outputs=[
            Output(kind="video", url=None),
            Output(kind="video", url="javascript:alert(1)"),
            Output(kind="image", url="ftp://x.example/i.png"),
        ]
    )
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    text = all_text(message)
    assert "no link given" in text
    assert "not a web link: javascript:alert(1)" in text
    assert not any(m.startswith(("<javascript", "<ftp")) for m in markup(message))
    assert not any(b["type"] == "image" for b in message.blocks)


def test_failure_shows_error_code_and_message() -> None:
    event = make_event(
        status="failed",
        model="midjourney",
        task_type="imagine",
        outputs=[],
        error=TaskError(code="10000", message="midjourney rejected the prompt", detail="banned"),
    )
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    assert message.blocks[0]["text"]["text"] == ":x: Midjourney imagine failed"
    error = message.blocks[1]["text"]["text"]
    assert error == ":warning: *Error* `10000`\n>midjourney rejected the prompt\n_Detail:_ banned"
    assert "midjourney rejected the prompt" in message.text


def test_progress_event_renders() -> None:
    event = make_event(status="processing", model="luma", progress=45, outputs=[])
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    assert (
        message.blocks[0]["text"]["text"] == ":hourglass_flowing_sand: Luma video: processing 45%"
    )
    assert "*Progress*\n45%" in all_text(message).replace("\\n", "\n")
    assert slack_thread_reply(event, PROVIDER_NAMES) is None


def test_test_events_are_marked() -> None:
    message = slack_message(make_event(test=True), PROVIDER_NAMES)
    assert message.blocks[0]["text"]["text"].startswith("[TEST] ")
    assert message.blocks[1]["type"] == "context"
    assert "TEST EVENT" in message.blocks[1]["elements"][0]["text"]
    assert message.text.startswith("[TEST] ")
    assert "TEST" not in all_text(slack_message(make_event(test=False), PROVIDER_NAMES))


def test_expiry_is_shown_as_a_slack_date() -> None:
    expires = T0 + timedelta(hours=1)
    event = make_event(
        received_at=T0,
        outputs=[Output(kind="video", url="https://cdn.example/v.mp4", expires_at=expires)],
    )
    texts = mrkdwn_texts(slack_message(event, PROVIDER_NAMES))
    line = next(t for t in texts if "expire" in t)
    ts = int(expires.timestamp())
    assert line == (
        f":hourglass: Link expires <!date^{ts}^{{date_short_pretty}} {{time}}|2025-07-01 13:00 UTC>"
    )
    assert not any("expire" in t for t in mrkdwn_texts(slack_message(make_event(), PROVIDER_NAMES)))


# -- escaping ----------------------------------------------------------------------------------

HOSTILE = "<!channel> <http://evil|click> & co <@U123> <#C1> <!subteam^S1>"


def test_prompt_cannot_mention_or_link() -> None:
    event = make_event(prompt=HOSTILE, outputs=[])
    message = slack_message(event, PROVIDER_NAMES)
    prompt = next(t for t in mrkdwn_texts(message) if t.startswith("*Prompt*"))
    assert prompt == (
        "*Prompt*\n>&lt;!channel&gt; &lt;http://evil|click&gt; &amp; co &lt;@U123&gt; "
        "&lt;#C1&gt; &lt;!subteam^S1&gt;"
    )
    for token in markup(message):
        assert token.startswith("<!date^"), token


def test_every_payload_value_is_inert() -> None:
    event = make_event(
        task_id=f"t`1{HOSTILE}",
        source=f"src{HOSTILE}",
        model=f"kling{HOSTILE}",
        task_type=f"video{HOSTILE}",
        prompt=HOSTILE,
        status="failed",
        error=TaskError(code=f"c{HOSTILE}", message=HOSTILE, detail=HOSTILE),
        outputs=[
            Output(kind="video", url="https://cdn.example/v.mp4", title=HOSTILE),
            Output(kind="text", text=HOSTILE),
            Output(kind="image", url="https://cdn.example/i.png?a=1&b=<x>|y", title=HOSTILE),
            Output(kind="image", url="https://cdn.example/n.png?a=1&b=2", nsfw=True),
        ],
    )
    for message in (
        slack_message(event, PROVIDER_NAMES),
        slack_thread_reply(event, PROVIDER_NAMES),
    ):
        assert message is not None
        assert_within_limits(message)
        for token in markup(message):
            if token.startswith("<!date^"):
                continue
            assert re.fullmatch(r"<https://cdn\.example/[^|<>]*\|[^<>]*>", token), token
            # The label of a link is escaped too.
            label = token.split("|", 1)[1]
            assert "<" not in label


def test_link_urls_keep_their_ampersands_escaped() -> None:
    event = make_event(
        outputs=[Output(kind="video", url="https://cdn.example/v.mp4?a=1&b=2|3")],
    )
    assert "<https://cdn.example/v.mp4?a=1&amp;b=2%7C3|Video>" in all_text(
        slack_message(event, PROVIDER_NAMES)
    )


def test_header_is_plain_text_and_not_escaped() -> None:
    message = slack_message(make_event(model="R&D <lab>"), PROVIDER_NAMES)
    assert message.blocks[0]["text"] == {
        "type": "plain_text",
        "text": ":white_check_mark: R&D <lab> video ready",
        "emoji": True,
    }
    assert "R&amp;D &lt;lab&gt;" in message.text


def test_escape_helpers() -> None:
    assert escape_mrkdwn("a & <b>") == "a &amp; &lt;b&gt;"
    cut = escape_within("&" * 100, 20)
    assert len(cut) <= 20 and cut.endswith("…") and "&amp;" in cut
    assert not re.search(r"&(?!amp;)", cut)
    assert safe_cut("x" * 10 + "<https://a.example|label>", 20) == "x" * 10 + "…"
    assert safe_cut("abc &amp; def", 10) == "abc…"
    assert safe_cut("```" + "y" * 50 + "```", 20).endswith("…```")


# -- limits ------------------------------------------------------------------------------------


def many(kind: str, n: int) -> list[Output]:
    return [
        Output(kind=kind, url=f"https://cdn.example/{kind}/{i:03}.bin")  # type: ignore[arg-type]
        for i in range(n)
    ]


def overflow_count(message: SlackMessage) -> int:
    texts = [t for t in mrkdwn_texts(message) if "more outputs" in t]
    assert len(texts) == 1, texts
    match = re.search(r"… and (\d+) more outputs", texts[0])
    assert match is not None
    return int(match.group(1))


def test_huge_prompt_and_80_images() -> None:
    event = make_event(prompt="word " * 12000, outputs=many("image", 80))
    assert len(event.prompt or "") == 60000
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    images = [b for b in message.blocks if b["type"] == "image"]
    hidden = overflow_count(message)
    assert len(images) + hidden == 80
    assert len(images) >= 40
    # The first hidden outputs are still linked in the overflow section.
    first_hidden = f"https://cdn.example/image/{len(images):03}.bin"
    assert first_hidden in all_text(message)
    prompt = next(t for t in mrkdwn_texts(message) if t.startswith("*Prompt*"))
    assert prompt.endswith("…")
    # The context (where it came from) is never pushed out.
    assert message.blocks[-1]["type"] == "context"


def test_80_videos() -> None:
    message = slack_message(make_event(outputs=many("video", 80)), PROVIDER_NAMES)
    assert_within_limits(message)
    links = [b for b in message.blocks if b["type"] == "section" and "video/0" in json.dumps(b)]
    shown = len(links) - 1  # the last is the overflow section
    assert shown + overflow_count(message) == 80
    overflow = next(t for t in mrkdwn_texts(message) if "more outputs" in t)
    assert "<https://cdn.example/video/" in overflow


def test_overflow_section_itself_stays_within_3000() -> None:
    long_urls = [
        Output(kind="video", url=f"https://cdn.example/{i:03}/" + "p" * 900) for i in range(120)
    ]
    message = slack_message(make_event(outputs=long_urls), PROVIDER_NAMES)
    assert_within_limits(message)
    overflow = next(t for t in mrkdwn_texts(message) if "more outputs" in t)
    assert re.search(r"\n… and \d+ more$", overflow)


def test_long_error_message() -> None:
    message_text = "E" * 9990 + " the end"
    event = make_event(
        status="failed", outputs=[], error=TaskError(code="500", message=message_text)
    )
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    error = next(t for t in mrkdwn_texts(message) if "*Error*" in t)
    assert error.endswith("…")
    reply = slack_thread_reply(event, PROVIDER_NAMES)
    assert reply is not None
    assert_within_limits(reply)
    # The reply carries the whole message, split over sections.
    body = "".join(
        b["text"]["text"].removeprefix("*Message*\n").removeprefix("```").removesuffix("```")
        for b in reply.blocks
        if b["type"] == "section" and "text" in b and "```" in b["text"]["text"]
    )
    assert body == message_text


def test_thread_reply_for_an_enormous_error_stays_within_limits() -> None:
    event = make_event(
        status="failed",
        outputs=[],
        error=TaskError(code="c" * 5000, message="<&>" * 100000, detail="d" * 100000),
    )
    reply = slack_thread_reply(event, PROVIDER_NAMES)
    assert reply is not None
    assert_within_limits(reply)
    assert "more characters" in all_text(reply)


def test_long_model_name() -> None:
    message = slack_message(make_event(model="M" * 500, task_type="t" * 500), PROVIDER_NAMES)
    assert_within_limits(message)
    assert len(message.blocks[0]["text"]["text"]) <= 150


def test_long_task_id_and_long_url() -> None:
    event = make_event(
        task_id="x" * 10000,
        source="s" * 5000,
        outputs=[
            Output(kind="image", url="https://cdn.example/" + "a" * 4000),
            Output(
                kind="audio",
                url="https://cdn.example/" + "b" * 4000,
                thumbnail_url="https://cdn.example/" + "t" * 4000,
            ),
        ],
    )
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    assert not any(b["type"] == "image" for b in message.blocks)
    assert "too long for Slack" in all_text(message)


def test_everything_at_once() -> None:
    event = make_event(
        model="M" * 500,
        prompt="<p>" * 20000,
        test=True,
        status="failed",
        error=TaskError(code="x" * 3000, message="m&" * 5000, detail="d<" * 5000),
        outputs=many("image", 40) + many("video", 40) + [Output(kind="text", text="t" * 9000)],
    )
    assert_within_limits(slack_message(event, PROVIDER_NAMES))


def test_enforce_limits_is_a_last_line_of_defence() -> None:
    raw: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 5000, "verbatim": True}}
    ]
    raw += [{"type": "header", "text": {"type": "plain_text", "text": "h" * 500}}]
    raw += [
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": "f" * 3000, "verbatim": True}] * 12,
        }
    ]
    raw += [{"type": "image", "image_url": "https://x.example/" + "i" * 3000, "alt_text": "a"}]
    raw += [{"type": "context", "elements": [{"type": "mrkdwn", "text": "c", "verbatim": True}]}]
    raw *= 11
    fitted = enforce_limits(raw)
    assert_within_limits(SlackMessage(text="t", blocks=fitted))
    assert "more blocks" in fitted[-1]["text"]["text"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=st.one_of(st.none(), st.text(max_size=400)),
    model=st.one_of(st.none(), st.text(max_size=60)),
    task_type=st.one_of(st.none(), st.text(max_size=30)),
    message=st.text(max_size=200),
    status=st.sampled_from(["pending", "processing", "succeeded", "failed", "cancelled"]),
    urls=st.lists(
        st.one_of(st.text(max_size=40), st.just("https://cdn.example/a.png")), max_size=5
    ),
    kind=st.sampled_from(["image", "video", "audio", "model3d", "text", "file"]),
    nsfw=st.one_of(st.none(), st.booleans()),
)
def test_any_event_renders_within_limits(
    prompt: str | None,
    model: str | None,
    task_type: str | None,
    message: str,
    status: str,
    urls: list[str],
    kind: str,
    nsfw: bool | None,
) -> None:
    event = make_event(
        prompt=prompt,
        model=model,
        task_type=task_type,
        status=status,
        error=TaskError(message=message) if status == "failed" else None,
        outputs=[
            Output(kind=kind, url=url, text=url, title=url, nsfw=nsfw)  # type: ignore[arg-type]
            for url in urls
        ],
    )
    rendered = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(rendered)
    for token in markup(rendered):
        assert token.startswith(("<!date^", "<https://cdn.example/a.png|")), token
    reply = slack_thread_reply(event, PROVIDER_NAMES)
    if reply is not None:
        assert_within_limits(reply)
