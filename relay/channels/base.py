"""The channel plug-in interface and the one shared table of "HTTP status -> retry?".

A channel renders and sends one delivery. It never sleeps or loops: every failure it raises
is a DeliveryError that says whether retrying makes sense; the dispatcher decides the rest.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from relay.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from relay.events import StoredEvent, TaskEvent, event_of
from relay.render.names import ProviderNames
from relay.store.base import ChannelState
from relay.templating import MessageTemplates


@dataclass(frozen=True)
class Delivery:
    """What a channel is asked to send: one event to one destination, one attempt."""

    id: str
    destination: str
    attempt: int
    # The event, or the store's JSON of it (parsed if something reads ``event``).
    event_data: TaskEvent | StoredEvent
    # Who to mention (Slack mention syntax, from the rules only: the route's `mention`).
    mentions: tuple[str, ...] = ()
    # The route's `template:` (its keys take the place of the destination's), if it has one.
    template: MessageTemplates | None = None

    @property
    def event(self) -> TaskEvent:
        return event_of(self.event_data)

    @property
    def stored_event(self) -> StoredEvent | None:
        """The event as the store keeps it (its JSON), if it came from the store."""
        return self.event_data if isinstance(self.event_data, StoredEvent) else None


class Channel(Protocol):
    def render(self, delivery: Delivery) -> str:
        """What would be sent, as readable text (for `relay test`). Pure: no I/O."""

    async def send(self, delivery: Delivery) -> None:
        """Send once. Return on success; raise DeliveryError (transient or permanent)."""


@dataclass(frozen=True)
class ChannelDeps:
    """What the app hands every channel: one shared HTTP session, the clock, the store's
    channel state (message references, per-recipient outcomes, pacing slots) and what each
    provider is called (for the renderers, which import no provider; built in ``runtime``)."""

    http: aiohttp.ClientSession
    clock: Callable[[], float]
    state: ChannelState
    names: ProviderNames


# Statuses worth retrying: the receiver is overloaded, timed out or asked us to slow down.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    """The shared table: 5xx, 408, 425 and 429 are transient; everything else is final."""
    return status >= 500 or status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def http_failure(status: int, detail: str, retry_after: float | None = None) -> DeliveryError:
    """Classify a non-2xx answer with the shared table."""
    reason = f"HTTP {status}" + (f": {detail}" if detail else "")
    if is_retryable_status(status):
        return TransientDeliveryError(reason, retry_after=retry_after)
    return PermanentDeliveryError(reason)
