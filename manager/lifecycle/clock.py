"""The clock a project run measures its waits with: the system's, or one a test injects.

Only waits go through it (timeouts, grace periods, retry intervals, polling sleeps); the instants
stored on records stay wall-clock time. ``tests/lifecycle_fakes.py`` has a clock that runs faster,
so restart limits and outage handling are checked in seconds.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
