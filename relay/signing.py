"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign outbound bodies."""

from __future__ import annotations

import base64
import hashlib
import hmac

from pydantic import SecretStr

PREFIX = "whsec_"


def decode_secret(secret: SecretStr) -> bytes:
    """The key bytes of a ``whsec_...`` secret. Raises ValueError (without the value) if bad."""
    value = secret.get_secret_value()
    if not value.startswith(PREFIX):
        raise ValueError("webhook secret must start with whsec_")
    try:
        return base64.b64decode(value[len(PREFIX) :], validate=True)
    except ValueError:
        raise ValueError("webhook secret is not valid base64 after whsec_") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; without a key, only id and timestamp."""
    out = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        out["webhook-signature"] = sign(key, msg_id, timestamp, body)
    return out
