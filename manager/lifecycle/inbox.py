"""Per-project queue of MQTT reports, fed by the manager's one MQTT listener."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

from flops_utils.mqtt_catalogue import FlopsMessage


class ReportLink(Protocol):
    """What the manager needs from its link to the services' reports: :class:`flops_utils.mqtt_link.MqttLink`,
    or an in-memory broker in the lifecycle tests (``tests/lifecycle_fakes.py``)."""

    @property
    def connected(self) -> bool: ...

    def connect(self, timeout: float = 10.0) -> object: ...

    def close(self) -> None: ...

    def subscribe(self, topic_filter: str, handler: Callable[[str, FlopsMessage], None]) -> None: ...

    def publish(self, message: FlopsMessage) -> None: ...

    def clear_retained(self, project_id: str) -> None: ...


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
