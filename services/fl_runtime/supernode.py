"""``flower-supernode`` tuned for short rounds (run as ``python -m services.fl_runtime.supernode ARGS``).

Two constants of flwr 1.41's SuperNode are changed, otherwise Flower's own command runs:

- idle poll: the SuperNode sleeps 3 s whenever the SuperLink has nothing for it. It
  asks right after sending a reply, before the next round exists, so every round
  waited up to 3 s for nothing. Capped at ``FLOPS_SUPERNODE_POLL_S`` (0.5 s).
- heartbeat interval: a SuperNode that dies without saying goodbye (killed, machine
  lost) is declared offline after 2 × its heartbeat interval, 60 s by default; with
  ``FLOPS_SUPERNODE_HEARTBEAT_S`` (10 s, Flower's minimum) the aggregator learns of
  a lost learner within ~20 s, independently of the round timeout.

Each patch checks Flower's module layout first and is skipped if it differs.
"""

from __future__ import annotations

import os
import sys
import time
import types

POLL_ENV = "FLOPS_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.5
HEARTBEAT_ENV = "FLOPS_SUPERNODE_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 10.0


class _CappedTime(types.SimpleNamespace):
    """Stands in for the ``time`` module inside Flower's SuperNode loop."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def patch_poll(cap: float) -> bool:
    """Cap the SuperNode's idle sleep; False when Flower's internals are not as expected."""
    try:
        from flwr.supernode import start_client_internal
    except ImportError:
        return False
    if getattr(start_client_internal, "time", None) is not time:
        return False
    start_client_internal.time = _CappedTime(cap)  # type: ignore[assignment]
    return True


def patch_heartbeat(interval: float) -> bool:
    """Announce and send heartbeats every ``interval`` s instead of Flower's 30 s."""
    try:
        from flwr.supercore import heartbeat
        from flwr.supernode import fleet_http_connection
    except ImportError:
        return False
    modules = (heartbeat, fleet_http_connection)
    if not all(isinstance(getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None), int | float) for module in modules):
        return False
    for module in modules:
        module.HEARTBEAT_DEFAULT_INTERVAL = interval  # type: ignore[attr-defined]
    return True


def main() -> None:
    patch_poll(float(os.environ.get(POLL_ENV, DEFAULT_POLL_S)))
    patch_heartbeat(float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S)))
    from flwr.supernode.cli import flower_supernode

    flower_supernode()
    sys.exit(0)


if __name__ == "__main__":
    main()
