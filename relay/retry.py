"""The retry policy: a pure function of (attempt, error, now) to the next attempt time or None."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from relay.errors import DeliveryError

# Waits after each failed attempt, like Svix: the first attempt is immediate, then
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; eight attempts in all, about 1.5 days.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)

# A Retry-After beyond this is capped: a receiver asking for a week should not park a
# delivery past the whole schedule.
MAX_RETRY_AFTER = 36000.0


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a failed attempt.

    ``schedule[i]`` is the wait after the (i+1)-th failed attempt. ``jitter`` spreads the
    wait by up to +/- that fraction so retries of many deliveries do not arrive together.
    """

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def next_attempt(self, attempt: int, error: DeliveryError, now: float) -> float | None:
        """The time of the next attempt after ``attempt`` (1-based) failed, or None for dead."""
        if not error.transient or attempt >= self.max_attempts:
            return None
        wait = self.schedule[attempt - 1]
        if self.jitter:
            wait *= 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        if error.retry_after is not None:
            wait = max(wait, min(error.retry_after, MAX_RETRY_AFTER))
        return now + max(wait, 0.0)
