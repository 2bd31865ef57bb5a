"""relay.templating on its own: payload values are escaped for where they go whatever a
template does with them (filters, concatenation, `safe`), the sandbox holds, a webhook body
keeps JSON values and never produces invalid JSON, route keys take the place of the
destination's, and every failure at send time is a permanent delivery error naming the
template (never another exception)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import TypeAdapter

from relay.errors import PermanentDeliveryError
from relay.providers import default_providers
from relay.render.mail import mail_content
from relay.render.slack import slack_message
from relay.routing.model import Destination
from relay.routing.templates_model import RouteTemplate, SlackTemplate
from relay.runtime import provider_names
from relay.templating import TemplateEngine, compile_message, context, destination_templates
from tests.channels.test_slack import event_of

NAMES = provider_names(default_providers())
DESTINATION: TypeAdapter[Destination] = TypeAdapter(Destination)
FORGED = "<!channel> <@U0BOSS> <https://evil.example|click> &amp;"
ESCAPED = "&lt;!channel&gt; &lt;@U0BOSS&gt; &lt;https://evil.example|click&gt; &amp;amp;"


def values(**fields: Any) -> dict[str, Any]:
    fields.setdefault("prompt", FORGED)
    return context(event_of("t-1", "succeeded", labels={"team": "media"}, **fields), NAMES)


@pytest.mark.parametrize(
    "source",
    [
        "{{ event.prompt }}",
        "{{ event.prompt | slack }}",
        "{{ event.prompt | slack | slack }}",
        "{{ event.prompt | safe }}",
        "{{ event.prompt ~ '' }}",
        "{{ '%s' % event.prompt }}",
        "{{ event.prompt | trim }}",
    ],
)
def test_slack_text_escapes_payload_whatever_the_template_does(source: str) -> None:
    engine = TemplateEngine()
    out = engine.text("mrkdwn", f"<@U0LEAD> {source}", "t").render(values())
    # The template's own mention stays; the payload's shows as text, escaped once.
    assert out == f"<@U0LEAD> {ESCAPED}"


def test_a_link_is_built_safely_and_only_for_web_urls() -> None:
    engine = TemplateEngine()
    text = engine.text("mrkdwn", "{{ link(url, event.prompt) }}", "t")
    shown = text.render({**values(), "url": "https://x.example/a?b=1&c=<2>"})
    assert shown.startswith("<https://x.example/a?b=1&amp;c=%3C2%3E|")
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown
    assert text.render({**values(), "url": "javascript:alert(1)"}) == ESCAPED


def test_the_built_message_keeps_slack_limits_and_mentions_lead() -> None:
    templates = compile_message(
        TemplateEngine(),
        SlackTemplate(header="{{ event.prompt * 20 }}", text="{{ 'x' * 5000 }}", sections=[" "]),
        "of destination 'd'",
    )
    event = event_of("t-1", "failed", outputs=[], prompt=FORGED)
    parts = templates.slack(context(event, NAMES))
    message = slack_message(event, NAMES, ("<!subteam^S0ONCALL>",), parts)
    header = message.blocks[0]["text"]["text"]
    assert len(header) <= 150 and header.endswith("…")
    assert message.blocks[1]["text"]["text"] == "<!subteam^S0ONCALL>"
    assert len(message.blocks[2]["text"]["text"]) <= 3000
    assert message.text.startswith("<!subteam^S0ONCALL> xxx")
    # A blank section is left out rather than refused by Slack.
    assert all(
        b["text"]["text"].strip() for b in message.blocks if b["type"] == "section" and "text" in b
    )


def test_mail_subject_is_one_line_and_the_paragraph_is_escaped_in_html() -> None:
    templates = compile_message(
        TemplateEngine(),
        RouteTemplate(
            subject="A\r\nBcc: x@y {{ event.prompt }}", paragraph="<b>{{ event.prompt }}</b>"
        ),
        "of route #1",
    )
    event = event_of("t-1", "succeeded", prompt="<i>x</i>\nSubject: no")
    content = mail_content(event, NAMES, templates.mail(context(event, NAMES)))
    assert content.subject == "A Bcc: x@y <i>x</i> Subject: no"
    assert "<b>&lt;i&gt;x&lt;/i&gt;<br>\nSubject: no</b>" in content.html
    assert "<b><i>x</i>\nSubject: no</b>" in content.text


def test_a_webhook_body_keeps_json_values_and_fails_rather_than_send_bad_json() -> None:
    engine = TemplateEngine()
    body = engine.body(
        {
            "id": "{{ task_id }}",
            "final": "{{ event.final }}",
            "labels": "{{ labels }}",
            "n": "{{ event.outputs | length }}",
            "said": "task {{ task_id }}: {{ event.prompt }}",
            "list": [1, "{{ none }}", {"deep": "{{ status }}"}],
        },
        "of destination 'hook' body",
    )
    assert json.loads(body.render(values())) == {
        "id": "t-1",
        "final": True,
        "labels": {"team": "media"},
        "n": 1,
        "said": f"task t-1: {FORGED}",
        "list": [1, None, {"deep": "succeeded"}],
    }
    for leaf, why in [
        ("{{ 0.0 / 0 }}", "ZeroDivisionError"),
        ("{{ (2 ** 2000) * 1.0 }}", "OverflowError"),
        ("{{ labels.nope }}", "'dict object' has no attribute 'nope'"),
        ("{{ namespace() }}", "not JSON serializable"),
    ]:
        broken = engine.body({"x": leaf}, "of destination 'hook' body")
        with pytest.raises(PermanentDeliveryError, match=why) as caught:
            broken.render(values())
        assert caught.value.reason.startswith("template of destination 'hook' body failed: ")


def test_the_sandbox_holds_at_send_time() -> None:
    text = TemplateEngine().text("plain", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "t")
    with pytest.raises(PermanentDeliveryError, match=r"template t failed: .*unsafe"):
        text.render(values())


def test_route_keys_take_the_place_of_the_destination_keys() -> None:
    engine = TemplateEngine()
    own = compile_message(engine, SlackTemplate(header="own", text="own text"), "d")
    route = compile_message(engine, RouteTemplate(text="route text"), "r")
    parts = own.under(route).slack({})
    assert parts is not None
    assert (parts.header, parts.text) == ("own", "route text")
    assert own.under(None) is own


@pytest.mark.parametrize(
    ("config", "labels", "why"),
    [
        (
            {"type": "slack", "token": "x", "channel": "#{{ labels.team }}"},
            {"team": "Media Team"},
            "rendered '#Media Team': not a Slack channel",
        ),
        (
            {"type": "email", "to": ["{{ labels.team }}"], "host": "h", "from": "r@x.example"},
            {"team": "a@x.example, b@x.example"},
            "must be one plain address",
        ),
        (
            {
                "type": "webhook",
                "url": "https://h.example/t/{{ labels.team }}",
                "template": {"paths": ["/t/media"]},
            },
            {"team": "../admin"},
            "rendered '/t/../admin', which is not in its template.paths",
        ),
    ],
)
def test_a_rendered_destination_is_checked_like_a_written_one(
    config: dict[str, Any], labels: dict[str, str], why: str
) -> None:
    templates = destination_templates("d", DESTINATION.validate_python(config))
    seen = context(event_of("t-1", "succeeded", labels=labels), NAMES)
    with pytest.raises(PermanentDeliveryError, match=re.escape(why)):
        if config["type"] == "slack":
            templates.render_channel(seen)
        elif config["type"] == "email":
            templates.render_to(seen)
        else:
            templates.render_url(config["url"], seen)
