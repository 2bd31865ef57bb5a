"""Webhook destination: POST JSON signed with Standard Webhooks headers (aiohttp)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import UTC, datetime

import aiohttp

from relay import __version__, signing
from relay.channels.base import ChannelDeps, Delivery, http_failure, parse_retry_after
from relay.digest_view import DigestView
from relay.errors import PermanentDeliveryError, TransientDeliveryError
from relay.events import STATUSES
from relay.render.digest import digest_json
from relay.routing.model import WebhookDestination
from relay.templating import context, destination_templates

# Standard Webhooks headers are ours to set; a destination's extra headers cannot replace them.
_RESERVED = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"})


def render_body(delivery: Delivery, mode: str, *, include_raw: bool = True) -> bytes:
    """The request body: the Standard Webhooks envelope of the event (with or without the
    provider's body in ``data.raw``), or the provider's original body (already redacted when
    it was received)."""
    stored = delivery.stored_event
    if mode != "original" and include_raw and stored is not None:
        # The event's JSON as the store keeps it (pydantic's, written once at ingest) is the
        # envelope's `data` as it is: no parse, no dump.
        stamp = _stamp(datetime.fromisoformat(stored.field("received_at")))
        return _head(stored.field("status"), stamp) + stored.json.encode() + b"}"
    event = delivery.event
    if mode == "original":
        return json.dumps(event.raw, separators=(",", ":")).encode()
    # Assembled around pydantic's own JSON of the event: a quarter of the cost of dumping it to
    # Python values and encoding those again (the send path's largest share, measured).
    data = event.model_dump_json(exclude=None if include_raw else {"raw"}).encode()
    return _head(event.status, _stamp(event.received_at)) + data + b"}"


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _head(status: str, stamp: str) -> bytes:
    """The envelope up to its `data` value."""
    if status in STATUSES:
        # Nothing to escape in either (one of our statuses; the stamp is an ISO time that
        # _stamp wrote): no encoder call.
        return f'{{"type":"task.{status}","timestamp":"{stamp}","data":'.encode()
    head = json.dumps({"type": f"task.{status}", "timestamp": stamp}, separators=(",", ":"))
    return head[:-1].encode() + b',"data":'


class WebhookChannel:
    """Sends one delivery as one POST. ``webhook-id`` is the delivery id, the same on every
    retry, so receivers can dedupe."""

    def __init__(self, name: str, config: WebhookDestination, deps: ChannelDeps) -> None:
        self.name = name
        self._config = config
        self._deps = deps
        self._keys = signing.decode_secrets(config.secret) if config.secret else []
        self._extra = {k: v for k, v in config.headers.items() if k.lower() not in _RESERVED}
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._templates = destination_templates(name, config)

    def _request(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str], float]:
        """The URL, body and headers of the request (templates rendered), and when it is."""
        url = self._config.url
        template = self._templates.for_delivery(delivery.template).body
        templated = template is not None or self._templates.url_rest is not None
        values = context(delivery.event, self._deps.names) if templated else {}
        url = self._templates.render_url(url, values)
        if template is not None:
            body = template.render(values)
        else:
            body = render_body(delivery, self._config.body, include_raw=self._config.include_raw)
        now = self._deps.clock()
        headers = {
            **self._extra,
            "content-type": "application/json",
            "user-agent": f"relay/{__version__}",
            **signing.headers(self._keys, delivery.id, int(now), body),
        }
        return url, body, headers, now

    def render(self, delivery: Delivery) -> str:
        """The request as it would go out now: line, headers (signed as a send would sign
        them), then the body."""
        url, body, headers, _ = self._request(delivery)
        lines = [f"POST {url}", *(f"{k}: {v}" for k, v in headers.items()), ""]
        shown = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        return "\n".join(lines) + "\n" + shown

    # Digests: sent once, when the window closes.
    live = False

    async def send_digest(self, delivery: Delivery, view: DigestView) -> None:
        """POST the digest (``type: relay.digest``), signed like an event; ``webhook-id`` is
        the window's key, the same whichever delivery carries it."""
        url, _, _, now = self._request(delivery)
        body = json.dumps(digest_json(view), separators=(",", ":")).encode()
        headers = {
            **self._extra,
            "content-type": "application/json",
            "user-agent": f"relay/{__version__}",
            **signing.headers(self._keys, _digest_id(view.key), int(now), body),
        }
        await self._post(url, body, headers, now)

    async def send(self, delivery: Delivery) -> None:
        url, body, headers, now = self._request(delivery)
        await self._post(url, body, headers, now)

    async def _post(self, url: str, body: bytes, headers: dict[str, str], now: float) -> None:
        try:
            async with self._deps.http.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if 200 <= response.status < 300:
                    return
                detail = (await response.content.read(200)).decode("utf-8", "replace").strip()
                if 300 <= response.status < 400:
                    location = response.headers.get("location", "")
                    raise PermanentDeliveryError(
                        f"HTTP {response.status}: redirects are not followed (to {location})"
                    )
                retry_after = parse_retry_after(response.headers.get("retry-after"), now)
                raise http_failure(response.status, detail, retry_after)
        except TimeoutError:
            raise TransientDeliveryError(f"timed out after {self._config.timeout:g} s") from None
        except aiohttp.InvalidURL as exc:
            raise PermanentDeliveryError(f"invalid URL: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            raise TransientDeliveryError(
                f"connection failed: {exc.host}:{exc.port}: {_os_reason(exc.os_error)}"
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise TransientDeliveryError(f"connection failed: {exc}") from None
        except aiohttp.ClientError as exc:
            raise TransientDeliveryError(f"HTTP error: {exc}") from None


def _digest_id(key: str) -> str:
    """A webhook-id from a window's key: ``dgst_`` and a digest of it (ids are ASCII tokens)."""
    return "dgst_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _os_reason(error: OSError) -> str:
    """A short reason: "connection refused", not "Connect call failed ('127.0.0.1', 9)"."""
    if not isinstance(error, socket.gaierror) and error.errno and error.errno > 0:
        return os.strerror(error.errno).lower()
    return (error.strerror or str(error)).lower()
