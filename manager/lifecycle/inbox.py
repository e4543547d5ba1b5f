"""Per-project queue of MQTT reports, fed by the manager's one MQTT listener."""

from __future__ import annotations

import queue
import threading

from flops_utils.mqtt_catalogue import FlopsMessage


class ProjectInbox:
    def __init__(self) -> None:
        self._queue: queue.Queue[FlopsMessage] = queue.Queue()
        self.stop_requested = threading.Event()

    def put(self, message: FlopsMessage) -> None:
        self._queue.put(message)

    def get(self, timeout: float) -> FlopsMessage | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
