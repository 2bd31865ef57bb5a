"""Jinja2 templates in the rules (README: Rules, templates).

Templates are the rules' own text, compiled in a sandbox (``SandboxedEnvironment``) with
``StrictUndefined``: a name or label that is not there fails, it never renders as nothing. Every
value a template shows is escaped for where it goes, so payload text can never become markup:

* ``mrkdwn`` (Slack text and sections): every ``{{ }}`` output is escaped with relay's mrkdwn
  escaping (``&``, ``<``, ``>``), through the environment's ``finalize``; only the template's
  own literal text can hold a mention or a link (``link(url, label)`` builds a safe one).
* ``html`` (the mail paragraph's HTML part): autoescape (markupsafe).
* ``plain`` (Slack header, mail subject, the paragraph's text part, webhook bodies, channels,
  addresses and URL paths): as rendered, then checked or cleaned by whoever uses it.

The ``slack`` filter escapes for mrkdwn explicitly in any of them. ``None`` renders as "".

A ``TemplateEngine`` (the three environments) is made per rules load, never shared between
loads. ``template_problems`` is what ``relay check`` reports about templates (syntax, unknown
names, undeclared labels, event fields that do not exist), each naming file and key; a template
that fails when a delivery is sent raises ``PermanentDeliveryError`` naming the destination
and the key: that delivery is dead, with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from relay.errors import PermanentDeliveryError
from relay.events import TaskEvent
from relay.render.mail import MailParts
from relay.render.names import ProviderNames
from relay.render.slack import SlackParts, escape_mrkdwn, escape_within, link
from relay.render.summary import summarize
from relay.render.text import human_duration, one_line, web_url
from relay.routing.model import (
    Destination,
    EmailDestination,
    Route,
    SlackDestination,
    SourceConfig,
    WebhookDestination,
)
from relay.routing.model import _address as check_address
from relay.routing.templates_model import ROUTE_KEY_TYPES, RouteTemplate

Kind = Literal["mrkdwn", "html", "plain"]
KeyPath = tuple[str | int, ...]

# Every name a template may use (README: Rules, the names templates can use).
CONTEXT_NAMES: frozenset[str] = frozenset(
    {
        "event",
        "labels",
        "status",
        "provider",
        "provider_name",
        "source",
        "task_id",
        "title",
        "emoji",
        "duration",
    }
)
EVENT_FIELDS: frozenset[str] = frozenset(TaskEvent.model_fields)
# A Slack channel as the Web API takes it: a name (lower case, digits, '-', '_') or an ID.
_CHANNEL = re.compile(r"#?[a-z0-9][a-z0-9_-]{0,79}|[CGD][A-Z0-9]{8,}")
# A leaf of a webhook body that is one expression keeps that expression's JSON value.
_ONE_EXPRESSION = re.compile(r"\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*", re.DOTALL)


def is_template(text: str) -> bool:
    """Whether ``text`` holds template syntax (else it is used as written)."""
    return "{{" in text or "{%" in text or "{#" in text


class Mrkdwn(str):
    """Text already escaped for mrkdwn (the ``slack`` filter's output, or ``link``'s)."""

    __slots__ = ()


def _text(value: object) -> str:
    return "" if value is None else str(value)


def slack_filter(value: object) -> Mrkdwn:
    """The ``slack`` filter: ``value`` escaped for mrkdwn (once: escaped text stays as is)."""
    return value if isinstance(value, Mrkdwn) else Mrkdwn(escape_mrkdwn(_text(value)))


def _link(url: object, label: object = None) -> Mrkdwn:
    """``link(url, label)`` in Slack text: a link for an http(s) URL, else the label (or URL)
    as text; every part escaped."""
    checked = web_url(_text(url))
    shown = _text(label) if label is not None else _text(url)
    if checked is None or len(checked) > 2000:
        return Mrkdwn(escape_within(one_line(shown), 200))
    return Mrkdwn(link(checked, one_line(shown) or checked))


def _finalize_mrkdwn(value: object) -> str:
    return value if isinstance(value, Mrkdwn) else escape_mrkdwn(_text(value))


def _finalize_plain(value: object) -> object:
    return "" if value is None else value


class TemplateEngine:
    """The environments of one rules load: ``mrkdwn``, ``html`` and ``plain``."""

    def __init__(self) -> None:
        self._envs: dict[Kind, SandboxedEnvironment] = {}
        for kind in ("mrkdwn", "html", "plain"):
            env = SandboxedEnvironment(
                undefined=jinja2.StrictUndefined,
                autoescape=kind == "html",
                finalize=_finalize_mrkdwn if kind == "mrkdwn" else _finalize_plain,
                keep_trailing_newline=False,
            )
            env.filters["slack"] = slack_filter
            if kind == "mrkdwn":
                env.globals["link"] = _link
            self._envs[kind] = env

    def env(self, kind: Kind) -> SandboxedEnvironment:
        return self._envs[kind]

    def text(self, kind: Kind, source: str, where: str) -> Text:
        return Text(where, self._envs[kind].from_string(source))

    def body(self, value: Any, where: str) -> Body:
        return Body(where, self._compile_tree(value))

    def _compile_tree(self, value: Any) -> Any:
        if isinstance(value, str):
            one = _ONE_EXPRESSION.fullmatch(value)
            env = self._envs["plain"]
            if one is not None:
                expr = env.compile_expression(one.group("expr"), undefined_to_none=False)
                return _Expression(expr)
            return env.from_string(value) if is_template(value) else value
        if isinstance(value, Mapping):
            return {str(k): self._compile_tree(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._compile_tree(v) for v in value]
        return value


def context(event: TaskEvent, names: ProviderNames) -> dict[str, Any]:
    """What a template sees (README: Rules, the names templates can use)."""
    summary = summarize(event, names)
    return {
        "event": event.model_dump(mode="json"),
        "labels": dict(event.labels),
        "status": event.status,
        "provider": event.provider,
        "provider_name": names.display(event.provider),
        "source": event.source,
        "task_id": event.task_id,
        "title": summary.title,
        "emoji": summary.emoji,
        "duration": human_duration(event.duration_s),
    }


def _failure(where: str, exc: Exception) -> PermanentDeliveryError:
    """A template that failed at send time: the delivery is dead, saying which and why."""
    if isinstance(exc, PermanentDeliveryError):
        return exc
    if isinstance(exc, jinja2.TemplateError):
        why = exc.message or type(exc).__name__
    else:
        why = f"{type(exc).__name__}: {exc}"
    return PermanentDeliveryError(f"template {where} failed: {one_line(why)[:300]}")


@dataclass(frozen=True)
class Text:
    """One compiled template; ``where`` names it in a failure ("destination 'x' text")."""

    where: str
    template: jinja2.Template

    def render(self, values: Mapping[str, Any]) -> str:
        try:
            return self.template.render(values)
        except Exception as exc:  # anything a template does wrong is this delivery's failure
            raise _failure(self.where, exc) from None


@dataclass(frozen=True)
class _Expression:
    expression: Any  # jinja2's TemplateExpression

    def value(self, values: Mapping[str, Any]) -> Any:
        result = self.expression(**values)
        if isinstance(result, jinja2.Undefined):
            str(result)  # StrictUndefined raises, saying what is undefined
        return result


@dataclass(frozen=True)
class Body:
    """A webhook body template: JSON whose string leaves were templates."""

    where: str
    tree: Any

    def render(self, values: Mapping[str, Any]) -> bytes:
        try:
            built = self._build(self.tree, values)
            return json.dumps(built, separators=(",", ":"), allow_nan=False).encode()
        except Exception as exc:  # an undefined name, a value that is not JSON, ...
            raise _failure(self.where, exc) from None

    def _build(self, node: Any, values: Mapping[str, Any]) -> Any:
        if isinstance(node, _Expression):
            return node.value(values)
        if isinstance(node, jinja2.Template):
            return node.render(values)
        if isinstance(node, dict):
            return {k: self._build(v, values) for k, v in node.items()}
        if isinstance(node, list):
            return [self._build(v, values) for v in node]
        return node


@dataclass(frozen=True)
class MessageTemplates:
    """The compiled message templates of a destination or a route (None: built in)."""

    header: Text | None = None
    text: Text | None = None
    sections: tuple[Text, ...] | None = None
    subject: Text | None = None
    # The same source twice: HTML-escaped for the HTML part, as written for the text part.
    paragraph_html: Text | None = None
    paragraph_text: Text | None = None
    body: Body | None = None

    def under(self, route: MessageTemplates | None) -> MessageTemplates:
        """These templates with every key ``route`` sets in its place."""
        if route is None:
            return self
        taken = {
            name: getattr(route, name)
            for name in self.__dataclass_fields__
            if getattr(route, name) is not None
        }
        return replace(self, **taken)

    def slack(self, values: Mapping[str, Any]) -> SlackParts | None:
        if self.header is None and self.text is None and self.sections is None:
            return None
        return SlackParts(
            header=self.header.render(values) if self.header else None,
            text=self.text.render(values) if self.text else None,
            sections=tuple(s.render(values) for s in self.sections or ()),
        )

    def mail(self, values: Mapping[str, Any]) -> MailParts | None:
        if self.subject is None and self.paragraph_html is None:
            return None
        return MailParts(
            subject=self.subject.render(values) if self.subject else None,
            paragraph_text=self.paragraph_text.render(values) if self.paragraph_text else None,
            paragraph_html=self.paragraph_html.render(values) if self.paragraph_html else None,
        )


def compile_message(engine: TemplateEngine, config: Any, owner: str) -> MessageTemplates:
    """The message templates of a ``template:`` block (any of the template models)."""
    if config is None:
        return MessageTemplates()

    def get(key: str) -> Any:
        return getattr(config, key, None)

    def text(kind: Kind, key: str) -> Text | None:
        source = get(key)
        return engine.text(kind, source, f"{owner} {key}") if source is not None else None

    sections = get("sections")
    paragraph = get("paragraph")
    body = get("body")
    return MessageTemplates(
        header=text("plain", "header"),
        text=text("mrkdwn", "text"),
        sections=(
            tuple(
                engine.text("mrkdwn", s, f"{owner} sections[{n}]") for n, s in enumerate(sections)
            )
            if sections is not None
            else None
        ),
        subject=text("plain", "subject"),
        paragraph_html=(
            engine.text("html", paragraph, f"{owner} paragraph") if paragraph is not None else None
        ),
        paragraph_text=(
            engine.text("plain", paragraph, f"{owner} paragraph") if paragraph is not None else None
        ),
        body=engine.body(body, f"{owner} body") if body is not None else None,
    )


def route_templates(routes: Sequence[Route]) -> dict[int, MessageTemplates]:
    """Each route's compiled ``template:`` by route index (routes without one left out)."""
    engine = TemplateEngine()
    return {
        index: compile_message(engine, route.template, f"of route #{index + 1}")
        for index, route in enumerate(routes)
        if route.template is not None
    }


# -- what a destination itself renders to -------------------------------------------------------


def _static_or_template(engine: TemplateEngine, value: str, where: str) -> str | Text:
    return engine.text("plain", value, where) if is_template(value) else value


@dataclass(frozen=True)
class DestinationTemplates:
    """A destination's compiled templates: its message templates, and its channel, addresses
    or URL path when those are templated."""

    message: MessageTemplates = field(default_factory=MessageTemplates)
    channel: str | Text | None = None
    to: tuple[str | Text, ...] = ()
    # A templated webhook URL: its fixed start (scheme and host), its templated rest and the
    # rests it may render to.
    url_base: str | None = None
    url_rest: Text | None = None
    paths: frozenset[str] = frozenset()

    def for_delivery(self, route: MessageTemplates | None) -> MessageTemplates:
        return self.message.under(route)

    def render_channel(self, values: Mapping[str, Any]) -> str | None:
        """The Slack channel: as configured, or rendered and checked like a name."""
        if not isinstance(self.channel, Text):
            return self.channel
        rendered = self.channel.render(values).strip()
        if not _CHANNEL.fullmatch(rendered):
            raise PermanentDeliveryError(
                f"template {self.channel.where} rendered {one_line(rendered)[:100]!r}: not a "
                "Slack channel (a name of lower-case letters, digits, '-' and '_', or an ID)"
            )
        return rendered

    def render_to(self, values: Mapping[str, Any]) -> list[str]:
        """The mail recipients: as configured, or rendered, each checked like a static one."""
        out: list[str] = []
        for item in self.to:
            if isinstance(item, str):
                address = item
            else:
                address = item.render(values).strip()
                try:
                    check_address(address)
                except ValueError as exc:
                    raise PermanentDeliveryError(
                        f"template {item.where} rendered {one_line(address)[:100]!r}: {exc}"
                    ) from None
            if address not in out:
                out.append(address)
        return out

    def render_url(self, url: str, values: Mapping[str, Any]) -> str:
        """The webhook URL: as configured, or its path rendered and found in ``paths``."""
        if self.url_rest is None or self.url_base is None:
            return url
        rest = self.url_rest.render(values).strip()
        if rest not in self.paths:
            raise PermanentDeliveryError(
                f"template {self.url_rest.where} rendered {one_line(rest)[:200]!r}, which is "
                "not in its template.paths"
            )
        return self.url_base + rest


def split_url(url: str) -> tuple[str, str]:
    """``https://host:port`` and the rest (path and query) of a URL."""
    scheme, sep, rest = url.partition("://")
    slash = rest.find("/")
    if not sep or slash == -1:
        return url, ""
    return f"{scheme}://{rest[:slash]}", rest[slash:]


def destination_templates(name: str, config: Destination) -> DestinationTemplates:
    """Compile what ``config`` templates (its ``template:`` block and any templated channel,
    address or URL); nothing is compiled for a destination without templates."""
    owner = f"of destination '{name}'"
    templated = config.template is not None
    if isinstance(config, SlackDestination) and config.channel and is_template(config.channel):
        templated = True
    if isinstance(config, EmailDestination) and any(is_template(a) for a in config.to):
        templated = True
    if isinstance(config, WebhookDestination) and is_template(config.url):
        templated = True
    if not templated:
        return DestinationTemplates(
            channel=config.channel if isinstance(config, SlackDestination) else None,
            to=tuple(config.to) if isinstance(config, EmailDestination) else (),
        )
    engine = TemplateEngine()
    message = compile_message(engine, config.template, owner)
    if isinstance(config, SlackDestination):
        channel = (
            _static_or_template(engine, config.channel, f"{owner} channel")
            if config.channel
            else None
        )
        return DestinationTemplates(message=message, channel=channel)
    if isinstance(config, EmailDestination):
        to = tuple(
            _static_or_template(engine, a, f"{owner} to[{n}]") for n, a in enumerate(config.to)
        )
        return DestinationTemplates(message=message, to=to)
    if is_template(config.url):
        base, rest = split_url(config.url)
        paths = frozenset(config.template.paths) if config.template is not None else frozenset()
        return DestinationTemplates(
            message=message,
            url_base=base,
            url_rest=engine.text("plain", rest, f"{owner} url"),
            paths=paths,
        )
    return DestinationTemplates(message=message)


# -- load-time checks ---------------------------------------------------------------------------


def _label_refs(ast: nodes.Template) -> Iterable[str]:
    """Every label a template reads: ``labels.NAME``, ``labels["NAME"]`` and the same under
    ``event.labels``."""

    def is_labels(node: nodes.Node) -> bool:
        if isinstance(node, nodes.Name):
            return node.name == "labels"
        return (
            isinstance(node, nodes.Getattr)
            and node.attr == "labels"
            and isinstance(node.node, nodes.Name)
            and node.node.name == "event"
        )

    for base, name in _lookups(ast):
        if is_labels(base):
            yield name


def _event_refs(ast: nodes.Template) -> Iterable[str]:
    """Every field a template reads from ``event`` by name."""
    for base, name in _lookups(ast):
        if isinstance(base, nodes.Name) and base.name == "event":
            yield name


def _lookups(ast: nodes.Template) -> Iterable[tuple[nodes.Node, str]]:
    """Every ``x.NAME`` and ``x["NAME"]`` of a template: (x, NAME)."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            yield node.node, node.attr
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            yield node.node, node.arg.value


def check_source(
    engine: TemplateEngine, kind: Kind, source: str, declared: Iterable[str]
) -> list[str]:
    """What is wrong with one template: a syntax error, or the unknown names, labels and
    event fields it reads."""
    env = engine.env(kind)
    try:
        ast = env.parse(source)
        env.from_string(source)  # unknown filters and tests are found when compiling
    except jinja2.TemplateSyntaxError as exc:
        return [f"template syntax error on line {exc.lineno}: {exc.message}"]
    problems = []
    known = CONTEXT_NAMES | set(env.globals)
    for name in sorted(jinja2.meta.find_undeclared_variables(ast) - known):
        problems.append(f"unknown name '{name}' in template (known: {', '.join(sorted(known))})")
    labels = set(declared)
    for label in dict.fromkeys(_label_refs(ast)):
        if label not in labels:
            problems.append(
                f"labels.{label}: no source declares the label '{label}' "
                f"(declared: {', '.join(sorted(labels)) or 'none'})"
            )
    for name in dict.fromkeys(_event_refs(ast)):
        if name not in EVENT_FIELDS:
            problems.append(
                f"event.{name}: events have no field '{name}' "
                f"(fields: {', '.join(sorted(EVENT_FIELDS))})"
            )
    return problems


def _tree_problems(
    engine: TemplateEngine, value: Any, path: KeyPath, declared: Iterable[str]
) -> list[tuple[KeyPath, str]]:
    """The problems of a webhook body template's string leaves."""
    if isinstance(value, str):
        one = _ONE_EXPRESSION.fullmatch(value)
        found = check_source(engine, "plain", value, declared)
        if one is not None and not found:
            try:
                engine.env("plain").compile_expression(one.group("expr"))
            except jinja2.TemplateSyntaxError as exc:
                found = [f"template syntax error: {exc.message}"]
        return [(path, message) for message in found]
    if isinstance(value, Mapping):
        out = []
        for key, item in value.items():
            out += _tree_problems(engine, item, (*path, str(key)), declared)
        return out
    if isinstance(value, list | tuple):
        out = []
        for n, item in enumerate(value):
            out += _tree_problems(engine, item, (*path, n), declared)
        return out
    return []


def _message_problems(
    engine: TemplateEngine, config: Any, path: KeyPath, declared: Iterable[str]
) -> list[tuple[KeyPath, str]]:
    found: list[tuple[KeyPath, str]] = []
    keys: tuple[tuple[str, Kind], ...] = (
        ("header", "plain"),
        ("text", "mrkdwn"),
        ("subject", "plain"),
        ("paragraph", "html"),
    )
    for key, kind in keys:
        source = getattr(config, key, None)
        if source is not None:
            where = (*path, key)
            found += [(where, m) for m in check_source(engine, kind, source, declared)]
    for n, source in enumerate(getattr(config, "sections", None) or []):
        where = (*path, "sections", n)
        found += [(where, m) for m in check_source(engine, "mrkdwn", source, declared)]
    body = getattr(config, "body", None)
    if body is not None:
        found += _tree_problems(engine, body, (*path, "body"), declared)
    return found


def _destination_problems(
    engine: TemplateEngine, name: str, dest: Destination, declared: Iterable[str]
) -> list[tuple[KeyPath, str]]:
    path: KeyPath = ("destinations", name)
    found = _message_problems(engine, dest.template, (*path, "template"), declared)
    if isinstance(dest, SlackDestination) and dest.channel and is_template(dest.channel):
        found += [
            ((*path, "channel"), m) for m in check_source(engine, "plain", dest.channel, declared)
        ]
    if isinstance(dest, EmailDestination):
        for n, address in enumerate(dest.to):
            if is_template(address):
                found += [
                    ((*path, "to", n), m) for m in check_source(engine, "plain", address, declared)
                ]
    if isinstance(dest, WebhookDestination):
        paths = dest.template.paths if dest.template is not None else []
        if is_template(dest.url):
            base, rest = split_url(dest.url)
            if is_template(base) or not rest:
                found.append(
                    ((*path, "url"), "only the path of a URL may be templated, not its host")
                )
            else:
                found += [
                    ((*path, "url"), m) for m in check_source(engine, "plain", rest, declared)
                ]
            if not paths:
                found.append(
                    (
                        (*path, "template", "paths"),
                        "a templated url needs the list of paths it may render to",
                    )
                )
        elif paths:
            found.append(((*path, "template", "paths"), "only a templated url takes paths"))
    return found


def template_problems(
    sources: Mapping[str, tuple[str, SourceConfig]],
    destinations: Mapping[str, tuple[str, Destination]],
    routes: Sequence[tuple[str, int, Route]],
) -> list[tuple[str, KeyPath, str]]:
    """Every problem of the rules' templates as (file, key path, message): what ``relay
    check`` reports and ``relay serve`` refuses to start with."""
    engine = TemplateEngine()
    declared = sorted({label for _, cfg in sources.values() for label in cfg.labels})
    found: list[tuple[str, KeyPath, str]] = []
    for name, (file, dest) in destinations.items():
        found += [(file, w, m) for w, m in _destination_problems(engine, name, dest, declared)]
    for file, index, route in routes:
        if route.template is None:
            continue
        path: KeyPath = ("routes", index, "template")
        found += [
            (file, w, m) for w, m in _message_problems(engine, route.template, path, declared)
        ]
        found += [
            (file, w, m) for w, m in _route_key_problems(route, route.template, path, destinations)
        ]
    return found


def _route_key_problems(
    route: Route,
    template: RouteTemplate,
    path: KeyPath,
    destinations: Mapping[str, tuple[str, Destination]],
) -> list[tuple[KeyPath, str]]:
    """A route template key that none of the route's destinations can use."""
    types = {destinations[n][1].type for n in route.to if n in destinations}
    if not types:
        return []  # its destinations are unknown or invalid: reported as such
    found: list[tuple[KeyPath, str]] = []
    for key, kind in ROUTE_KEY_TYPES.items():
        if getattr(template, key) is not None and kind not in types:
            found.append(((*path, key), f"applies to {kind} destinations, and this route has none"))
    return found
