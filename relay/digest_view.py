"""What a batch digest shows (README: Rules, batch digests): the data every channel renders a
digest window from, built by ``relay.digest``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskLine:
    """One task of a digest, as its latest event left it."""

    task_id: str
    status: str
    error: str = ""
    url: str = ""
    thumbnail: str = ""
    kind: str = ""
    duration_s: float | None = None


@dataclass(frozen=True)
class DigestView:
    """What a channel shows of one window. ``key`` names the window (the same in every
    process: a message reference, an idempotency key); ``final``: the window is closed."""

    key: str
    route: int
    labels: dict[str, str]
    window: int
    final: bool
    total: int
    counts: dict[str, int]
    failures: list[TaskLine]
    more_failures: int
    successes: list[TaskLine]
    more_successes: int
    opened_at: float
    last_at: float
    p95_s: float | None
    usage: dict[str, float]
    # How to list the group's failed events: the CLI command and the admin API path.
    failed_command: str
    failed_path: str
    providers: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.labels.items())

    @property
    def span_s(self) -> float:
        return max(0.0, self.last_at - self.opened_at)
