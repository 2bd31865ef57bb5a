"""Fuzzing the whole request path in-process: the app of ``relay serve`` (create_app, a SQLite
file, rules with a source of every provider and routes with regex matchers) called over ASGI
with any method, path, query, headers and body, and its admin API with any query.

Proven for any request:

- POST /hooks/...: never a 5xx (the store is there, so not even a 503), never a quarantine
  (that is an adapter failing unexpectedly), never a logged traceback; a 4xx answers JSON with
  its reason in ``error``; a 200 says what became of the callback (``event_id``/``ignored``);
- the admin API (lists with since/until/cursor/limit/state and the other filters, rows by id,
  replays, re-routes), with or without the right token: the same, 401 without it.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from relay.admin.params import decode_cursor, encode_cursor, is_id
from relay.app import create_app
from relay.settings import Settings
from tests.e2e.server import write_rules
from tests.fuzz.asgi import Answer, InProcessApp
from tests.fuzz.strategies import JSON, hostile_text, mutated, near_fixtures
from tests.fuzz.test_fuzz_adapters import SAMPLES

WHSEC = "whsec_" + base64.b64encode(b"fuzz-standard-signing-key").decode()
DOWN_WHSEC = "whsec_" + base64.b64encode(b"fuzz-downstream-key").decode()
ADMIN_TOKEN = "fuzz-admin-token-0123456789"
SECRETS = {"goapi": "goapi-fuzz-secret", "piapi": "piapi-fuzz-secret", "account": "acct-secret"}
TOKENS = {"apimart": "apimart-fuzz-token", "muapi": "muapi-fuzz-token", "novita": "novita-tok"}
# Source name -> provider.
SOURCES = {
    "goapi": "goapi",
    "piapi": "piapi",
    "apimart": "apimart",
    "muapi": "muapi",
    "novita": "novita",
    "account": "goapi-account",
    "relay": "standard",
}
RULES = f"""
sources:
  goapi: {{provider: goapi, secret: {SECRETS["goapi"]}}}
  piapi: {{provider: piapi, secret: {SECRETS["piapi"]}}}
  account: {{provider: goapi-account, secret: {SECRETS["account"]}}}
  apimart: {{provider: apimart, token: {TOKENS["apimart"]}}}
  muapi: {{provider: muapi, token: {TOKENS["muapi"]}}}
  novita: {{provider: novita, token: {TOKENS["novita"]}}}
  relay: {{provider: standard, secret: "{WHSEC}"}}
destinations:
  down: {{type: webhook, url: "http://127.0.0.1:9/in", secret: "{DOWN_WHSEC}"}}
  slack: {{type: slack, token: xoxb-fuzz-token, channel: "#fuzz", api_url: "http://127.0.0.1:9/"}}
  mail:
    type: email
    to: [oncall@example.com]
    from: relay@example.com
    host: 127.0.0.1
    starttls: false
routes:
  - match: ['status="failed"', 'model=~".*(kling|mj|midjourney).*"']
    to: [mail]
    continue: true
  - match: ['error_code=~".+"', 'task_id!~"^$"']
    to: [slack]
    continue: true
  - match: ['output_kind=~"image|video|audio"', 'test!="true"']
    to: [down]
"""

# One app serves every example of a test: starting one per example would cost more than the
# examples, and callbacks piling up in one store is what a real relay sees.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Tracebacks(logging.Handler):
    """Every record logged with an exception: each is a bug the answer may have hidden."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture
def tracebacks() -> Iterator[_Tracebacks]:
    handler = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[InProcessApp]:
    settings_ = Settings(
        rules=write_rules(tmp_path / "rules", RULES),
        db=f"sqlite:///{tmp_path / 'relay.db'}",
        dispatch=False,
        max_body=64 * 1024,
        admin_token=SecretStr(ADMIN_TOKEN),
    )
    async with InProcessApp(create_app(settings_, env={})) as running:
        yield running


def assert_answer(answer: Answer, *, hook: bool) -> Any:
    """No 5xx; JSON always; a 4xx says why."""
    assert answer.status < 500, (answer.status, answer.body[:300])
    headers = dict(answer.headers)
    if 300 <= answer.status < 400 and not hook:
        # Starlette's redirect of "/admin/events/" to "/admin/events" (behind the token).
        assert answer.status == 307 and headers[b"location"].startswith(b"http://"), headers
        return {}
    assert headers.get(b"content-type", b"").startswith(b"application/json"), headers
    payload = answer.json()
    assert isinstance(payload, dict), payload
    if answer.status >= 400:
        assert isinstance(payload.get("error"), str) and payload["error"].strip(), payload
    elif hook:
        assert answer.status == 200, answer.status
        assert "quarantined" not in payload, payload
        assert "event_id" in payload or "ignored" in payload, payload
    return payload


def assert_no_tracebacks(found: _Tracebacks) -> None:
    assert not found.records, [r.getMessage()[:300] for r in found.records]


# -- POST /hooks/... -----------------------------------------------------------------------


def _signed_headers(source: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """The proof the source asks for (tokens go in the path)."""
    if source == "relay":
        now = datetime.now(UTC)
        signature = Webhook(WHSEC).sign("msg_fuzz", now, body.decode("utf-8", "replace"))
        return [
            (b"webhook-id", b"msg_fuzz"),
            (b"webhook-timestamp", str(int(now.timestamp())).encode()),
            (b"webhook-signature", signature.encode()),
        ]
    if source in SECRETS:
        return [(b"x-webhook-secret", SECRETS[source].encode())]
    return []


_HEADER_VALUE = st.binary(max_size=40).map(
    # What an HTTP parser lets through to the app: visible ASCII, space, tab and obs-text.
    lambda raw: bytes(b for b in raw if b in (9, 32) or 33 <= b <= 126 or b >= 128)
)
_HEADER_NAMES = st.sampled_from(
    [
        b"x-webhook-secret",
        b"webhook-id",
        b"webhook-timestamp",
        b"webhook-signature",
        b"content-type",
        b"content-length",
        b"x-forwarded-for",
        b"authorization",
        b"x-custom",
    ]
)


def _fresh(payload: Any) -> Any:
    """A provider body as sent now: its unchanged timestamp, if any, within the window."""
    if isinstance(payload, dict) and isinstance(payload.get("timestamp"), int):
        payload["timestamp"] = int(time.time())
    return payload


@st.composite
def bodies(draw: st.DrawFn, provider: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json"] + ["provider"] * 6))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    samples = SAMPLES[provider]
    payload = _fresh(draw(near_fixtures(samples) | mutated(samples)))
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    edit = draw(st.sampled_from(["none"] * 6 + ["cut", "bom", "nest", "big"]))
    if edit == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif edit == "bom":
        text = "\ufeff" + text
    elif edit == "nest":
        depth = draw(st.integers(60, 3000))
        text = '{"a":' * depth + "1" + "}" * depth
    elif edit == "big":
        text = json.dumps({"pad": "x" * 70_000, **(payload if isinstance(payload, dict) else {})})
    return text.encode("utf-8", "surrogatepass")


@st.composite
def hook_requests(draw: st.DrawFn) -> tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]:
    """(method, path, query, headers, body) aimed at a source, or anywhere under /hooks/."""
    source = draw(st.sampled_from(sorted(SOURCES)))
    body = draw(bodies(SOURCES[source]))
    token = TOKENS.get(source)
    shape = draw(st.sampled_from(["right"] * 6 + ["wrong", "anywhere"]))
    if shape == "anywhere":
        path = "/hooks/" + draw(hostile_text(max_pieces=4))
    else:
        given_token = token if shape == "right" else draw(st.none() | hostile_text(max_pieces=2))
        path = f"/hooks/{source}" + (f"/{given_token}" if given_token else "")
        path += draw(st.sampled_from(["", "", "", "/callback", "/", "/callback/x"]))
    headers = _signed_headers(source, body) if shape != "wrong" else []
    content_type = draw(
        st.sampled_from(
            [b"application/json", b"application/json; charset=utf-8", b"text/plain", b"", None]
        )
    )
    if content_type is not None:
        headers.append((b"content-type", content_type))
    length = draw(st.sampled_from(["right"] * 6 + ["none", "small", "huge", "junk", "negative"]))
    lengths = {
        "right": str(len(body)).encode(),
        "small": b"1",
        "huge": b"99999999999999999999999",
        "junk": b" 12abc",
        "negative": b"-5",
    }
    if length in lengths:
        headers.append((b"content-length", lengths[length]))
    for _ in range(draw(st.integers(0, 3))):
        headers.append((draw(_HEADER_NAMES), draw(_HEADER_VALUE)))
    query = b""
    if draw(st.booleans()):
        pairs = draw(
            st.lists(
                st.tuples(st.sampled_from(["token", "x", "webhook", ""]), hostile_text(3)),
                max_size=3,
            )
        )
        if token is not None and draw(st.booleans()):
            pairs.append(("token", token))
        query = urlencode(pairs, quote_via=quote).encode()
    method = draw(st.sampled_from(["POST"] * 16 + ["GET", "PUT", "DELETE", "OPTIONS"]))
    return method, path, query, headers, body


def _chunks(body: bytes, cuts: list[int]) -> list[bytes]:
    at = sorted({c % (len(body) + 1) for c in cuts})
    edges = [0, *at, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


@FUZZ
@given(request=hook_requests(), cuts=st.lists(st.integers(0, 10_000), max_size=3))
async def test_any_hook_request_is_answered_without_a_5xx(
    app: InProcessApp,
    tracebacks: _Tracebacks,
    request: tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes],
    cuts: list[int],
) -> None:
    method, path, query, headers, body = request
    answer = await app.request(
        method, path, query=query, headers=headers, chunks=_chunks(body, cuts)
    )
    payload = assert_answer(answer, hook=True)
    # What the examples reached (pytest --hypothesis-show-statistics).
    event(f"{answer.status} {sorted(payload)[0] if answer.status == 200 else ''}")
    assert_no_tracebacks(tracebacks)


async def test_the_hook_fuzz_reaches_the_store(app: InProcessApp) -> None:
    """Not all refusals: a fixture sent as the fuzzer sends a "right" one is stored."""
    for source, provider in SOURCES.items():
        body = json.dumps(_fresh(json.loads(json.dumps(SAMPLES[provider][0])))).encode()
        path = f"/hooks/{source}" + (f"/{TOKENS[source]}" if source in TOKENS else "")
        answer = await app.request(
            "POST", path, headers=_signed_headers(source, body), chunks=[body]
        )
        payload = assert_answer(answer, hook=True)
        assert "event_id" in payload or "ignored" in payload, (source, payload)


# -- the admin API ---------------------------------------------------------------------------

_MOMENTS = st.one_of(
    st.sampled_from(["2h", "30m", "7d", "0s", "1h30m", "500ms", "-2h", "99999999999999999999d"]),
    st.sampled_from(["2025-07-01T12:00:00Z", "2025-07-01", "0001-01-01T00:00:00+14:00"]),
    st.sampled_from(["1750000000", "1e10", "1e400", "nan", "-1", "٣", "²"]),
    st.floats().map(str),
    hostile_text(max_pieces=3),
)
_CURSORS = st.one_of(
    st.builds(
        lambda at, row: encode_cursor((at, row)),
        st.floats(allow_nan=False, allow_infinity=False),
        st.from_regex(r"(evt|dlv)_[0-9A-Za-z]{1,40}", fullmatch=True),
    ),
    st.builds(
        lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="),
        st.sampled_from(
            [b'[1e999,"evt_1"]', b"[1,2]", b"{}", b"[[[[[[[[", b'[true,"a"]', b"\xff\xfe"]
        )
        | st.binary(max_size=60)
        | JSON.map(lambda v: json.dumps(v).encode()),
    ),
    hostile_text(max_pieces=3),
)
_VALUES: dict[str, st.SearchStrategy[str]] = {
    "since": _MOMENTS,
    "until": _MOMENTS,
    "cursor": _CURSORS,
    "limit": st.integers(-5, 5000).map(str) | st.sampled_from(["", "1.5", "ten", "1e3"]),
    "state": st.sampled_from(["dead", "delivered", "pending", "sending", "DEAD", ""]),
    "status": st.sampled_from(["failed", "succeeded", "nope"]),
    "all": st.sampled_from(["true", "false", "1", "yes", "maybe"]),
    "event_id": st.from_regex(r"evt_[0-9A-Za-z]{1,30}", fullmatch=True) | hostile_text(2),
}
_OTHER = hostile_text(max_pieces=3)
_KEYS = st.sampled_from(
    [*_VALUES, "source", "provider", "task_id", "model", "destination", "bogus", "limit"]
)


@st.composite
def admin_queries(draw: st.DrawFn) -> bytes:
    pairs = []
    for key in draw(st.lists(_KEYS, max_size=5)):
        pairs.append((key, draw(_VALUES.get(key, _OTHER))))
    return urlencode(pairs, quote_via=quote).encode()


@st.composite
def admin_requests(draw: st.DrawFn) -> tuple[str, str, bytes, bytes]:
    """(method, path, query, body) for any admin endpoint."""
    row = draw(
        st.sampled_from(["evt_1", "dlv_1", "", "..", "a" * 200, "evt_1\n"]) | hostile_text(3)
    )
    method, path = draw(
        st.sampled_from(
            [
                ("GET", "/admin/events"),
                ("GET", "/admin/deliveries"),
                ("GET", "/admin/rejected"),
                ("GET", "/admin/quarantine"),
                ("GET", "/admin/events/{}"),
                ("GET", "/admin/deliveries/{}"),
                ("POST", "/admin/deliveries/{}/replay"),
                ("POST", "/admin/events/{}/reroute"),
                ("POST", "/admin/replay"),
                ("GET", "/admin/{}"),
                ("DELETE", "/admin/events"),
            ]
        )
    )
    body = b""
    if path == "/admin/replay":
        fields = draw(
            st.dictionaries(
                st.sampled_from(["since", "until", "state", "destination", "dry_run", "x"]),
                _MOMENTS | st.booleans() | JSON,
                max_size=4,
            )
        )
        body = draw(st.just(json.dumps(fields).encode()) | st.binary(max_size=40))
    return method, path.replace("{}", row), draw(admin_queries()), body


@pytest.fixture
async def seeded(app: InProcessApp) -> InProcessApp:
    """The app with an event of every provider fixture stored, so pages and cursors have rows."""
    for source, provider in SOURCES.items():
        for sample in SAMPLES[provider]:
            body = json.dumps(_fresh(json.loads(json.dumps(sample)))).encode()
            path = f"/hooks/{source}" + (f"/{TOKENS[source]}" if source in TOKENS else "")
            await app.request("POST", path, headers=_signed_headers(source, body), chunks=[body])
    return app


@FUZZ
@given(request=admin_requests(), token=st.sampled_from(["right"] * 6 + ["wrong", "none"]))
async def test_any_admin_request_is_answered_without_a_5xx(
    seeded: InProcessApp,
    tracebacks: _Tracebacks,
    request: tuple[str, str, bytes, bytes],
    token: str,
) -> None:
    method, path, query, body = request
    headers = [(b"content-type", b"application/json")]
    if token != "none":
        given_token = ADMIN_TOKEN if token == "right" else "not-the-token"
        headers.append((b"authorization", f"Bearer {given_token}".encode()))
    answer = await seeded.request(method, path, query=query, headers=headers, chunks=[body])
    assert_answer(answer, hook=False)
    event(f"{method} {path.split('/')[2]}: {answer.status}")
    if token != "right" and "\n" in path:
        # Starlette's Mount("/admin") pattern (".*") stops at a line break: such a path is
        # no admin path at all, and gets the app's plain 404, token or not.
        assert answer.status in (401, 404), answer.status
    elif token != "right":
        assert answer.status == 401, answer.status
    assert_no_tracebacks(tracebacks)


async def test_the_admin_fuzz_reaches_rows(seeded: InProcessApp) -> None:
    """Not all refusals: the fuzzer's token lists the seeded events, a page at a time."""
    headers = [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    answer = await seeded.request("GET", "/admin/events", query=b"limit=5", headers=headers)
    page = assert_answer(answer, hook=False)
    assert len(page["events"]) == 5 and page["next_cursor"]
    query = urlencode({"limit": 5, "cursor": page["next_cursor"]}).encode()
    answer = await seeded.request("GET", "/admin/events", query=query, headers=headers)
    assert len(assert_answer(answer, hook=False)["events"]) == 5


@settings(max_examples=150, deadline=None)
@given(text=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,130}\n?", fullmatch=True) | st.text())
def test_an_id_is_exactly_what_the_pattern_says(text: str) -> None:
    """Path and query ids are checked before they reach a database: nothing more than the
    pattern lets through (a trailing newline included)."""
    expected = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", text) is not None
    assert is_id(text) == expected


@settings(max_examples=150, deadline=None)
@given(text=_CURSORS)
def test_a_cursor_is_decoded_or_refused_with_a_value_error(text: str) -> None:
    try:
        at, row = decode_cursor(text)
    except ValueError as exc:
        assert "bad cursor" in str(exc)
        return
    assert math.isfinite(at) and is_id(row)
    assert decode_cursor(encode_cursor((at, row))) == (at, row)
