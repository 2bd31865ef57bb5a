"""Fuzzing the renderers: Slack messages and mails built from events full of hostile text.

Proven for any event (every remote field arbitrary text: markup, control characters, encoded
words, huge strings, up to a hundred outputs):

- the Slack message and its thread reply keep every Slack limit (blocks, header, section,
  fields, context, images, text), and no remote text becomes Slack markup: the only ``<...>``
  are our dates and links to the event's own http(s) URLs; ``&`` only starts an entity, ``>``
  only starts a quote line; no control, bidi or line-separator character anywhere;
- the mail, as aiosmtplib puts it on the wire (7-bit and SMTPUTF8), has CRLF lines of at most
  998 bytes, exactly our headers (nothing injected), and reads back as rendered: the subject
  (one clean line, no RFC 2047 encoded word of the payload's), the text and the HTML parts.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from typing import Any, cast

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from relay.channels.base import ChannelDeps, Delivery
from relay.channels.email import EmailChannel
from relay.events import TaskError, TaskEvent
from relay.render.mail import mail_content
from relay.render.slack import SlackMessage, slack_message, slack_thread_reply
from relay.render.text import web_url
from relay.routing.model import Destination, EmailDestination
from relay.store.base import ChannelState
from tests.events_factory import make_event
from tests.fuzz.strategies import MAIL_TRICKS, events, hostile_text
from tests.render.fixture_events import PROVIDER_NAMES
from tests.render.test_mail_render import assert_safe_mail
from tests.render.test_slack_render import assert_within_limits, mrkdwn_texts

# Rendering an event with a hundred outputs and 100 kB strings takes a few tens of ms: the
# default 100 examples would take the render fuzzers alone past ten seconds.
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters no rendered text may hold: controls (but the line break mrkdwn and mail text
# use), Unicode line and paragraph separators, and bidi overrides that reorder what is shown.
_FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_DATE = re.compile(r"<!date\^\d+\^\{[a-z_]+\}(?: (?:at )?\{[a-z_]+\})?\|[0-9: UTC-]+>")
_LINK = re.compile(r"<([^<>|]+)\|([^<>]*)>")


def _strings(node: Any) -> list[str]:
    """Every string anywhere in a block tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _link_target(url: str) -> str:
    """How a URL must appear inside ``<url|label>``: its ``&`` an entity, and the characters
    that would end or split the link percent-encoded."""
    return url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")


def assert_inert(message: SlackMessage, event: TaskEvent) -> None:
    """No remote text in ``message`` is Slack markup, and nothing in it is a control."""
    targets = {
        _link_target(url)
        for output in event.outputs
        for url in (output.url, output.thumbnail_url)
        if url is not None and web_url(url) is not None
    }
    for text in mrkdwn_texts(message):
        for token in re.findall(r"<[^<>]*>", text):
            if _DATE.fullmatch(token):
                continue
            found = _LINK.fullmatch(token)
            assert found is not None, f"markup {token!r} in {text!r}"
            assert found.group(1) in targets, f"link to {found.group(1)!r}, not an output"
        rest = re.sub(r"<[^<>]*>", "", text)
        assert "<" not in rest, text
        assert not re.search(r"&(?!amp;|lt;|gt;)", rest), text
        assert not re.search(r"(?<!^)(?<!\n)>", rest), text
    for text in [message.text, *_strings(message.blocks)]:
        assert not _FORBIDDEN.search(text), repr(text)


@FUZZ
@given(event=events())
def test_any_event_gives_slack_messages_within_limits_and_without_markup(
    event: TaskEvent,
) -> None:
    message = slack_message(event, PROVIDER_NAMES)
    assert_within_limits(message)
    assert_inert(message, event)
    reply = slack_thread_reply(event, PROVIDER_NAMES)
    assert (reply is not None) == (event.status == "failed" and event.error is not None)
    if reply is not None:
        assert_within_limits(reply)
        assert_inert(reply, event)


# -- mail --------------------------------------------------------------------------------------

_MAIL_CONFIG = cast(
    EmailDestination,
    TypeAdapter(Destination).validate_python(
        {
            "type": "email",
            "to": ["oncall@example.com", "team@example.org"],
            "from": "relay@example.com",
            "host": "127.0.0.1",
            "starttls": False,
        }
    ),
)
# build() reads only the names and the clock: no HTTP session or store is touched.
_CHANNEL = EmailChannel(
    "mail",
    _MAIL_CONFIG,
    ChannelDeps(
        http=cast(aiohttp.ClientSession, None),
        clock=lambda: 1_750_000_000.0,
        state=cast(ChannelState, None),
        names=PROVIDER_NAMES,
    ),
)
_HEADERS = {
    "subject",
    "from",
    "to",
    "date",
    "message-id",
    "auto-submitted",
    "x-relay-event",
    "user-agent",
    "mime-version",
    "content-type",
}
_REPLY_HEADERS = {"in-reply-to", "references"}


def _wire(message: EmailMessage, *, utf8: bool) -> bytes:
    """The bytes aiosmtplib sends: SMTPUTF8 when the server offers it and the mail needs it,
    otherwise 7-bit (what send_message picks)."""
    from aiosmtplib.email import flatten_message

    return flatten_message(message, utf8=utf8, cte_type="8bit" if utf8 else "7bit")


def _body(part: email.message.Message) -> str:
    content = cast(EmailMessage, part).get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def assert_mail_on_the_wire(event: TaskEvent, root: str | None) -> None:
    content = mail_content(event, PROVIDER_NAMES)
    assert_safe_mail(content)
    assert not _FORBIDDEN.search(content.subject), repr(content.subject)
    # A payload's "=?utf-8?...?=" would be decoded by every mail client: shown as it came.
    assert "=?" not in content.subject, content.subject
    delivery = Delivery(id="dlv_fuzz01", destination="mail", attempt=1, event_data=event)
    message = _CHANNEL.build(delivery, root)
    for utf8 in (False, True):
        raw = _wire(message, utf8=utf8)
        assert raw.endswith(b"\r\n")
        lines = raw[:-2].split(b"\r\n")
        for line in lines:
            assert b"\r" not in line and b"\n" not in line, line[:100]
            assert len(line) <= 998, f"a line of {len(line)} bytes"
        if not utf8:
            assert raw.isascii()
        back = email.message_from_bytes(raw, policy=email.policy.default)
        names = {name.lower() for name in back}
        assert names == _HEADERS | (_REPLY_HEADERS if root else set()), names
        # Folding encoded words, the stdlib adds or drops a space now and then (after
        # "Subject:", between two encoded words): every other character reads back as it is.
        assert "".join(str(back["Subject"]).split()) == "".join(content.subject.split())
        assert str(back["To"]) == "oncall@example.com, team@example.org"
        assert str(back["X-Relay-Event"]) == event.id
        text, html = cast(EmailMessage, back).iter_parts()
        assert _body(text) == content.text
        assert _body(html) == content.html


@FUZZ
@given(event=events(), root=st.none() | st.just("<dlv_root@example.com>"))
def test_any_event_gives_a_mail_that_is_sent_as_rendered(
    event: TaskEvent, root: str | None
) -> None:
    assert_mail_on_the_wire(event, root)


@settings(max_examples=40, deadline=None)
@given(
    trick=st.sampled_from(MAIL_TRICKS),
    field=st.sampled_from(["model", "error", "task_id"]),
    around=hostile_text(max_pieces=3),
)
def test_mail_header_tricks_in_any_subject_field_stay_text(
    trick: str, field: str, around: str
) -> None:
    """Each field a subject shows, holding a header trick (CR/LF and a header, an encoded
    word): the mail still goes out with our headers only and reads back as rendered."""
    value = f"{around}{trick}{around}"
    overrides: dict[str, Any] = {
        "model": {"model": value},
        "error": {"status": "failed", "error": TaskError(message=value)},
        "task_id": {"task_id": value},
    }[field]
    assert_mail_on_the_wire(make_event(**overrides), None)
