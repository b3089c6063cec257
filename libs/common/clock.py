"""Time sources: a live clock and a fake one that tests move by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for timestamps and monotonic time for intervals, both in int ns."""

    def time_ns(self) -> int:
        """Nanoseconds since the Unix epoch."""
        ...

    def monotonic_ns(self) -> int:
        """CLOCK_MONOTONIC nanoseconds: comparable across processes on one host."""
        ...


class LiveClock:
    """The system clocks."""

    def time_ns(self) -> int:
        """Nanoseconds since the Unix epoch."""
        return time.time_ns()

    def monotonic_ns(self) -> int:
        """CLOCK_MONOTONIC nanoseconds (system-wide on Linux, so usable across processes)."""
        return time.monotonic_ns()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._wall_ns = start_ns
        self._mono_ns = 1_000_000_000

    def time_ns(self) -> int:
        """The fake wall time."""
        return self._wall_ns

    def monotonic_ns(self) -> int:
        """The fake monotonic time."""
        return self._mono_ns

    def advance_ms(self, ms: float) -> None:
        """Move both clocks forward."""
        step = int(ms * 1_000_000)
        self._wall_ns += step
        self._mono_ns += step
