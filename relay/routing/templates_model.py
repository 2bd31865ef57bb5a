"""The ``template:`` keys of destinations and routes (README: Rules, templates).

Only the shapes live here: every string is Jinja2 source, checked (syntax, names, labels) by
``relay.templating.template_problems`` when the rules load, and compiled by
``relay.templating`` for the channels. A key left out keeps relay's built-in text.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlackTemplate(_Strict):
    """A Slack destination's templates: the header (plain text), the text (mrkdwn: shown in
    notifications and as the first section under the header) and extra sections (mrkdwn,
    after the facts)."""

    header: str | None = None
    text: str | None = None
    sections: list[str] | None = None


class EmailTemplate(_Strict):
    """An email destination's templates: the subject (one line) and a paragraph shown under
    the title (HTML-escaped in the HTML part)."""

    subject: str | None = None
    paragraph: str | None = None


def _paths(value: list[str]) -> list[str]:
    for path in value:
        if not path.startswith("/") or any(ch.isspace() or ord(ch) < 32 for ch in path):
            raise ValueError(f"path {path!r} must start with '/' and hold no spaces")
    return value


class WebhookTemplate(_Strict):
    """A webhook destination's templates: ``body`` is the JSON to send instead of the event
    envelope (a YAML value whose string leaves are templates; a leaf that is exactly one
    ``{{ expr }}`` keeps the expression's JSON value). ``paths``: the only paths (and query)
    a templated ``url`` may render to."""

    # Any YAML value; checked and compiled by relay.templating.
    body: Any = None
    paths: list[str] = Field(default_factory=list)

    @field_validator("paths")
    @classmethod
    def _check_paths(cls, value: list[str]) -> list[str]:
        return _paths(value)


class RouteTemplate(_Strict):
    """A route's templates: each key it sets takes the place of the same key of the
    destination's template, for this route's deliveries (keys of other destination types are
    an error only when no destination of the route has that type)."""

    header: str | None = None
    text: str | None = None
    sections: list[str] | None = None
    subject: str | None = None
    paragraph: str | None = None
    body: Any = None


# Which destination type each template key of a route applies to.
ROUTE_KEY_TYPES: dict[str, str] = {
    "header": "slack",
    "text": "slack",
    "sections": "slack",
    "subject": "email",
    "paragraph": "email",
    "body": "webhook",
}
