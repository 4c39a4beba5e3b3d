"""Clocks: real time, scaled real time (demos), and a virtual clock (simulation and tests).

On a virtual clock nothing advances time but the engine itself: whoever waits on a
migration drives the supervisor, which jumps the clock to the next thing that is due.
A thousand simulated migrations therefore take seconds of real time, and a test that
stops reading events freezes the simulated world exactly where it is.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "RealClock", "ScaledClock", "VirtualClock"]

# 2026-01-01T00:00:00Z: virtual records carry plausible, reproducible timestamps.
_VIRTUAL_EPOCH = 1_767_225_600.0


class Clock(Protocol):
    @property
    def virtual(self) -> bool:
        """True when only the engine advances this clock."""

    def now(self) -> float:
        """Monotonic seconds, used for all scheduling."""

    def time(self) -> float:
        """Seconds since the epoch, for records."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` of this clock's time for ``event`` (real clocks only)."""


class RealClock:
    virtual = False

    def now(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class ScaledClock:
    """Real time running ``speed`` times faster: a simulated 60 s migration shown in 6 s."""

    virtual = False

    def __init__(self, speed: float) -> None:
        if not speed > 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._m0 = time.monotonic()
        self._t0 = time.time()

    def now(self) -> float:
        return (time.monotonic() - self._m0) * self.speed

    def time(self) -> float:
        return self._t0 + self.now()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds) / self.speed)


class VirtualClock:
    virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def time(self) -> float:
        return _VIRTUAL_EPOCH + self._now

    def advance_to(self, t: float) -> None:
        self._now = max(self._now, t)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        raise RuntimeError("a virtual clock is driven by the engine, never waited on")
