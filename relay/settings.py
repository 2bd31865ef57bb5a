"""Process settings: command-line flags, each with an environment variable as its default."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails

from relay.routing.durations import parse_duration
from relay.routing.model import MIN_RETENTION


@dataclass(frozen=True)
class Settings:
    """Everything ``relay serve`` needs besides the rules. See the README for each variable."""

    rules: Path = Path("rules")
    db: str = "sqlite:///relay.db"
    host: str = "127.0.0.1"
    port: int = 8000
    dispatch: bool = True
    max_body: int = 1024 * 1024
    max_depth: int = 64
    lease_seconds: float = 60.0
    concurrency: int = 128
    log_level: str = "info"
    # json or text; None: JSON unless stderr is a terminal.
    log_format: str | None = None
    # The admin API (/admin) is off unless a token is set.
    admin_token: SecretStr | None = field(default=None, repr=False)
    # The request head (request line and headers): its largest size in bytes (431 above) and
    # the seconds it may take from the connection (408 after); the body's seconds (408).
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # Connections (and requests in progress) `relay serve` takes at once; 503 beyond.
    max_connections: int = 1000
    # Seconds a callback waits for its event to be stored (and any cross-check) before it is
    # answered 503: providers give up on slower answers (Novita after 5 s).
    answer_timeout: float = 3.0
    # Seconds `serve` and `worker` wait on SIGTERM for in-flight requests and sends.
    shutdown_grace: float = 10.0
    # Delivered events older than this many seconds are pruned; None: the rules' `retention:`
    # or its default (7 days).
    retention: float | None = None
    # Refused requests kept per source for `GET /admin/rejected` and `relay rejected`.
    rejected_keep: int = 100
    # `relay worker` serves /metrics on this port when set.
    metrics_port: int | None = None
    # `relay serve`: delivery worker processes to start beside the receiver (0: deliver in the
    # serving process itself; None: one, or none where there is nothing to share: a memory://
    # store, or dispatching turned off).
    workers: int | None = None
    # Addresses or networks of the proxies whose X-Forwarded-For (and -Proto) are believed;
    # empty: none, the client address is the connection's.
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by RELAY_* variables (and PORT, as platforms set it). An empty
        variable counts as unset. Raises SettingsError naming every bad variable."""
        env = os.environ if env is None else env
        given = {name: env[name] for name in _VARIABLES if env.get(name)}
        if "RELAY_PORT" not in given and env.get("PORT"):
            given["RELAY_PORT"] = env["PORT"]
        try:
            parsed = _Environment.model_validate(given)
        except ValidationError as exc:
            raise SettingsError([_problem(error, given) for error in exc.errors()]) from None
        return cls(**parsed.model_dump())


class SettingsError(ValueError):
    """Environment variables that cannot be used: one line per variable, naming it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


_DEFAULTS = Settings()
_LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class _Environment(BaseModel):
    """What each RELAY_* variable may hold. Strict: "abc" is no port, "verbose" no level."""

    model_config = ConfigDict(extra="forbid")

    rules: Path = Field(_DEFAULTS.rules, alias="RELAY_RULES")
    db: str = Field(_DEFAULTS.db, alias="RELAY_DB")
    host: str = Field(_DEFAULTS.host, alias="RELAY_HOST")
    port: int = Field(_DEFAULTS.port, alias="RELAY_PORT", ge=1, le=65535)
    max_body: int = Field(_DEFAULTS.max_body, alias="RELAY_MAX_BODY", ge=1)
    max_depth: int = Field(_DEFAULTS.max_depth, alias="RELAY_MAX_DEPTH", ge=1)
    lease_seconds: float = Field(
        _DEFAULTS.lease_seconds, alias="RELAY_LEASE_SECONDS", gt=0, allow_inf_nan=False
    )
    concurrency: int = Field(_DEFAULTS.concurrency, alias="RELAY_CONCURRENCY", ge=1)
    log_level: _LogLevel = Field(cast(_LogLevel, _DEFAULTS.log_level), alias="RELAY_LOG_LEVEL")
    dispatch: bool = Field(_DEFAULTS.dispatch, alias="RELAY_DISPATCH")
    log_format: Literal["json", "text"] | None = Field(None, alias="RELAY_LOG_FORMAT")
    admin_token: SecretStr | None = Field(None, alias="RELAY_ADMIN_TOKEN", min_length=16)
    max_header_bytes: int = Field(
        _DEFAULTS.max_header_bytes, alias="RELAY_MAX_HEADER_BYTES", ge=1024
    )
    header_timeout: float = Field(
        _DEFAULTS.header_timeout, alias="RELAY_HEADER_TIMEOUT", gt=0, allow_inf_nan=False
    )
    body_timeout: float = Field(
        _DEFAULTS.body_timeout, alias="RELAY_BODY_TIMEOUT", gt=0, allow_inf_nan=False
    )
    max_connections: int = Field(_DEFAULTS.max_connections, alias="RELAY_MAX_CONNECTIONS", ge=1)
    answer_timeout: float = Field(
        _DEFAULTS.answer_timeout, alias="RELAY_ANSWER_TIMEOUT", gt=0, allow_inf_nan=False
    )
    shutdown_grace: float = Field(
        _DEFAULTS.shutdown_grace, alias="RELAY_SHUTDOWN_GRACE", ge=0, allow_inf_nan=False
    )
    retention: float | None = Field(None, alias="RELAY_RETENTION")
    rejected_keep: int = Field(_DEFAULTS.rejected_keep, alias="RELAY_REJECTED_KEEP", ge=0)
    metrics_port: int | None = Field(None, alias="RELAY_METRICS_PORT", ge=1, le=65535)
    workers: int | None = Field(None, alias="RELAY_WORKERS", ge=0, le=64)
    trusted_proxies: tuple[str, ...] = Field((), alias="RELAY_TRUSTED_PROXIES")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        # Comma-separated addresses or networks: 10.0.0.0/8, 127.0.0.1, fd00::/8.
        if not isinstance(value, str):
            return value
        found = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            try:
                found.append(str(ipaddress.ip_network(part, strict=False)))
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network") from None
        return tuple(found)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("retention", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        # The rules' duration syntax: 7d, 12h, 3600; "off" keeps everything.
        if isinstance(value, str) and value.strip().lower() in ("off", "never"):
            return float("inf")
        seconds = parse_duration(value)
        if seconds < MIN_RETENTION:
            # A pruned event no longer catches a provider's late retry as a duplicate.
            raise ValueError("must be at least 1h (or off)")
        return seconds


_VARIABLES = tuple(
    field.alias for field in _Environment.model_fields.values() if field.alias is not None
)
_HINTS = {
    "int_parsing": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be 1 or 0 (true/false, yes/no, on/off)",
    "string_too_short": "must be at least {min_length} characters",
    "too_short": "must be at least {min_length} characters",
}
# Their values are never shown in a message.
_SECRET_VARIABLES = frozenset({"RELAY_ADMIN_TOKEN"})


def _problem(error: ErrorDetails, given: Mapping[str, str]) -> str:
    name = str(error["loc"][0]) if error["loc"] else "environment"
    ctx = error.get("ctx", {})
    if error["type"] == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ").replace("'", "")
        why = f"must be one of {expected}"
    else:
        why = _HINTS.get(error["type"], error["msg"].lower()).format(**ctx)
    why = why.removeprefix("value error, ")
    if name in _SECRET_VARIABLES:
        return f"{name}: {why}"
    # The value is shown: these variables hold no secrets (the database URL's password is
    # never in a message, as that variable only fails to open, never to parse).
    return f"{name}={given.get(name, '')!r}: {why}"
