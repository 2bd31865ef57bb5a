import random

from relay.errors import PermanentDeliveryError, TransientDeliveryError
from relay.retry import DEFAULT_SCHEDULE, RetryPolicy


def test_default_schedule_is_svix_like() -> None:
    policy = RetryPolicy(jitter=0)
    assert policy.max_attempts == 8
    waits = [policy.next_attempt(n, TransientDeliveryError("x"), 1000.0) for n in range(1, 8)]
    assert waits == [1000.0 + w for w in DEFAULT_SCHEDULE]


def test_gives_up_after_the_last_attempt() -> None:
    policy = RetryPolicy(schedule=(1, 2), jitter=0)
    assert policy.next_attempt(2, TransientDeliveryError("x"), 0) == 2
    assert policy.next_attempt(3, TransientDeliveryError("x"), 0) is None


def test_permanent_errors_are_never_retried() -> None:
    assert RetryPolicy().next_attempt(1, PermanentDeliveryError("HTTP 404"), 0) is None


def test_retry_after_is_honoured_when_longer_than_the_schedule() -> None:
    policy = RetryPolicy(schedule=(5,), jitter=0)
    assert policy.next_attempt(1, TransientDeliveryError("429", retry_after=120), 0) == 120
    assert policy.next_attempt(1, TransientDeliveryError("429", retry_after=1), 0) == 5


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(schedule=(5,), jitter=0)
    assert policy.next_attempt(1, TransientDeliveryError("x", retry_after=10**9), 0) == 36000


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    policy = RetryPolicy(schedule=(100,), jitter=0.1, rng=random.Random(7))
    waits = {policy.next_attempt(1, TransientDeliveryError("x"), 0) for _ in range(50)}
    assert all(w is not None and 90 <= w <= 110 for w in waits)
    assert len(waits) > 10
