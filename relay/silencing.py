"""What holds a delivery instead of sending it (README: Silences): an active silence whose
matchers all hold for the event, or a mute window of its route. Held deliveries are stored as
``silenced``, with what held them, and sent only when replayed or released.

The dispatcher asks before every send, so the active silences are read from the store once per
claim round (a small table), not once per delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from relay.events import TaskEvent
from relay.routing.matchers import Matcher, parse_matchers
from relay.routing.quiet import MuteTime
from relay.store.base import Silence, Store

log = logging.getLogger("relay.silences")

# What a route's mute window holds deliveries as, ``mute:<route number, from 1>`` (one holder
# per route, released together).
MUTE_PREFIX = "mute:"


@dataclass(frozen=True)
class Hold:
    """Why a delivery is held: its holder (a silence's id, or ``mute:<route>``) and a reason
    for people."""

    held_by: str
    reason: str


def compile_matchers(texts: Sequence[str]) -> list[Matcher]:
    """A silence's matchers, as stored (each one matcher's text). ValueError if one is bad."""
    out: list[Matcher] = []
    for text in texts:
        out.extend(parse_matchers(text))
    return out


class Silencer:
    """The silences in force, refreshed from the store, and the routes' mute windows."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._active: list[tuple[Silence, list[Matcher]]] = []
        self._seen: set[str] = set()

    async def refresh(self) -> None:
        """Read the silences in force now. A silence that ended since the last refresh is
        logged once, with what it holds (those deliveries wait for a release or a replay)."""
        now = self._clock()
        silences = await self._store.list_silences(now)
        active: list[tuple[Silence, list[Matcher]]] = []
        for silence in silences:
            if not silence.active(now):
                continue
            try:
                active.append((silence, compile_matchers(silence.matchers)))
            except ValueError:
                # Checked when it was made; a later relay's stricter syntax skips it.
                log.error("silence %s: unreadable matchers %s", silence.id, silence.matchers)
        ended = self._seen - {s.id for s, _ in active}
        self._active = active
        self._seen = {s.id for s, _ in active}
        if ended:
            held = await self._store.held_counts()
            for silence_id in sorted(ended):
                count = held.get(silence_id, 0)
                log.warning(
                    "silence %s ended: %d %s held by it (send them with "
                    "`relay silence release %s`, or leave them)",
                    silence_id,
                    count,
                    "delivery" if count == 1 else "deliveries",
                    silence_id,
                )

    def may_hold(self, route: int, mutes: Mapping[int, Sequence[MuteTime]]) -> bool:
        """Whether anything could hold a delivery through ``route``: a silence in force
        (as of the last refresh) or a mute window of the route. False: ``hold`` is None."""
        return bool(self._active) or bool(mutes.get(route))

    def hold(
        self, event: TaskEvent, route: int, mutes: Mapping[int, Sequence[MuteTime]]
    ) -> Hold | None:
        """What holds a delivery of ``event`` through ``route`` now, or None: send it."""
        now = self._clock()
        if self._active:
            labels = event.match_labels()
            for silence, matchers in self._active:
                if silence.active(now) and all(m.matches(labels) for m in matchers):
                    why = f"silenced by {silence.id}"
                    return Hold(silence.id, f"{why}: {silence.comment}" if silence.comment else why)
        for window in mutes.get(route, ()):
            if window.covers(now):
                # Routes are numbered from 1 where people see them (the admin API's `route`).
                number = route + 1
                why = f"muted by route {number}'s mute_times ({window.describe()})"
                return Hold(f"{MUTE_PREFIX}{number}", why)
        return None
