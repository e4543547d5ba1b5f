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
