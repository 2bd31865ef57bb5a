"""A route's ``group:`` (README: Rules, batch digests): events with the same values of the
``by`` labels become one digest message per destination instead of one message each."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relay.routing.durations import Duration

# The ordered group of a digest's deliveries: ``digest:<route>:<label>=<value>,...``.
DIGEST_PREFIX = "digest:"
# Hard bounds: a digest's state is one JSON row, read and written at every step.
MAX_CLOSE_AFTER = 5000
MAX_LISTED = 50


class GroupConfig(BaseModel):
    """``wait``: how long a new group collects before its first message. ``interval``: after
    that, at most one update per interval (Slack edits its message; email and webhooks send
    nothing until the window closes). The window closes when ``close_after`` events are in, or
    when ``interval`` passes with no new event; its digest is then final (Slack's last edit,
    the one mail, the one webhook call) and the next event opens a new window.
    ``failures`` / ``successes``: how many of each the digest lists by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: list[str] = Field(min_length=1)
    wait: Duration = 30.0
    interval: Duration = 300.0
    close_after: int = Field(default=500, ge=1, le=MAX_CLOSE_AFTER)
    failures: int = Field(default=10, ge=0, le=MAX_LISTED)
    successes: int = Field(default=10, ge=0, le=MAX_LISTED)

    @field_validator("by", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("by")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a label twice")
        return value

    @model_validator(mode="after")
    def _times(self) -> GroupConfig:
        if self.interval <= 0:
            raise ValueError("interval must be more than 0s")
        if self.interval > 86400 or self.wait > 86400:
            raise ValueError("wait and interval must be at most 1d")
        return self

    def key(self, labels: dict[str, tuple[str, ...]]) -> str | None:
        """The group of an event with these match labels, or None (a ``by`` label missing:
        the event is delivered on its own)."""
        values = []
        for name in self.by:
            found = labels.get(name, ())
            if not found or not found[0]:
                return None
            values.append(f"{name}={found[0]}")
        return ",".join(values)
