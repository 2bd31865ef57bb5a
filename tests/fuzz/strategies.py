"""Hypothesis strategies the fuzzers share: hostile text, URLs, events and provider-shaped JSON.

Provider JSON reuses the contract suite's strategies (tests/unit/test_provider_contract.py);
what is new here is text built to break renderers and logs: markup of Slack and mail, control
characters of every kind, and sizes far past every limit.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from relay.events import STATUSES, Output, TaskError, TaskEvent
from tests.events_factory import make_event
from tests.fixtures_util import FIXTURES
from tests.oracle import fixture_files
from tests.unit.test_provider_contract import JSON, near_fixtures

__all__ = [
    "JSON",
    "PROVIDER_FIXTURES",
    "SLACK_MARKUP",
    "events",
    "hostile_text",
    "mutated",
    "near_fixtures",
    "provider_json",
    "urls",
]

# What Slack reads as markup in mrkdwn: mentions, broadcasts, links, dates, formatting.
SLACK_MARKUP = (
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<@U123ABC>",
    "<#C024BE7LR|general>",
    "<!subteam^S1|@team>",
    "<http://evil.example|click me>",
    "<https://evil.example/a?b=1&c=2|>",
    "<mailto:a@b.example|mail>",
    "<!date^1392734382^{date}|fallback>",
    "&",
    "&amp;",
    "&lt;",
    "&gt;",
    "<",
    ">",
    "|",
    "*bold*",
    "_it_",
    "~gone~",
    "`",
    "```",
    "> quoted",
    ":white_check_mark:",
)
# Characters that end lines, drive terminals, reorder text or confuse headers.
CONTROLS = (
    "\n",
    "\r",
    "\r\n",
    "\x00",
    "\t",
    "\x0b",
    "\x0c",
    "\x1b[31m",
    "\x1b]0;title\x07",
    "\x1c",
    "\x7f",
    "\x85",
    "\x9b",
    "\u2028",
    "\u2029",
    "\u202e",
    "\u2066",
    "\u200b",
    "\ufeff",
)
# Mail header tricks: folded lines, injected headers, RFC 2047 encoded words.
MAIL_TRICKS = (
    "\r\nBcc: victim@example.com",
    "\nSubject: pwned",
    "=?utf-8?q?hello?=",
    "=?utf-8?b?QmNjOiB4QHk=?=",
    "=?utf-8?q?a=0D=0ABcc:_x@y?=",
    "=?utf-8?b?4oCu?=",
    "=?iso-8859-1?q?=E9?=",
    '"quoted" <a@b.example>',
    "x" * 120,
)
_PIECES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(SLACK_MARKUP),
    st.sampled_from(CONTROLS),
    st.sampled_from(MAIL_TRICKS),
    st.characters(codec="utf-8"),
)


@st.composite
def hostile_text(draw: st.DrawFn, max_pieces: int = 12) -> str:
    """Text made of markup, control characters and arbitrary Unicode; now and then one piece
    repeated thousands of times, far past every limit a renderer has."""
    pieces = draw(st.lists(_PIECES, max_size=max_pieces))
    if pieces and draw(st.integers(0, 9)) == 0:
        i = draw(st.integers(0, len(pieces) - 1))
        # Up to about 40,000 characters: past every limit, yet quick to render.
        most = max(100, 40_000 // max(len(pieces[i]), 1))
        pieces[i] = pieces[i] * draw(st.integers(100, most))
    return "".join(pieces)


@st.composite
def urls(draw: st.DrawFn) -> str:
    """URLs an output may carry: good ones with hostile paths and queries, links Slack would
    read as markup, other schemes, nonsense and very long ones."""
    base = draw(
        st.sampled_from(
            [
                "https://cdn.example/",
                "http://cdn.example/",
                "https://<!channel>|x/",
                "https://a&b.example/",
                "javascript:alert(1)//",
                "data:image/png;base64,",
                "mailto:",
                "ftp://files.example/",
                "",
            ]
        )
    )
    tail = draw(hostile_text(max_pieces=4))
    if draw(st.integers(0, 14)) == 0:
        # Past Slack's 3,000 for an image URL, and past web_url's 65,536.
        tail += "x" * draw(st.sampled_from([2990, 3100, 70000]))
    return base + tail


_MOMENTS = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.just(UTC),
)


@st.composite
def outputs(draw: st.DrawFn) -> list[Output]:
    """From none to a hundred outputs of every kind, with hostile fields."""
    count = draw(st.sampled_from([0, 0, 1, 1, 2, 3, 5, 12, 49, 50, 51, 100]))
    drawn = draw(st.lists(_output(), min_size=min(count, 1), max_size=min(count, 4)))
    # Many outputs cost little to draw: the drawn ones are repeated with their number.
    made = []
    for i in range(count):
        one = drawn[i % len(drawn)]
        update: dict[str, Any] = {}
        if one.url and i >= len(drawn):
            update["url"] = f"{one.url}{i}"
        made.append(one.model_copy(update=update))
    return made


@st.composite
def _output(draw: st.DrawFn) -> Output:
    return Output(
        kind=draw(st.sampled_from(["image", "video", "audio", "model3d", "text", "file"])),
        url=draw(st.none() | urls()),
        expires_at=draw(st.none() | _MOMENTS),
        nsfw=draw(st.none() | st.booleans()),
        width=draw(st.none() | st.integers(-5, 100000)),
        height=draw(st.none() | st.integers(-5, 100000)),
        text=draw(st.none() | hostile_text()),
        title=draw(st.none() | hostile_text()),
        thumbnail_url=draw(st.none() | urls()),
    )


@st.composite
def events(draw: st.DrawFn) -> TaskEvent:
    """A TaskEvent whose every remote field holds hostile text (ids, names, prompt, error,
    outputs), of any status, from a known provider, an alert provider or an unknown one."""
    status = draw(st.sampled_from(STATUSES))
    error = None
    if status == "failed" or draw(st.integers(0, 4)) == 0:
        error = TaskError(
            code=draw(st.none() | hostile_text()),
            message=draw(hostile_text()),
            detail=draw(st.none() | hostile_text() | st.just(json.dumps({"a": "<!here>\n"}))),
        )
    received = draw(_MOMENTS)
    return make_event(
        # The event id is ours (relay.ids), never the payload's.
        id=draw(st.from_regex(r"evt_[0-9a-zA-Z]{26}", fullmatch=True)),
        task_id=draw(hostile_text()),
        source=draw(st.just("goapi") | hostile_text(max_pieces=3)),
        provider=draw(
            st.sampled_from(["goapi", "piapi", "novita", "goapi-account", "standard"])
            | hostile_text(max_pieces=3)
        ),
        status=status,
        provider_status=draw(hostile_text(max_pieces=3)),
        final=draw(st.booleans()),
        progress=draw(st.none() | st.integers(-10, 1000)),
        model=draw(
            st.none() | st.sampled_from(["kling-v2", "midjourney", "luma"]) | hostile_text()
        ),
        task_type=draw(st.none() | hostile_text(max_pieces=4)),
        prompt=draw(st.none() | hostile_text()),
        test=draw(st.booleans()),
        error=error,
        outputs=draw(outputs()),
        created_at=draw(st.none() | _MOMENTS),
        duration_s=draw(
            st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1e6)
        ),
        received_at=received + timedelta(microseconds=draw(st.integers(0, 999_999))),
    )


def _keys(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return sorted(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


def _provider_of(folder: str) -> str:
    return folder.replace("_", "-")


# Every provider fixture, by the provider that sends it: {"goapi": [body, ...], ...}.
PROVIDER_FIXTURES: dict[str, list[Any]] = {}
for _name in fixture_files():
    PROVIDER_FIXTURES.setdefault(_provider_of(_name.split("/", 1)[0]), []).append(
        json.loads((FIXTURES / _name).read_text())
    )


@st.composite
def mutated(draw: st.DrawFn, samples: list[Any]) -> Any:
    """A fixture with several changes anywhere in it: a value replaced (by any JSON or hostile
    text), a key dropped, or a container emptied."""
    payload = json.loads(json.dumps(draw(st.sampled_from(samples))))
    for _ in range(draw(st.integers(1, 4))):
        node = payload
        for _depth in range(draw(st.integers(0, 5))):
            children = [k for k in _keys(node) if isinstance(node[k], dict | list)]
            if not children:
                break
            node = node[draw(st.sampled_from(children))]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            action = draw(st.sampled_from(["replace", "text", "drop", "empty"]))
            if action == "drop":
                del node[key]
            elif action == "empty":
                node[key] = draw(st.sampled_from([None, "", [], {}, 0, False]))
            else:
                node[key] = draw(JSON if action == "replace" else hostile_text())
        elif isinstance(node, list) and node:
            index = draw(st.integers(0, len(node) - 1))
            node[index] = draw(JSON | hostile_text())
    return payload


def provider_json(provider: str) -> st.SearchStrategy[Any]:
    """Any JSON, the contract suite's near-fixtures, or fixtures mutated in several places."""
    samples = PROVIDER_FIXTURES.get(provider, [])
    if not samples:
        return JSON
    return st.one_of(JSON, near_fixtures(samples), mutated(samples))
