"""Silences, as the admin API and ``relay silence`` make, list and end them (README: Silences).

A silence holds the deliveries of matching events as ``silenced`` from its start to its end;
ending it (or its end passing) sends nothing by itself: ``release`` does, for what it held.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.events import LABEL_NAMES
from relay.ids import IdFactory
from relay.routing.durations import parse_duration
from relay.routing.model import Rules
from relay.silencing import compile_matchers
from relay.store.base import Silence, Store

# The longest silence: one meant for ever is a rules change (a route that drops), not this.
MAX_SILENCE = 90 * 86400.0
MAX_COMMENT = 500


class SilenceError(ValueError):
    """A silence that cannot be made: what is wrong with it, for the operator."""


@dataclass(frozen=True)
class SilenceView:
    """A silence with what it holds now."""

    silence: Silence
    held: int

    def state(self, now: float) -> str:
        """active, pending (starts later) or ended."""
        if self.silence.ends_at <= now:
            return "ended"
        return "active" if self.silence.starts_at <= now else "pending"


def check_matchers(texts: list[str], rules: Rules) -> tuple[str, ...]:
    """The matchers as stored, one per item; SilenceError naming the bad one or an unknown
    label (a typo would silence nothing and nobody would notice)."""
    if not texts:
        raise SilenceError("give at least one matcher, like 'provider=\"goapi\"'")
    declared = {name for cfg in rules.sources.values() for name in cfg.labels}
    out: list[str] = []
    for text in texts:
        try:
            matchers = compile_matchers([text])
        except ValueError as exc:
            raise SilenceError(f"matcher {text!r}: {exc}") from None
        for m in matchers:
            if m.name not in LABEL_NAMES and m.name not in declared:
                known = ", ".join(sorted(LABEL_NAMES | declared))
                raise SilenceError(f"matcher {text!r}: unknown label '{m.name}' (valid: {known})")
            out.append(str(m))
    return tuple(out)


async def create(
    store: Store,
    rules: Rules,
    *,
    matchers: list[str],
    duration: str | None,
    ends_at: float | None,
    starts_at: float | None,
    comment: str,
    created_by: str,
    now: float,
    ids: IdFactory,
) -> Silence:
    """Make a silence from now (or ``starts_at``) for ``duration`` or until ``ends_at``."""
    stored = check_matchers(matchers, rules)
    start = now if starts_at is None else starts_at
    if not now - MAX_SILENCE <= start <= now + MAX_SILENCE:
        raise SilenceError("starts_at: within 90 days of now")
    if (duration is None) == (ends_at is None):
        raise SilenceError("give how long it lasts (--for 2h) or when it ends, not both")
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise SilenceError(f"duration: {exc}") from None
        end = start + seconds
    else:
        assert ends_at is not None
        end = ends_at
    if end <= max(start, now):
        raise SilenceError("it would end before it starts (or in the past)")
    if end - start > MAX_SILENCE:
        raise SilenceError("at most 90d: silencing for ever is a change of the rules")
    if len(comment) > MAX_COMMENT or any(ord(ch) < 32 for ch in comment):
        raise SilenceError(f"comment: one line of at most {MAX_COMMENT} characters")
    silence = Silence(
        ids("sil"), stored, start, end, comment.strip(), created_by.strip() or "admin", now
    )
    await store.add_silence(silence)
    return silence


async def listing(store: Store, now: float, *, include_ended: bool) -> list[SilenceView]:
    held = await store.held_counts()
    silences = await store.list_silences(now, include_ended=include_ended)
    return [SilenceView(s, held.get(s.id, 0)) for s in silences]


async def view(store: Store, silence_id: str) -> SilenceView | None:
    silence = await store.get_silence(silence_id)
    if silence is None:
        return None
    return SilenceView(silence, (await store.held_counts()).get(silence_id, 0))


async def expire(store: Store, silence_id: str, now: float) -> SilenceView | None:
    """End it now (if it has not ended). None if there is no such silence."""
    await store.expire_silence(silence_id, now)
    return await view(store, silence_id)


async def release(store: Store, held_by: str, now: float) -> int:
    """Send what ``held_by`` (a silence's id, or ``mute:<route>``) holds: pending, due now."""
    return await store.release_held(held_by, now)
