"""Clocks are injected, so one scheduler runs in real time and in simulated time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything with ``now()`` in seconds."""

    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time (``time.time()``), for the live scheduler."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to: tests and the simulator step it."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError(f"time cannot go back from {self._now} to {when}")
        self._now = float(when)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)
