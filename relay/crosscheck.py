"""Cross-checks for unsigned callbacks (``verify: fetch``): ask the provider's own status API.

The URL comes from our config and the task id only, never from the payload, and carries our API
key; what the provider says replaces what the callback claimed. A task the provider does not
know, or one the callback calls finished while the provider does not, is a forgery (401); a
status API that cannot answer is our problem of the moment (503, so the provider retries).
"""

from __future__ import annotations

import logging

import httpx

from relay.errors import PayloadError, UpstreamUnavailableError, VerificationError
from relay.events import TaskEvent
from relay.providers.base import Inbound, Provider, StatusLookup

log = logging.getLogger("relay.crosscheck")


class CrossChecker:
    """Looks tasks up with one shared httpx client (low volume: one GET per callback)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def confirm(self, provider: Provider, inbound: Inbound, event: TaskEvent) -> TaskEvent:
        if not isinstance(provider, StatusLookup):
            # The loader refuses such sources; this guards against a provider losing support.
            raise UpstreamUnavailableError(f"{inbound.config.provider} has no status API")
        request = provider.status_request(inbound.config, event.task_id)
        try:
            response = await self._http.get(
                request.url,
                headers=dict(request.headers),
                timeout=inbound.config.fetch_timeout,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailableError(
                f"status API of {inbound.config.provider} unreachable: {type(exc).__name__}"
            ) from None
        if response.status_code == 404:
            raise VerificationError(f"task {event.task_id} is unknown to the provider")
        if response.status_code in (401, 403):
            # Our API key is wrong: not the sender's fault, and it must keep retrying.
            log.error(
                "status API of %s refused our api_key (HTTP %d): fix the source '%s'",
                inbound.config.provider,
                response.status_code,
                inbound.source,
            )
            raise UpstreamUnavailableError("status API refused our credentials")
        if response.status_code != 200:
            raise UpstreamUnavailableError(
                f"status API of {inbound.config.provider} answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
        except ValueError:
            raise UpstreamUnavailableError("status API answered with something not JSON") from None
        try:
            trusted = provider.from_status(inbound, body, event)
        except PayloadError as exc:
            raise UpstreamUnavailableError(f"status API answer not understood: {exc}") from None
        except Exception as exc:
            # An adapter bug on the answer: the callback is unconfirmed, so not kept; 503 lets
            # the provider send it again once relay is fixed.
            log.exception("%s could not read its status API's answer", inbound.config.provider)
            raise UpstreamUnavailableError(
                f"status API answer not understood: {type(exc).__name__}"
            ) from None
        if trusted is None:
            raise VerificationError(f"task {event.task_id} is unknown to the provider")
        if event.final and not trusted.final:
            raise VerificationError(
                f"task {event.task_id} is {trusted.provider_status} at the provider, "
                f"not {event.provider_status} as the callback says"
            )
        # What the provider says, under the callback's identity: it is still the event this
        # callback delivers (our id, its source, its dedupe key, when it arrived).
        identity = {
            "id": event.id,
            "source": event.source,
            "dedupe_key": event.dedupe_key,
            "received_at": event.received_at,
        }
        return trusted.model_copy(update=identity)
