"""Our ids: a prefix, then time-ordered hex, so ids sort by creation and read at a glance."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable


class IdFactory:
    """``evt_``/``dlv_`` ids: 48 bits of milliseconds then 80 random bits.

    The random part comes from a generator seeded once from the OS, because asking the OS for
    fresh bytes twice per callback was a measurable share of the ingest path; ids only need to
    be unique, not unpredictable.
    """

    def __init__(
        self, clock: Callable[[], float] = time.time, rng: random.Random | None = None
    ) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random(os.urandom(32))

    def __call__(self, prefix: str) -> str:
        millis = int(self._clock() * 1000) & 0xFFFF_FFFF_FFFF
        # One 128-bit number, the 12 hex digits of the time then the 20 of the random part.
        return f"{prefix}_{(millis << 80) | self._rng.getrandbits(80):032x}"
