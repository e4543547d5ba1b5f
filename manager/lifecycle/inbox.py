"""Per-project queue of MQTT reports, fed by the manager's one MQTT listener."""

from __future__ import annotations

import queue
import threading

from flops_utils.mqtt_catalogue import FlopsMessage


class ProjectInbox:
    def __init__(self, not_before: float | None = None) -> None:
        """``not_before``: drop reports sent before this time (a run started again from the beginning must
        not take what its undeployed predecessors reported, which the broker may still deliver)."""
        self._queue: queue.Queue[FlopsMessage] = queue.Queue()
        self.stop_requested = threading.Event()
        self.not_before = not_before

    def put(self, message: FlopsMessage) -> None:
        if self.not_before is not None and message.sent_at < self.not_before:
            return
        self._queue.put(message)

    def get(self, timeout: float) -> FlopsMessage | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
