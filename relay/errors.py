"""The error tree. Each class maps to one answer or one dispatcher decision.

Messages read "what failed: why" and never contain a secret, token or signature.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


class ConfigError(RelayError):
    """The rules could not be loaded. ``problems`` lists every one, each naming file and key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RequestError(RelayError):
    """An inbound request that must be refused; ``status`` is the HTTP answer."""

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class VerificationError(RequestError):
    """Bad or missing secret, token, signature or timestamp: 401."""

    status = 401


class PayloadError(RequestError):
    """The body is malformed or not a shape the provider sends: 400."""

    status = 400


class UnknownSourceError(RequestError):
    """No source of that name is configured: 404."""

    status = 404


class BodyTooLargeError(RequestError):
    """The body is over the configured limit: 413."""

    status = 413


class UnreadableCallbackError(RelayError):
    """A verified callback whose adapter failed in an unexpected way (a bug, or a shape we do
    not know yet): not the sender's fault, so it is kept in quarantine and answered 200."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UpstreamUnavailableError(RelayError):
    """A provider's status API could not answer a cross-check: 503, so the provider retries."""


class StoreUnavailableError(RelayError):
    """The store could not take or give data right now: 503 to a provider, retry for a worker."""


class DeliveryError(RelayError):
    """A channel's classified failure. The dispatcher alone decides what happens next.

    ``transient`` failures may be retried (honouring ``retry_after`` seconds when given);
    permanent ones go straight to dead.
    """

    def __init__(self, reason: str, *, transient: bool, retry_after: float | None = None) -> None:
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after
        super().__init__(reason)


class TransientDeliveryError(DeliveryError):
    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason, transient=True, retry_after=retry_after)


class PermanentDeliveryError(DeliveryError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, transient=False)


class DeliveryDeferred(RelayError):
    """Not a failure: the channel must wait ``seconds`` for its turn (pacing). The delivery is
    put back, due then, and the attempt does not count."""

    def __init__(self, seconds: float, reason: str = "waiting for its turn") -> None:
        self.seconds = seconds
        self.reason = reason
        super().__init__(f"{reason} ({seconds:.1f} s)")
