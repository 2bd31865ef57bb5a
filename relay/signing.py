"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign outbound bodies and
verify inbound ones."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence

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
    digest = hmac.new(key, _signed_content(msg_id, str(timestamp), body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def secret_problems(secret: SecretStr) -> list[str]:
    """Every problem of a space-separated list of ``whsec_`` secrets (several during a key
    rotation), each naming which secret when there are several, never its value."""
    parts = secret.get_secret_value().split()
    if not parts:
        return ["holds no whsec_ secret"]
    problems: list[str] = []
    for index, part in enumerate(parts, 1):
        where = f" (secret {index} of {len(parts)})" if len(parts) > 1 else ""
        try:
            key = decode_secret(SecretStr(part))
        except ValueError as exc:
            problems.append(f"{exc}{where}")
            continue
        if not key:
            # An empty HMAC key would let anyone sign.
            problems.append(f"webhook secret is empty after whsec_{where}")
    return problems


def decode_secrets(secret: SecretStr) -> list[bytes]:
    """The keys of a space-separated list of ``whsec_`` secrets. Raises ValueError with the
    first of ``secret_problems`` if any is bad."""
    problems = secret_problems(secret)
    if problems:
        raise ValueError(problems[0])
    return [decode_secret(SecretStr(part)) for part in secret.get_secret_value().split()]


def headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, with one ``v1`` signature per key (space-separated,
    so a receiver holding any one of the keys verifies it); without keys, id and timestamp."""
    out = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if keys:
        out["webhook-signature"] = " ".join(sign(k, msg_id, timestamp, body) for k in keys)
    return out


class SignatureError(ValueError):
    """A Standard Webhooks request that does not verify. The message is the reason, and never
    contains a key or a signature."""


# The timestamp is unix seconds as plain ASCII digits. Capped at 15 digits: int() refuses very
# long digit strings (a ValueError we must not leak), and no real clock needs more.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def verify(
    keys: Sequence[bytes],
    msg_id: str,
    timestamp: str,
    signature_header: str,
    body: bytes,
    now: float,
    tolerance: float,
) -> None:
    """Check a Standard Webhooks signature over the raw ``body``; return only if it holds.

    ``keys`` are every key currently accepted (several during a key rotation); the
    ``webhook-signature`` header is a space-separated list of ``v1,<base64>`` entries and one
    matching entry is enough. Entries of other versions, and malformed ones, are skipped. The
    timestamp must be within ``tolerance`` seconds of ``now`` in either direction, and is checked
    before any HMAC is computed. Every failure, whatever the header holds, is a SignatureError.
    """
    if not msg_id:
        raise SignatureError("webhook-id header missing")
    if not timestamp:
        raise SignatureError("webhook-timestamp header missing")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("webhook-timestamp: not an integer unix time in seconds")
    sent = int(timestamp)
    window = f"outside the {tolerance:g} s replay window"
    # Both directions: an old request may be a replay, a future one a clock we should not trust.
    if sent < now - tolerance:
        raise SignatureError(f"webhook-timestamp {sent} is too old ({window})")
    if sent > now + tolerance:
        raise SignatureError(f"webhook-timestamp {sent} is in the future ({window})")
    if not signature_header:
        raise SignatureError("webhook-signature header missing")
    given = _v1_signatures(signature_header)
    if not given:
        raise SignatureError("webhook-signature: no valid v1 signature in the header")
    if not keys:
        raise SignatureError("no key to verify the signature with")
    # The timestamp is signed as sent (it is plain digits, so this is the text the sender used).
    signed = _signed_content(msg_id, timestamp, body)
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        # Every entry is compared, even after a match: the time taken says nothing about which.
        if any([hmac.compare_digest(expected, candidate) for candidate in given]):
            return
    raise SignatureError("webhook-signature: no signature matches")


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` entries of a ``webhook-signature`` header; anything else is skipped."""
    found: list[bytes] = []
    for entry in header.split(" "):
        version, comma, encoded = entry.partition(",")
        if not comma or version != "v1" or not encoded:
            continue
        try:
            # validate=True: stray characters make the entry invalid instead of being dropped.
            found.append(base64.b64decode(encoded, validate=True))
        except ValueError:  # binascii.Error, or non-ASCII text
            continue
    return found


def _signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    # surrogatepass: an id decoded from odd bytes must fail to match, not raise.
    return f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
