"""The validated rules (README: Rules). Built only by ``relay.routing.loader``.

Every model forbids unknown keys so a typo is an error that names the key, not a silent default.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from relay import signing
from relay.events import LABEL_NAMES, Status
from relay.routing.durations import Duration, Rate, parse_duration
from relay.routing.grouping import GroupConfig
from relay.routing.matchers import Matcher, matcher_items
from relay.routing.quiet import InhibitRule, MuteTime
from relay.routing.templates_model import (
    EmailTemplate,
    RouteTemplate,
    SlackTemplate,
    WebhookTemplate,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# What a label from the hook URL may hold unless its rule says otherwise: a name, an id, a
# slug (no spaces, nothing that needs escaping in a message or a matcher).
DEFAULT_LABEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@+-]*"
# Query keys that carry credentials (Novita's ?token=): never labels, never stored.
RESERVED_QUERY_KEYS = frozenset({"token", "secret", "signature", "sig", "key", "api_key"})
# A label's name: like the built-in labels (it is written bare in matchers and templates).
LABEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class LabelRule(_Strict):
    """What one label taken from the hook URL's query string may hold."""

    pattern: str = DEFAULT_LABEL_PATTERN
    max_length: int = Field(default=64, ge=1, le=1024)
    # A callback without it is refused (400), rather than routed without it.
    required: bool = False

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regex {value!r}: {exc}") from None
        return value

    def problem(self, name: str, value: str) -> str | None:
        """Why ``value`` is refused for label ``name``, or None."""
        if len(value) > self.max_length:
            return f"label '{name}' is over {self.max_length} characters"
        if not re.fullmatch(self.pattern, value):
            return f"label '{name}' does not match {self.pattern}"
        return None


class SourceConfig(_Strict):
    """One inbound endpoint: ``POST /hooks/{name}`` (or ``/hooks/{name}/{token}``).

    ``labels``: the query-string keys of the callback URL kept as labels of its events (a
    list of names, or names with their ``LabelRule``); other keys are ignored."""

    provider: str
    secret: SecretStr | None = None
    token: SecretStr | None = None
    replay_window: Duration = 300.0
    allow_ips: list[str] = Field(default_factory=list)
    # "fetch": before routing, ask the provider's status API about the task and trust it.
    verify: Literal["callback", "fetch"] = "callback"
    api_key: SecretStr | None = None
    api_url: str | None = None
    fetch_timeout: Duration = 3.0
    labels: dict[str, LabelRule] = Field(default_factory=dict)

    @field_validator("labels", mode="before")
    @classmethod
    def _label_list(cls, value: object) -> object:
        if isinstance(value, list):
            if not all(isinstance(name, str) for name in value):
                raise ValueError("must be a list of label names, or names with their rules")
            return {name: {} for name in value}
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, LabelRule]) -> dict[str, LabelRule]:
        for name in value:
            if not LABEL_NAME.fullmatch(name):
                raise ValueError(
                    f"label name '{name}': lower-case letters, digits and '_', "
                    "starting with a letter"
                )
            if name in LABEL_NAMES:
                raise ValueError(f"label name '{name}' is a built-in label")
            if name in RESERVED_QUERY_KEYS:
                raise ValueError(f"label name '{name}' is a credential's key, never a label")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None


class RetryConfig(_Strict):
    """Waits after each failed attempt; the number of attempts is ``len(schedule) + 1``."""

    schedule: list[Duration]
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)


# Sends in flight to one destination, per process, unless its `concurrency:` says otherwise: a
# quarter of the default RELAY_CONCURRENCY, so one hung destination leaves the others most
# of the slots; 16 held a single fast destination to two thirds of the rate (benchmarks/e2e.py).
DEFAULT_DESTINATION_CONCURRENCY = 32


class BreakerConfig(_Strict):
    """A destination's circuit breaker (README: Destinations, circuit breaker): after
    ``failures`` transient failures in a row it pauses for ``pause``, doubled on each re-open
    up to ``max_pause``, then lets one probe through."""

    failures: int = Field(default=5, ge=1, le=1000)
    pause: Duration = 30.0
    max_pause: Duration = 300.0

    @model_validator(mode="after")
    def _pauses(self) -> BreakerConfig:
        if self.pause <= 0:
            raise ValueError("pause must be more than 0s")
        if self.max_pause < self.pause:
            raise ValueError("max_pause must be at least pause")
        return self


class _Limits(_Strict):
    """What every destination type takes: how many sends at once, and its circuit breaker."""

    # None: the default (at most RELAY_CONCURRENCY, the process's own bound, either way).
    # Set: shared by every process on the store.
    concurrency: int | None = Field(default=None, ge=1)
    # None: no rate limit; else the seconds between two sends (`rate: 10/s`), shared by every
    # process on the store.
    rate: Rate | None = None
    # None or false (`off`): no breaker; absent: the default breaker.
    breaker: BreakerConfig | None = Field(default_factory=BreakerConfig)

    @field_validator("breaker", mode="before")
    @classmethod
    def _breaker(cls, value: object) -> object:
        # YAML reads a bare `off` as false and `on` as true.
        if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
            return None
        if value is True or (isinstance(value, str) and value.strip().lower() == "on"):
            return {}
        return value


class WebhookDestination(_Limits):
    """POST the event, signed with Standard Webhooks headers when ``secret`` is set.

    ``secret`` may hold several space-separated ``whsec_`` secrets (a key rotation): every
    request then carries one signature per secret. ``include_raw: false`` leaves the
    provider's own body out of the event envelope."""

    # Deliveries of one task are sent in order (one at a time) only where a channel needs it.
    ordered: ClassVar[bool] = False

    type: Literal["webhook"]
    url: str
    secret: SecretStr | None = None
    body: Literal["event", "original"] = "event"
    include_raw: bool = True
    timeout: Duration = 10.0
    headers: dict[str, str] = Field(default_factory=dict)
    retry: RetryConfig | None = None
    template: WebhookTemplate | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            # The messages never include the value.
            problems = signing.secret_problems(value)
            if problems:
                raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _raw_with_event(self) -> WebhookDestination:
        if not self.include_raw and self.body == "original":
            raise ValueError("include_raw: false leaves nothing to send with body: original")
        return self


class SlackDestination(_Limits):
    """A Slack channel through the Web API (``token`` + ``channel``: one message per task,
    edited in place) or an incoming webhook (``webhook_url``: every event posts)."""

    # One living message per task: its events must reach it in order.
    ordered: ClassVar[bool] = True

    type: Literal["slack"]
    token: SecretStr | None = None
    channel: str | None = None
    webhook_url: SecretStr | None = None
    api_url: str = "https://slack.com/api/"
    thread_replies: bool = False
    pace: Duration = 1.0
    timeout: Duration = 10.0
    retry: RetryConfig | None = None
    template: SlackTemplate | None = None

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        # slack_sdk joins method names onto it: it must end with a slash.
        return value if value.endswith("/") else value + "/"

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("pace")
    @classmethod
    def _pace(cls, value: float) -> float:
        if value > 60:
            raise ValueError("must be at most 60s (it is the gap between two posts)")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> SlackDestination:
        if self.webhook_url is not None:
            if self.token is not None or self.channel is not None:
                raise ValueError(
                    "give either webhook_url, or token and channel, not both "
                    "(an incoming webhook posts to its own channel)"
                )
            if self.thread_replies:
                raise ValueError("thread_replies needs token and channel (webhooks cannot reply)")
        elif self.token is None or not self.channel:
            raise ValueError("needs token and channel (the Web API), or webhook_url")
        return self


def _address(value: str) -> str:
    """One plain e-mail address: no display name, no list, nothing that could end a header."""
    if any(ch in value for ch in '\r\n,;<>"') or any(ord(ch) < 32 for ch in value):
        raise ValueError("must be one plain address like ops@example.com")
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or " " in value:
        raise ValueError("must be one plain address like ops@example.com")
    return value


class SmtpSettings(_Strict):
    """How to reach the SMTP server. On an email destination, or in the rules' shared
    ``smtp:`` block, whose keys every email destination inherits unless it sets its own."""

    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    # STARTTLS (required, never downgraded) unless `tls: true` (implicit TLS, port 465) or
    # `starttls: false` says so explicitly (plain SMTP, for a local smarthost).
    starttls: bool | None = None
    tls: bool | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout: Duration | None = None
    # Certificates are checked against the system's trust store, or this CA file;
    # `verify: false` turns checking off (test servers only).
    ca_file: str | None = None
    verify: bool | None = None
    from_: str | None = Field(default=None, alias="from")

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ch in value for ch in " /\r\n")):
            raise ValueError("must be a host name or address")
        return value


SMTP_KEYS: tuple[str, ...] = tuple(SmtpSettings.model_fields)


class EmailDestination(SmtpSettings, _Limits):
    """Mail each event to ``to``, threaded per task (aiosmtplib)."""

    # Later mails of a task reply to its first one: the task's events must come in order.
    ordered: ClassVar[bool] = True

    type: Literal["email"]
    to: list[str] = Field(min_length=1)
    retry: RetryConfig | None = None
    template: EmailTemplate | None = None

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            # A templated address is checked once rendered, at send time.
            if "{{" not in address and "{%" not in address:
                _address(address)
        if len(set(value)) != len(value):
            raise ValueError("lists an address twice")
        return value

    def inherit(self, shared: SmtpSettings | None) -> EmailDestination:
        """These settings with the shared ones filling every key this destination leaves unset."""
        if shared is None:
            return self
        update = {
            key: getattr(shared, key)
            for key in SMTP_KEYS
            if getattr(self, key) is None and getattr(shared, key) is not None
        }
        return self.model_copy(update=update)

    def problems(self) -> list[tuple[str | None, str]]:
        """What a usable destination still lacks, once inherited: (key or None, message)."""
        found: list[tuple[str | None, str]] = []
        if self.host is None:
            found.append(("host", "missing (set it here or in the shared smtp: block)"))
        if self.from_ is None:
            found.append(("from", "missing (set it here or in the shared smtp: block)"))
        if self.tls and self.starttls:
            found.append(("tls", "give tls (implicit TLS) or starttls, not both"))
        if self.password is not None and self.username is None:
            found.append(("username", "missing: a password needs a username"))
        return found

    @property
    def security(self) -> Literal["tls", "starttls", "none"]:
        if self.tls:
            return "tls"
        return "none" if self.starttls is False else "starttls"

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"tls": 465, "starttls": 587, "none": 25}[self.security]


# A discriminated union: one model per destination type.
Destination = Annotated[
    WebhookDestination | SlackDestination | EmailDestination, Field(discriminator="type")
]


# What a mention may be: a user, a user group, @here/@channel/@everyone, or the value of a
# URL label (a Slack user ID), written label:NAME.
_MENTION = re.compile(r"<@[UW][A-Z0-9]{2,}>|<!subteam\^S[A-Z0-9]{2,}>|<!(?:here|channel|everyone)>")
_LABEL_MENTION = re.compile(r"label:([a-z][a-z0-9_]{0,63})")
# A Slack user ID, as a label's value must be to become a mention.
SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")


def _failures() -> list[Status]:
    return ["failed"]


class MentionConfig(_Strict):
    """Who a route's Slack messages mention, and for which statuses (failures by default)."""

    who: list[str] = Field(min_length=1)
    when: list[Status] = Field(default_factory=_failures)

    @field_validator("who", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("who")
    @classmethod
    def _mentions(cls, value: list[str]) -> list[str]:
        for item in value:
            if not (_MENTION.fullmatch(item) or _LABEL_MENTION.fullmatch(item)):
                raise ValueError(
                    f"bad mention {item!r}: write <@U012AB3CD>, <!subteam^S012AB3CD>, <!here>, "
                    "<!channel> or label:NAME (a URL label holding a user ID)"
                )
        return value

    def label_names(self) -> list[str]:
        return [m.group(1) for item in self.who if (m := _LABEL_MENTION.fullmatch(item))]

    def resolve(self, status: str, labels: dict[str, str]) -> tuple[str, ...]:
        """The mentions for an event with ``status`` and URL ``labels``: none unless its
        status is one of ``when``; a label that does not hold a user ID mentions nobody."""
        if status not in self.when:
            return ()
        out = []
        for item in self.who:
            label = _LABEL_MENTION.fullmatch(item)
            if label is None:
                out.append(item)
            elif SLACK_USER_ID.fullmatch(value := labels.get(label.group(1), "")):
                out.append(f"<@{value}>")
        return tuple(dict.fromkeys(out))


class Route(_Strict):
    """Matchers (all must hold) and the destinations to deliver to; ``mention``: who its
    Slack messages mention (README: Rules, mentions)."""

    match: list[Matcher] = Field(default_factory=list)
    to: list[str]
    continue_: bool = Field(default=False, alias="continue")
    mention: MentionConfig | None = None
    template: RouteTemplate | None = None
    # Events with the same values of these labels become one digest (README: batch digests).
    group: GroupConfig | None = None
    # Recurring windows in which this route's deliveries are held as silenced.
    mute_times: list[MuteTime] = Field(default_factory=list)

    @field_validator("mute_times", mode="before")
    @classmethod
    def _one_window(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value

    def muted(self, now: float) -> MuteTime | None:
        """The mute window ``now`` is in, or None."""
        return next((window for window in self.mute_times if window.covers(now)), None)

    @field_validator("mention", mode="before")
    @classmethod
    def _mention_list(cls, value: object) -> object:
        # `mention: ["<!subteam^S0123>"]` is who, on failures.
        if isinstance(value, str | list):
            return {"who": value}
        return value

    _parse_match = field_validator("match", mode="before")(matcher_items)

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


# Delivered events are kept this long (seconds) unless `retention:` or RELAY_RETENTION says.
DEFAULT_RETENTION = 7 * 86400.0
# The shortest retention the rules accept: an event is also what recognises a provider's
# retry of its callback as a duplicate, and providers retry for hours.
MIN_RETENTION = 3600.0


class RetentionConfig(_Strict):
    """How long finished work is kept (README: Retention). ``delivered``: seconds a delivered
    event, with its deliveries and attempts, is kept; inf (``off``) keeps it for ever."""

    delivered: float = DEFAULT_RETENTION

    @field_validator("delivered", mode="before")
    @classmethod
    def _delivered(cls, value: object) -> float:
        # YAML reads a bare `off` as false.
        if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
            return float("inf")
        if value is True:
            raise ValueError("must be a duration like '7d' or off")
        seconds = parse_duration(value)
        if seconds < MIN_RETENTION:
            raise ValueError(
                "must be at least 1h (a provider's retry of an older callback would be "
                "delivered again) or off"
            )
        return seconds


class Rules(_Strict):
    smtp: SmtpSettings | None = None
    retention: RetentionConfig | None = None
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    destinations: dict[str, Destination] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    inhibit: list[InhibitRule] = Field(default_factory=list)
