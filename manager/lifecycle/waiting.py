"""Small polling helpers shared by the phases."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests


def http_ok(url: str, timeout: float = 2.0, verify: bool | str = True) -> bool:
    """``url`` answers 200 (``verify``: requests' TLS verification, e.g. a CA file)."""
    try:
        return requests.get(url, timeout=timeout, verify=verify).status_code == 200
    except requests.RequestException:
        return False


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.5, check: Callable[[], None] | None = None
) -> bool:
    """Poll ``predicate`` until true or ``timeout``; ``check`` may raise to abort early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if check is not None:
            check()
        time.sleep(interval)
    return predicate()


QUIET_NOTE_S = 5.0  # a wait this long without any report deserves an event saying what is awaited
QUIET_REPEAT_S = 30.0  # and another after each further stretch this long


class QuietNotes:
    """When a wait without reports deserves an event: after ``first_s``, then every ``repeat_s`` more."""

    def __init__(self, now: float, first_s: float = QUIET_NOTE_S, repeat_s: float = QUIET_REPEAT_S) -> None:
        self.first_s = first_s
        self.repeat_s = repeat_s
        self._since = now
        self._notes = 0

    def heard(self, now: float) -> None:
        """A report arrived: the quiet stretch starts again."""
        self._since = now
        self._notes = 0

    def due(self, now: float) -> bool:
        if now - self._since < self.first_s + self._notes * self.repeat_s:
            return False
        self._notes += 1
        return True
