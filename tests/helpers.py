"""Small helpers for tests: polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Call ``predicate`` until it returns something truthy and return that.

    On timeout, return the last (falsy) value, so ``assert wait_until(...)`` fails with
    the caller's message. A predicate that raises counts as "not yet"; if the last call
    raised, that exception is raised at the timeout so the failure says why.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: Exception | None = None
        try:
            value = predicate()
        except Exception as error:  # polling: any error means "not ready yet"
            failure = error
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            if failure is not None:
                raise failure
            return value
        time.sleep(interval)
