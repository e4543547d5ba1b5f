"""Small helpers for tests: free ports and polling."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick, never a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
