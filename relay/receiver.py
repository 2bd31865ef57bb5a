"""The request path: verify, parse, normalize, route, store. The endpoint only maps errors."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from relay.bodies import parse_json
from relay.crosscheck import CrossChecker
from relay.errors import (
    PayloadError,
    UnknownSourceError,
    UpstreamUnavailableError,
    VerificationError,
)
from relay.events import TaskEvent
from relay.ids import IdFactory
from relay.providers.base import Ignored, Inbound
from relay.providers.common import scrub_literal_in_place
from relay.routing.router import Target, route
from relay.rulebook import RuleBook
from relay.store.base import NewDelivery, Store

log = logging.getLogger("relay.receiver")


# NamedTuples rather than frozen dataclasses: as immutable, and built several times faster,
# which counts on a path every callback takes.
class Accepted(NamedTuple):
    event_id: str
    duplicate: bool
    deliveries: int


class Request(NamedTuple):
    """What the endpoint read off the wire."""

    source: str
    token: str | None
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str]
    client_ip: str | None


class Receiver:
    """Turns one request into a stored event with its deliveries, or a RequestError."""

    def __init__(
        self,
        rulebook: RuleBook,
        store: Store,
        *,
        clock: Callable[[], float],
        max_depth: int = 64,
        on_stored: Callable[[], None] | None = None,
        ids: Callable[[str], str] | None = None,
        crosscheck: CrossChecker | None = None,
    ) -> None:
        self._rulebook = rulebook
        self._store = store
        self._clock = clock
        self._max_depth = max_depth
        self._on_stored = on_stored
        self._ids = ids if ids is not None else IdFactory(clock)
        self._crosscheck = crosscheck

    def inbound(self, request: Request) -> Inbound:
        """Find the source and check the URL token and client address."""
        rules = self._rulebook.rules
        config = rules.sources.get(request.source)
        if config is None:
            raise UnknownSourceError(f"unknown source '{request.source}'")
        token = request.token if request.token is not None else request.query.get("token")
        if config.token is not None:
            if token is None:
                raise VerificationError("token missing from the URL")
            if not hmac.compare_digest(token.encode(), config.token.get_secret_value().encode()):
                raise VerificationError("token does not match")
        elif request.token is not None:
            raise VerificationError("this source takes no token in its URL")
        if config.allow_ips and not _allowed(request.client_ip, config.allow_ips):
            raise VerificationError(f"client address {request.client_ip} is not allowed")
        return Inbound(
            source=request.source,
            config=config,
            headers=request.headers,
            body=request.body,
            received_at=datetime.fromtimestamp(self._clock(), UTC),
            path_token=token,
            query=request.query,
            client_ip=request.client_ip,
        )

    def normalize(self, inbound: Inbound, *, verify: bool = True) -> TaskEvent | Ignored:
        """Authenticate (unless a dry run), parse and normalize."""
        provider = self._rulebook.providers[inbound.config.provider]
        if verify:
            provider.authenticate(inbound)
        payload = parse_json(inbound.body, self._max_depth)
        try:
            return provider.normalize(inbound, payload, self._ids("evt"))
        except (PayloadError, VerificationError):
            raise
        except Exception as exc:  # an adapter bug must still answer 400, not 500
            log.exception("provider %s failed on a payload", inbound.config.provider)
            raise PayloadError(f"payload not understood: {type(exc).__name__}") from None

    def targets(self, event: TaskEvent) -> list[Target]:
        return route(self._rulebook.rules, event)

    async def receive(self, request: Request) -> Accepted | Ignored:
        inbound = self.inbound(request)
        result = self.normalize(inbound)
        if isinstance(result, Ignored):
            return result
        token = inbound.config.token
        if token is not None and token.get_secret_value().encode() in inbound.body:
            # The body echoes our URL token somewhere: it must not be stored or forwarded.
            scrub_literal_in_place(result.raw, token.get_secret_value())
        if inbound.config.verify == "fetch":
            if self._crosscheck is None:
                raise UpstreamUnavailableError("cross-checks are not available in this process")
            provider = self._rulebook.providers[inbound.config.provider]
            result = await self._crosscheck.confirm(provider, inbound, result)
        targets = self.targets(result)
        destinations = self._rulebook.rules.destinations
        # Channels that keep one message per task get the task's events in order.
        group = f"{result.source}/{result.task_id}"
        deliveries = [
            NewDelivery(
                self._ids("dlv"),
                t.destination,
                t.route,
                group if destinations[t.destination].ordered else None,
            )
            for t in targets
        ]
        stored = await self._store.ingest(result, deliveries)
        if not stored.duplicate and deliveries and self._on_stored is not None:
            self._on_stored()
        if log.isEnabledFor(logging.INFO):  # the line's arguments cost a share of a callback
            log.info(
                "%s %s task %s %s: %s",
                "duplicate" if stored.duplicate else "accepted",
                result.source,
                result.task_id,
                result.status,
                ", ".join(t.destination for t in targets) or "no route",
            )
        return Accepted(stored.event_id, stored.duplicate, 0 if stored.duplicate else len(targets))


def _allowed(client_ip: str | None, networks: list[str]) -> bool:
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)
