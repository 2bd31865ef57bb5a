"""The validated rules (DESIGN section 4). Built only by ``relay.routing.loader``.

Every model forbids unknown keys so a typo is an error that names the key, not a silent default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from relay import signing
from relay.routing.durations import Duration
from relay.routing.matchers import Matcher, parse_matchers


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SourceConfig(_Strict):
    """One inbound endpoint: ``POST /hooks/{name}`` (or ``/hooks/{name}/{token}``)."""

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


class WebhookDestination(_Strict):
    """POST the event, signed with Standard Webhooks headers when ``secret`` is set."""

    type: Literal["webhook"]
    url: str
    secret: SecretStr | None = None
    body: Literal["event", "original"] = "event"
    timeout: Duration = 10.0
    headers: dict[str, str] = Field(default_factory=dict)
    retry: RetryConfig | None = None

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
            # decode_secret's messages never include the value.
            signing.decode_secret(value)
        return value


# A discriminated union: later issues add slack and email here.
Destination = Annotated[WebhookDestination, Field(discriminator="type")]


class Route(_Strict):
    """Matchers (all must hold) and the destinations to deliver to."""

    match: list[Matcher] = Field(default_factory=list)
    to: list[str]
    continue_: bool = Field(default=False, alias="continue")

    @field_validator("match", mode="before")
    @classmethod
    def _parse_match(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            out: list[object] = []
            for item in value:
                if isinstance(item, str):
                    out.extend(parse_matchers(item))
                else:
                    out.append(item)
            return out
        return value

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class Rules(_Strict):
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    destinations: dict[str, Destination] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
