"""The provider plug-in interface.

A provider turns one inbound callback into a TaskEvent. Both steps are pure functions of the
request, the source's config and the time: no I/O, so fixtures test them directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from relay.events import TaskEvent
from relay.routing.model import SourceConfig

# The ``alert_phrases`` of a provider without alerts: read-only, so one can be shared.
NO_ALERT_PHRASES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Inbound:
    """One received callback, as the endpoint read it.

    ``headers`` has lower-case names. ``path_token`` is the token segment of the URL, if any
    (already checked by the endpoint when the source has a token).
    """

    source: str
    config: SourceConfig
    headers: Mapping[str, str]
    body: bytes
    received_at: datetime
    path_token: str | None = None
    query: Mapping[str, str] | None = None
    client_ip: str | None = None
    # False only for dry runs (`relay test`): skip checks of secrets and replay windows.
    verify: bool = True


@dataclass(frozen=True)
class Ignored:
    """A callback answered 200 and dropped on purpose (e.g. a provider's non-task event)."""

    reason: str


class Provider(Protocol):
    """One provider's adapter. Registered by name in ``relay.providers.default_providers()``.

    Besides parsing, a provider says how people name it: renderers get these declarations
    (through ``relay.runtime.provider_names``) instead of importing provider modules.
    """

    name: str
    display_name: str
    """What people call it in messages: "GoAPI", "Standard Webhooks"."""
    alerts: bool
    """Its events are account notifications (titled "<display_name> alert: ..."), not tasks."""
    alert_phrases: Mapping[str, str]
    """For alerts: a readable line per known alert type; empty otherwise."""

    def check_source(self, config: SourceConfig) -> list[tuple[str | None, str]]:
        """This provider's own checks of a source's settings, run when the rules load: each
        problem is (the key, or None for the source itself; a message). Never the secret."""

    def authenticate(self, inbound: Inbound) -> None:
        """Check what can be checked before the body is parsed (shared secrets, signatures
        over the raw bytes). Raise VerificationError on failure."""

    def normalize(self, inbound: Inbound, payload: Any, event_id: str) -> TaskEvent | Ignored:
        """Turn the parsed JSON body into a TaskEvent.

        Checks that need the body (timestamps in the replay window) raise VerificationError;
        anything not shaped as the provider documents raises PayloadError. Never any other
        exception.
        """


@dataclass(frozen=True)
class StatusRequest:
    """A GET to a provider's status API, built from our config and the task id only."""

    url: str
    headers: Mapping[str, str]


@runtime_checkable
class StatusLookup(Protocol):
    """A provider whose tasks can be looked up, for sources with ``verify: fetch``."""

    default_api_url: str

    def status_request(self, config: SourceConfig, task_id: str) -> StatusRequest:
        """The look-up for ``task_id``: ``config.api_url`` (or ``default_api_url``) and the
        task id (URL-quoted) make the URL, never anything from the payload."""

    def from_status(self, inbound: Inbound, body: Any, callback: TaskEvent) -> TaskEvent | None:
        """What the status API's JSON says about the task, as an event (the cross-checker
        gives it the callback's identity: id, source, dedupe key, received_at); None if the
        answer says the task does not exist. Raises PayloadError if the answer cannot be read."""
