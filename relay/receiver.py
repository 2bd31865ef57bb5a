"""The request path: verify, parse, normalize, route, store. The endpoint only maps errors."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from relay.bodies import parse_json
from relay.crosscheck import CrossChecker
from relay.errors import (
    PayloadError,
    UnknownSourceError,
    UnreadableCallbackError,
    UpstreamUnavailableError,
    VerificationError,
)
from relay.events import TaskEvent
from relay.ids import IdFactory
from relay.metrics import Metrics
from relay.providers.base import Ignored, Inbound
from relay.providers.common import is_sensitive_key, redact_in_place, scrub_literal_in_place
from relay.render.text import one_line
from relay.routing.grouping import DIGEST_PREFIX
from relay.routing.router import Target, route
from relay.rulebook import RuleBook
from relay.store.base import NewDelivery, QuarantinedCallback, Silence, Store

log = logging.getLogger("relay.receiver")


# NamedTuples rather than frozen dataclasses: as immutable, and built several times faster,
# which counts on a path every callback takes.
class Accepted(NamedTuple):
    event_id: str
    duplicate: bool
    deliveries: int
    # For the endpoint's log line.
    task_id: str = ""
    status: str = ""


class Quarantined(NamedTuple):
    """A verified callback no adapter could read: stored as it came, answered 200."""

    quarantine_id: str
    reason: str


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
        metrics: Metrics | None = None,
    ) -> None:
        self._rulebook = rulebook
        self._store = store
        self._clock = clock
        self._max_depth = max_depth
        self._on_stored = on_stored
        self._ids = ids if ids is not None else IdFactory(clock)
        self._crosscheck = crosscheck
        self._metrics = metrics

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
        except Exception as exc:
            # Verified, so not the sender's fault: a 4xx would make providers such as APIMart
            # give up on it for good. The caller keeps it for `relay reprocess`.
            log.exception(
                "provider %s could not read a callback to source %s",
                inbound.config.provider,
                inbound.source,
            )
            raise UnreadableCallbackError(_reason(exc, inbound)) from exc

    def targets(self, event: TaskEvent) -> list[Target]:
        return route(self._rulebook.rules, event)

    def deliveries(self, event: TaskEvent, targets: list[Target]) -> list[NewDelivery]:
        """One new delivery per target, under the rules in force (ingest and a re-route)."""
        rules = self._rulebook.rules
        destinations = rules.destinations
        # Channels that keep one message per task get the task's events in order.
        task = f"{event.source}/{event.task_id}"
        labels: dict[str, tuple[str, ...]] | None = None
        out = []
        for t in targets:
            group = task if destinations[t.destination].ordered else None
            digest = rules.routes[t.route].group
            if digest is not None:
                labels = labels if labels is not None else event.match_labels()
                key = digest.key(labels)
                if key is not None:
                    # A digest's events go one at a time: the first carries the rest.
                    group = f"{DIGEST_PREFIX}{t.route}:{key}"
            out.append(NewDelivery(self._ids("dlv"), t.destination, t.route, group))
        return out

    async def receive(self, request: Request) -> Accepted | Ignored | Quarantined:
        inbound = self.inbound(request)
        try:
            result = self.normalize(inbound)
        except UnreadableCallbackError as exc:
            return await self._quarantine(inbound, exc.reason)
        if isinstance(result, Ignored):
            return result
        return await self.accept(inbound, result)

    async def reprocess(self, callback: QuarantinedCallback) -> Accepted | Ignored:
        """Read a quarantined callback again with today's adapter, then route and store it
        like a new one. It was verified when it arrived, so secrets and the replay window are
        not checked again. Raises UnreadableCallbackError if it still cannot be read, and
        RequestError if it is now refused."""
        config = self._rulebook.rules.sources.get(callback.source)
        if config is None:
            raise UnknownSourceError(f"unknown source '{callback.source}'")
        inbound = Inbound(
            source=callback.source,
            config=config,
            headers=callback.headers,
            body=callback.body,
            received_at=datetime.fromtimestamp(callback.received_at, UTC),
            query=callback.query,
            client_ip=callback.client_ip,
            verify=False,
        )
        result = self.normalize(inbound, verify=False)
        if isinstance(result, Ignored):
            return result
        return await self.accept(inbound, result)

    async def _quarantine(self, inbound: Inbound, reason: str) -> Quarantined:
        callback = QuarantinedCallback(
            id=self._ids("qcb"),
            source=inbound.source,
            provider=inbound.config.provider,
            received_at=inbound.received_at.timestamp(),
            reason=reason,
            body=_redacted_body(inbound, self._max_depth),
            headers={k: v for k, v in inbound.headers.items() if not _secret_header(k)},
            query={k: v for k, v in (inbound.query or {}).items() if not is_sensitive_key(k)},
            client_ip=inbound.client_ip,
            updated_at=inbound.received_at.timestamp(),
        )
        await self._store.quarantine(callback)
        log.error(
            "quarantined %s from source %s: %s (relay reprocess %s)",
            callback.id,
            inbound.source,
            reason,
            callback.id,
        )
        return Quarantined(callback.id, reason)

    async def accept(self, inbound: Inbound, result: TaskEvent) -> Accepted:
        """Cross-check (where the source asks), route and store a normalized event."""
        token = inbound.config.token
        if token is not None and token.get_secret_value().encode() in inbound.body:
            # The body echoes our URL token somewhere: it must not be stored or forwarded.
            scrub_literal_in_place(result.raw, token.get_secret_value())
        if inbound.config.verify == "fetch":
            if self._crosscheck is None:
                raise UpstreamUnavailableError("cross-checks are not available in this process")
            provider = self._rulebook.providers[inbound.config.provider]
            result = await self._crosscheck.confirm(provider, inbound, result)
        result.labels = url_labels(inbound)
        if result.final:
            # Once the status is trusted (after any cross-check): one final event per task and
            # status, whatever the provider's retries change (GoAPI's body timestamp).
            result.dedupe_key = final_dedupe_key(result)
        targets = self.targets(result)
        deliveries = self.deliveries(result, targets)
        stored = await self._store.ingest(result, deliveries)
        if result.final and not stored.duplicate and self._metrics is not None:
            self._metrics.task(result.provider, result.model, result.status)
        if not stored.duplicate and self._rulebook.rules.inhibit:
            await self._inhibit(result)
        if not stored.duplicate and deliveries and self._on_stored is not None:
            self._on_stored()
        # The endpoint logs the callback's one line (relay.hooks).
        return Accepted(
            stored.event_id,
            stored.duplicate,
            0 if stored.duplicate else len(targets),
            result.task_id,
            result.status,
        )

    async def _inhibit(self, event: TaskEvent) -> None:
        """An alert an ``inhibit`` rule names opens that rule's silence for its duration
        (once per alert: the silence's id is the event's), before the alert is answered,
        so the failures that follow it are held."""
        labels = event.match_labels()
        received = event.received_at.timestamp()
        for index, rule in enumerate(self._rulebook.rules.inhibit):
            if not all(m.matches(labels) for m in rule.when):
                continue
            what = event.error.message if event.error and event.error.message else event.status
            silence = Silence(
                id=f"sil_{event.id.partition('_')[2]}_{index}",
                matchers=tuple(str(m) for m in rule.mute),
                starts_at=received,
                ends_at=received + rule.for_,
                comment=one_line(f"{event.provider} alert {event.task_id}: {what}")[:500],
                created_by=f"inhibit[{index}]",
                created_at=received,
            )
            if await self._store.add_silence(silence):
                log.warning(
                    "silence %s opened by %s (%s) until %s: %s",
                    silence.id,
                    event.id,
                    f"inhibit[{index}]",
                    datetime.fromtimestamp(silence.ends_at, UTC).isoformat(timespec="seconds"),
                    ", ".join(silence.matchers),
                )


def url_labels(inbound: Inbound) -> dict[str, str]:
    """The labels the source declares, from the hook URL's query string. The provider sends
    back the URL we registered, so it is as trusted as the token; a value its rule refuses
    (or a required label missing) is a PayloadError. Other keys are ignored (and not kept)."""
    rules = inbound.config.labels
    if not rules:
        return {}
    query = inbound.query or {}
    labels: dict[str, str] = {}
    for name, rule in rules.items():
        value = query.get(name)
        if value is None or value == "":
            if rule.required:
                raise PayloadError(f"label '{name}' missing from the callback URL")
            continue
        problem = rule.problem(name, value)
        if problem is not None:
            raise PayloadError(problem)
        labels[name] = value
    return labels


def final_dedupe_key(event: TaskEvent) -> str:
    """The dedupe key of a final event: provider, task and normalized status. Progress events
    keep their adapter's key, which tells one progress report from the next."""
    return f"{event.provider}:{event.task_id}:{event.status}"


# Headers that carry a credential, besides any whose name is a sensitive key.
_SECRET_HEADERS = frozenset({"webhook-signature", "cookie", "proxy-authorization"})


def _secret_header(name: str) -> bool:
    return name.lower() in _SECRET_HEADERS or is_sensitive_key(name)


def _secrets_of(inbound: Inbound) -> list[str]:
    config = inbound.config
    found = [s.get_secret_value() for s in (config.secret, config.token) if s is not None]
    if inbound.path_token:
        found.append(inbound.path_token)
    return sorted({s for s in found if s}, key=len, reverse=True)


def _reason(exc: Exception, inbound: Inbound) -> str:
    """What went wrong, short, on one line, with no secret of the source in it."""
    text = " ".join(str(exc).split())
    for secret in _secrets_of(inbound):
        text = text.replace(secret, "[redacted]")
    text = text[:200]  # after the scrub: a cut could leave part of a secret behind
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redacted_body(inbound: Inbound, max_depth: int) -> bytes:
    """The body as it came, with what redaction always removes: credential-named keys and the
    source's secrets wherever the body echoes them. Parsed afresh: the adapter that failed may
    have changed its copy half way."""
    payload = parse_json(inbound.body, max_depth)
    redact_in_place(payload)
    if isinstance(payload, dict | list):
        for secret in _secrets_of(inbound):
            scrub_literal_in_place(payload, secret)
    # ASCII escapes: a lone surrogate that the parser let through cannot break the encoding.
    return json.dumps(payload, separators=(",", ":")).encode()


def _allowed(client_ip: str | None, networks: list[str]) -> bool:
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)
