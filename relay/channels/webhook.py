"""Webhook destination: POST JSON signed with Standard Webhooks headers (aiohttp)."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC

import aiohttp

from relay import __version__, signing
from relay.channels.base import ChannelDeps, Delivery, http_failure, parse_retry_after
from relay.errors import PermanentDeliveryError, TransientDeliveryError
from relay.routing.model import WebhookDestination

# Standard Webhooks headers are ours to set; a destination's extra headers cannot replace them.
_RESERVED = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"})


def render_body(delivery: Delivery, mode: str) -> bytes:
    """The request body: the Standard Webhooks envelope of the event, or the provider's
    original body (already redacted when it was received)."""
    event = delivery.event
    if mode == "original":
        return json.dumps(event.raw, separators=(",", ":")).encode()
    envelope = {
        "type": f"task.{event.status}",
        "timestamp": event.received_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": event.model_dump(mode="json"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


class WebhookChannel:
    """Sends one delivery as one POST. ``webhook-id`` is the delivery id, the same on every
    retry, so receivers can dedupe."""

    def __init__(self, name: str, config: WebhookDestination, deps: ChannelDeps) -> None:
        self.name = name
        self._config = config
        self._deps = deps
        self._key = signing.decode_secret(config.secret) if config.secret else None
        self._extra = {k: v for k, v in config.headers.items() if k.lower() not in _RESERVED}
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)

    def render(self, delivery: Delivery) -> str:
        body = json.loads(render_body(delivery, self._config.body))
        return f"POST {self._config.url}\n" + json.dumps(body, indent=2, ensure_ascii=False)

    async def send(self, delivery: Delivery) -> None:
        body = render_body(delivery, self._config.body)
        now = self._deps.clock()
        headers = {
            **self._extra,
            "content-type": "application/json",
            "user-agent": f"relay/{__version__}",
            **signing.headers(self._key, delivery.id, int(now), body),
        }
        try:
            async with self._deps.http.post(
                self._config.url,
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


def _os_reason(error: OSError) -> str:
    """A short reason: "connection refused", not "Connect call failed ('127.0.0.1', 9)"."""
    if not isinstance(error, socket.gaierror) and error.errno and error.errno > 0:
        return os.strerror(error.errno).lower()
    return (error.strerror or str(error)).lower()
