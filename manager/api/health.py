"""Dependency checks for ``GET /health`` that never keep a request waiting on a slow dependency.

A check (database ping, broker probe) runs in a background thread at most every
``interval_s``; requests read its last answer. A request that finds no recent answer
(the first one, or the first after a quiet while) waits for the check it started, at
most ``first_wait_s``; none waits for a check that already hangs. Without an answer
from the last ``stale_after_s`` the dependency counts as down, so a database that stops
answering shows as degraded instead of making every health probe (and the threads
serving them) hang with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class CachedCheck:
    def __init__(
        self,
        name: str,
        check: Callable[[], bool],
        interval_s: float = 1.0,
        stale_after_s: float = 10.0,
        first_wait_s: float = 2.0,
    ) -> None:
        self.name = name
        self._check = check
        self._interval_s = interval_s
        self._stale_after_s = stale_after_s
        self._first_wait_s = first_wait_s
        self._value: bool | None = None
        self._checked_at = 0.0  # monotonic time of the last answer
        self._running_since = 0.0  # monotonic time the running check began (0: none running)
        self._changed = threading.Condition()

    def ok(self) -> bool:
        """The dependency's state from a recent check; starts a fresh check when the last one is old."""
        with self._changed:
            now = time.monotonic()
            if not self._running_since and now - self._checked_at >= self._interval_s:
                self._running_since = now
                threading.Thread(target=self._refresh, name=f"health-{self.name}", daemon=True).start()
            if not self._fresh() and now - self._running_since <= self._first_wait_s:
                # No recent answer (first request, or none for a while): wait briefly for this check,
                # but never for one that already hangs.
                self._changed.wait_for(self._fresh, timeout=self._first_wait_s - (now - self._running_since))
            return self._fresh() and bool(self._value)

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._checked_at <= self._stale_after_s

    def _refresh(self) -> None:
        try:
            value = bool(self._check())
        except Exception as error:  # a check that raises says "unhealthy"
            log.warning("health check %s failed: %s", self.name, error)
            value = False
        with self._changed:
            self._value, self._checked_at, self._running_since = value, time.monotonic(), 0.0
            self._changed.notify_all()
