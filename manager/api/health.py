"""Dependency checks for ``GET /health`` that never keep a request waiting on a slow dependency.

A check (database ping, broker probe) runs in a background thread at most every
``interval_s``; requests read its last answer. Only the very first request waits, and
at most ``first_wait_s``. An answer older than ``stale_after_s`` (the check hangs) counts
as unhealthy, so a database that stops answering shows as degraded instead of making
every health probe (and the threads serving them) hang with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class CachedCheck:
    def __init__(self, name: str, check: Callable[[], bool], interval_s: float = 1.0,
                 stale_after_s: float = 10.0, first_wait_s: float = 2.0) -> None:  # fmt: skip
        self.name = name
        self._check = check
        self._interval_s = interval_s
        self._stale_after_s = stale_after_s
        self._first_wait_s = first_wait_s
        self._value: bool | None = None
        self._checked_at = 0.0  # monotonic time of the last answer
        self._started_at = 0.0  # monotonic time the running check began (0: none running)
        self._first_started = 0.0  # monotonic time of the very first check
        self._answered = threading.Event()
        self._lock = threading.Lock()

    def ok(self) -> bool:
        """The dependency's last known state; starts a fresh check when the last one is old."""
        now = time.monotonic()
        with self._lock:
            if not self._started_at and now - self._checked_at >= self._interval_s:
                self._started_at = now
                threading.Thread(target=self._refresh, name=f"health-{self.name}", daemon=True).start()
            first_started = self._first_started = self._first_started or now
        if self._value is None:  # no answer yet: wait for the first, together at most first_wait_s
            self._answered.wait(max(0.0, first_started + self._first_wait_s - now))
        with self._lock:
            if self._value is None or time.monotonic() - self._checked_at > self._stale_after_s:
                return False
            return self._value

    def _refresh(self) -> None:
        try:
            value = bool(self._check())
        except Exception as error:  # a check that raises says "unhealthy"
            log.warning("health check %s failed: %s", self.name, error)
            value = False
        with self._lock:
            self._value, self._checked_at, self._started_at = value, time.monotonic(), 0.0
        self._answered.set()
