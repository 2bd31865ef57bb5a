"""The refused-request log: why a callback did not arrive (README: "Refused requests").

The hook endpoint ``note``s every refusal (401, 400, 404, 405, 413, the 503s) without waiting:
the note goes into a bounded buffer, and when the buffer is full it is dropped and counted, so
a hostile client's flood costs ingest nothing and cannot grow memory. ``run`` (a background
service of ``relay serve``) writes the buffer to the store in batches, where only the newest
``keep`` of each source stay. Everything shown is made safe on the way in: the path's URL token
is masked, the body cut to an excerpt with credential-named fields and the known secrets
redacted, and control characters escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from relay.admin.params import iso
from relay.bodies import parse_json
from relay.errors import PayloadError, StoreUnavailableError
from relay.escape import CONTROLS
from relay.providers.common import REDACTED, is_sensitive_key, redact_in_place
from relay.redaction import Secrets, mask_path
from relay.store.base import RejectedRequest, Store

log = logging.getLogger("relay.rejected")

# Notes waiting to be written: at most this many (older ones are never dropped for newer).
BUFFER_SIZE = 1000
# Characters of the body shown.
EXCERPT_CHARS = 1024
# Bytes of the body kept until written: enough for any body the excerpt shows whole; a JSON
# body that fits is parsed and redacted as JSON, a longer one redacted as text.
_KEPT_BYTES = 4 * EXCERPT_CHARS + 512
_PATH_CHARS = 300
_REASON_CHARS = 300
# Under a flood, at most one write to the store this often (seconds).
FLUSH_EVERY = 0.5

# A JSON member seen as text (in a body cut short): "key": "value" or "key": 123.
_JSON_MEMBER = re.compile(
    r'"(?P<name>[^"\\]{1,64})"(?P<sep>\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*(?:"|$)|-?[0-9][0-9.eE+-]*)'
)
# A form or query field: key=value.
_FORM_FIELD = re.compile(r"(?:^|(?<=[&\s;]))(?P<name>[A-Za-z0-9_.-]{1,64})=(?P<value>[^&\s;]*)")


class _Note(NamedTuple):
    received_at: float
    source: str
    client_ip: str | None
    path: str
    status: int
    reason: str
    body: bytes  # its first _KEPT_BYTES
    size: int  # the whole body's


def _redact_member(match: re.Match[str]) -> str:
    if is_sensitive_key(match["name"]):
        return f'"{match["name"]}"{match["sep"]}"{REDACTED}"'
    return match[0]


def _redact_field(match: re.Match[str]) -> str:
    if is_sensitive_key(match["name"]):
        return f"{match['name']}={REDACTED}"
    return match[0]


def _trim_partial_secret(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` (cut from a longer body) without a tail that begins one of ``secrets``."""
    cut = len(text)
    for secret in secrets:
        for length in range(min(len(secret) - 1, len(text)), 0, -1):
            if text.endswith(secret[:length]):
                cut = min(cut, len(text) - length)
                break
    return text[:cut]


def excerpt(
    body: bytes,
    size: int,
    secrets: tuple[str, ...] = (),
    *,
    max_depth: int = 64,
    limit: int = EXCERPT_CHARS,
) -> str:
    """What may be shown of a refused body, ``body`` being its first bytes and ``size`` its
    whole length: at most ``limit`` characters, credential-named fields and ``secrets``
    redacted, control characters escaped, and a note of the size when it is cut."""
    if not body:
        return ""
    text: str | None = None
    if len(body) == size:
        try:
            payload = parse_json(body, max_depth)
        except PayloadError:
            pass
        else:
            redact_in_place(payload)
            text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if text is None:
        text = body.decode("utf-8", "replace")
        if len(body) < size:
            text = _trim_partial_secret(text, secrets)
        text = _FORM_FIELD.sub(_redact_field, _JSON_MEMBER.sub(_redact_member, text))
    for secret in secrets:  # longest first
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = text.translate(CONTROLS)
    if len(text) > limit or len(body) < size:
        text = f"{text[:limit]}… ({size} bytes)"
    return text


class RejectedLog:
    """Refused requests, noted by the endpoint and written to ``store`` by ``run``.

    ``keep``: how many of each source the store keeps (0: none are kept). ``dropped``
    counts notes that found the buffer full or could not be written."""

    def __init__(
        self,
        store: Store,
        *,
        keep: int,
        secrets: Secrets | None = None,
        clock: Callable[[], float] = time.time,
        capacity: int = BUFFER_SIZE,
        max_depth: int = 64,
        flush_every: float = FLUSH_EVERY,
    ) -> None:
        self._store = store
        self._keep = keep
        self._secrets = secrets if secrets is not None else Secrets()
        self._clock = clock
        self._capacity = capacity if keep > 0 else 0
        self._max_depth = max_depth
        self._flush_every = flush_every
        self._buffer: list[_Note] = []
        self._waiting = asyncio.Event()
        self.dropped = 0
        self._dropped_told = 0

    def note(
        self,
        source: str,
        client_ip: str | None,
        path: str,
        status: int,
        reason: str,
        body: bytes = b"",
    ) -> None:
        """Keep one refusal for the next write; never waits, never raises. ``path`` and
        ``body`` as received: they are made safe when written."""
        if len(self._buffer) >= self._capacity:
            if self._keep > 0:
                self.dropped += 1
            return
        self._buffer.append(
            _Note(
                self._clock(),
                source,
                client_ip,
                path[: _PATH_CHARS * 2],
                status,
                reason[: _REASON_CHARS * 2],
                body[:_KEPT_BYTES],
                len(body),
            )
        )
        self._waiting.set()

    @property
    def waiting(self) -> int:
        """Notes not written yet."""
        return len(self._buffer)

    def record(self, note: _Note) -> RejectedRequest:
        """A note made safe to store and show."""
        secrets = self._secrets.values()
        scrub = self._secrets.scrub
        return RejectedRequest(
            source=note.source,
            received_at=note.received_at,
            client_ip=note.client_ip,
            # Control characters escaped like the reason's: the admin API and `relay
            # rejected --json` show the path as stored (percent-decoded, CR/LF and all).
            path=scrub(mask_path(note.path)).translate(CONTROLS)[:_PATH_CHARS],
            status=note.status,
            reason=scrub(" ".join(note.reason.split()))[:_REASON_CHARS].translate(CONTROLS),
            excerpt=excerpt(note.body, note.size, secrets, max_depth=self._max_depth),
        )

    def _take(self) -> list[RejectedRequest]:
        notes, self._buffer = self._buffer, []
        # The store keeps only the newest ``keep`` of a source: do not write the rest.
        by_source: dict[str, list[_Note]] = {}
        for note in notes:
            by_source.setdefault(note.source, []).append(note)
        kept = [n for group in by_source.values() for n in group[-self._keep :]]
        kept.sort(key=lambda n: n.received_at)
        return [self.record(n) for n in kept]

    async def flush(self) -> int:
        """Write what is waiting; how many were written. A store that fails loses this batch
        (counted in ``dropped``), never the process."""
        if self.dropped > self._dropped_told:
            log.warning(
                "refused-request log: %d refused request(s) not kept (buffer full)",
                self.dropped - self._dropped_told,
                extra={"dropped": self.dropped},
            )
            self._dropped_told = self.dropped
        if not self._buffer:
            return 0
        batch = self._take()
        try:
            await self._store.record_rejected(batch, self._keep)
        except StoreUnavailableError as exc:
            log.warning("refused-request log: %d not kept: %s", len(batch), exc)
        except Exception:
            log.exception("refused-request log: %d not kept", len(batch))
        else:
            return len(batch)
        self.dropped += len(batch)
        self._dropped_told = self.dropped
        return 0

    async def run(self, stop: asyncio.Event) -> None:
        """Write notes as they come, at most one batch every ``flush_every`` seconds, until
        ``stop``; then write what is left."""
        while not stop.is_set():
            waiters = {
                asyncio.ensure_future(self._waiting.wait()),
                asyncio.ensure_future(stop.wait()),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            self._waiting.clear()
            await self.flush()
            # A flood of refusals: one write a while, whatever their rate.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._flush_every)
        await self.flush()


def rejected_json(request: RejectedRequest) -> dict[str, Any]:
    """One refused request as ``relay rejected --json`` shows it: the fields of
    ``GET /admin/rejected`` (relay.admin.schemas.Rejected), ``received_at`` in ISO 8601."""
    return {
        "source": request.source,
        "received_at": iso(request.received_at),
        "client_ip": request.client_ip,
        "path": request.path,
        "status": request.status,
        "reason": request.reason,
        "excerpt": request.excerpt,
    }
