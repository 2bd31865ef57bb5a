"""Circuit breakers: a destination that fails again and again is paused, probed, resumed.

Per destination: after ``failures`` transient failures in a row the breaker *opens*: the
dispatcher claims none of its deliveries (they wait, pending, no attempt spent) for ``pause``.
Then it is *half open*: one delivery goes as a probe (one per store, through ``pace``); its
success *closes* the breaker, its failure re-opens it for twice the pause, up to
``max_pause``. Open/closed is shared through the store's channel state, so every worker pauses
together and ``relay deliveries`` and ``/readyz`` can show it; each worker reads it at most
once per ``refresh_seconds``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from relay.errors import StoreUnavailableError
from relay.store.base import ChannelState

log = logging.getLogger("relay.breaker")

BreakerState = Literal["closed", "open", "half_open"]
# Where the shared state lives: (destination, STATE_KEY) of the store's channel state.
STATE_KEY = "breaker"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a destination's breaker opens and for how long (the rules' ``breaker:``)."""

    failures: int = 5
    pause: float = 30.0
    max_pause: float = 300.0


class Transitions(Protocol):
    """Where state changes are counted (``relay.metrics.Metrics``)."""

    def breaker_transition(self, destination: str, to: str) -> None:
        """This process moved ``destination``'s breaker to ``to``."""

    def breaker_paused(self, destination: str, paused: bool) -> None:
        """Whether ``destination`` is paused (open or half open), whoever changed it."""


@dataclass(frozen=True)
class BreakerView:
    """One destination's breaker as shown by ``/readyz`` and ``relay deliveries``."""

    state: BreakerState
    until: float | None = None
    reason: str = ""

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"state": self.state}
        if self.until is not None:
            out["until"] = iso(self.until)
        if self.reason:
            out["reason"] = self.reason
        return out


def view(saved: Mapping[str, Any] | None, now: float) -> BreakerView:
    """What a stored breaker state means at ``now``: open until ``until``, then half open."""
    if not saved or saved.get("state") != "open":
        return BreakerView("closed")
    until = float(saved.get("until", 0.0))
    reason = str(saved.get("reason", ""))
    return BreakerView("open" if now < until else "half_open", until, reason)


async def read_views(
    state: ChannelState, destinations: Iterable[str], now: float
) -> dict[str, BreakerView]:
    """Every listed destination's breaker, read from the store (closed where none is saved)."""
    return {name: view(await state.get_state(name, STATE_KEY), now) for name in destinations}


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Breaker:
    """This process's view of one destination's breaker."""

    opened: bool = False
    until: float = 0.0
    pause: float = 0.0
    reason: str = ""
    # Transient failures in a row seen by this process.
    failures: int = 0
    # This process holds the probe of the current half-open period.
    probing: bool = False
    # The shared state's version (its "at") last adopted or written, and when it was read.
    version: float = -math.inf
    read_at: float = -math.inf

    def state(self, now: float) -> BreakerState:
        if not self.opened:
            return "closed"
        return "open" if now < self.until else "half_open"


class Breakers:
    """Every destination's breaker in one process, shared with the others through ``state``."""

    def __init__(
        self,
        state: ChannelState,
        *,
        clock: Callable[[], float],
        metrics: Transitions | None = None,
        refresh_seconds: float = 1.0,
    ) -> None:
        self._state = state
        self._clock = clock
        self._metrics = metrics
        self._refresh = refresh_seconds
        self._breakers: dict[str, _Breaker] = {}

    def _get(self, destination: str) -> _Breaker:
        return self._breakers.setdefault(destination, _Breaker())

    def state(self, destination: str) -> BreakerState:
        """The breaker's state as this process last knew it."""
        return self._get(destination).state(self._clock())

    async def sync(self, policies: Mapping[str, BreakerPolicy]) -> None:
        """Adopt what other processes saved, at most once per refresh interval each."""
        now = self._clock()
        for name in policies:
            b = self._get(name)
            if now - b.read_at < self._refresh:
                continue
            b.read_at = now
            try:
                saved = await self._state.get_state(name, STATE_KEY)
            except StoreUnavailableError as exc:
                log.warning("breaker: could not read %s's state: %s", name, exc)
                continue
            if not saved or float(saved.get("at", -math.inf)) <= b.version:
                continue
            b.version = float(saved["at"])
            was = b.state(now)
            b.opened = saved.get("state") == "open"
            b.until = float(saved.get("until", 0.0))
            b.pause = float(saved.get("pause", 0.0))
            b.reason = str(saved.get("reason", ""))
            if not b.opened:
                b.failures, b.probing = 0, False
            if was != b.state(now) and self._metrics is not None:
                self._metrics.breaker_paused(name, b.opened)

    async def blocked(self, destination: str, policy: BreakerPolicy | None) -> bool:
        """True while ``destination``'s deliveries must not be claimed. Half open, the first
        process to ask takes the probe (False: claim one delivery); the others are blocked."""
        if policy is None:
            return False
        b = self._get(destination)
        now = self._clock()
        state = b.state(now)
        if state == "closed" or b.probing:
            return False
        if state == "open":
            return True
        # One probe per store per pause: a prober that dies is replaced after one pause.
        try:
            wait = await self._state.pace(f"breaker:{destination}", b.pause or policy.pause, now)
        except StoreUnavailableError:
            return True
        if wait > 0.0:
            return True
        b.probing = True
        self._changed(destination, "open", "half_open", "pause over: probing", None)
        return False

    def limit(self, destination: str) -> int | None:
        """At most this many sends at once while the breaker is not closed (the probe)."""
        b = self._breakers.get(destination)
        return 1 if b is not None and b.opened else None

    def wake_at(self) -> float | None:
        """The earliest moment an open breaker turns half open (the dispatcher's sleep cap)."""
        now = self._clock()
        times = [b.until for b in self._breakers.values() if b.opened and b.until > now]
        return min(times, default=None)

    async def record(
        self, destination: str, policy: BreakerPolicy | None, result: Literal["ok", "failed", None]
    ) -> None:
        """One attempt's result: ``ok`` (delivered), ``failed`` (a transient failure) or None
        (paced or refused for good: the destination answered, neither counts)."""
        if policy is None:
            return
        b = self._get(destination)
        now = self._clock()
        if result == "ok":
            b.failures = 0
            if b.opened:
                was = b.state(now)
                b.opened, b.probing, b.pause = False, False, 0.0
                await self._save(destination, b, now, "probe delivered")
                self._changed(destination, was, "closed", "probe delivered", None)
            return
        if result is None:
            # The probe proved nothing either way: the next one may go.
            b.probing = False
            return
        b.failures += 1
        if b.opened and b.probing:
            reason = "probe failed"
            pause = min(max(b.pause, policy.pause) * 2, policy.max_pause)
        elif not b.opened and b.failures >= policy.failures:
            reason = f"{b.failures} failures in a row"
            pause = policy.pause
        else:
            return
        was = b.state(now)
        b.opened, b.probing, b.pause, b.until, b.reason = True, False, pause, now + pause, reason
        await self._save(destination, b, now, reason)
        self._changed(destination, was, "open", reason, b.until)

    async def _save(self, destination: str, b: _Breaker, now: float, reason: str) -> None:
        value: dict[str, Any] = {
            "state": "open" if b.opened else "closed",
            "until": b.until,
            "pause": b.pause,
            "reason": reason,
            "at": now,
        }
        b.version = now
        try:
            await self._state.put_state(destination, STATE_KEY, value, now)
        except StoreUnavailableError as exc:
            # This process still pauses; the others find out from their own failures.
            log.warning("breaker: could not save %s's state: %s", destination, exc)

    def _changed(
        self, destination: str, was: str, to: str, reason: str, until: float | None
    ) -> None:
        log.warning(
            "breaker %s: %s -> %s (%s)%s",
            destination,
            was,
            to,
            reason,
            f", paused until {iso(until)}" if until is not None else "",
            extra={
                "destination": destination,
                "breaker_from": was,
                "breaker_to": to,
                "reason": reason,
                **({"until": iso(until)} if until is not None else {}),
            },
        )
        if self._metrics is not None:
            self._metrics.breaker_transition(destination, to)
            self._metrics.breaker_paused(destination, to != "closed")
