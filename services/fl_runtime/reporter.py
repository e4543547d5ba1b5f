"""What a federated service tells the world over MQTT (status, events, progress, result)."""

from __future__ import annotations

import logging
import uuid
from typing import Literal

from flops_utils.message_text import one_line
from flops_utils.mqtt_catalogue import (
    EventLine,
    FlopsMessage,
    ReportedState,
    ServiceStatus,
)
from flops_utils.mqtt_link import MessageHandler, MqttLink
from flops_utils.service_config import MqttSettings

log = logging.getLogger(__name__)

EventLevel = Literal["debug", "info", "warning", "error"]


class Reporter:
    """Publishes one service's reports; ``connect()`` before use, ``close()`` after."""

    def __init__(self, mqtt: MqttSettings, project_id: str, sender: str, service: str) -> None:
        self.project_id = project_id
        self.sender = sender
        self.service = service
        self._link = MqttLink(mqtt, client_id=f"{sender}-{uuid.uuid4().hex[:10]}")

    def connect(self, timeout: float = 15.0) -> Reporter:
        self._link.connect(timeout)
        return self

    def close(self, flush_timeout: float = 10.0) -> None:
        self._link.flush(flush_timeout)
        self._link.close()

    # -- status ----------------------------------------------------------------
    def status(self, state: ReportedState, detail: str = "") -> None:
        self.publish(
            ServiceStatus(
                project_id=self.project_id, sender=self.sender, service=self.service, state=state, detail=detail
            )
        )

    def started(self, detail: str = "") -> None:
        self.status(ReportedState.STARTED, detail)

    def succeeded(self, detail: str = "") -> None:
        self.status(ReportedState.SUCCEEDED, detail)

    def failed(self, reason: object) -> None:
        self.status(ReportedState.FAILED, one_line(reason))

    def no_data(self, detail: str) -> None:
        self.status(ReportedState.NO_DATA, detail)

    def stopped(self, detail: str = "") -> None:
        self.status(ReportedState.STOPPED, detail)

    def event(self, text: str, level: EventLevel = "info") -> None:
        self.publish(EventLine(project_id=self.project_id, sender=self.sender, level=level, text=text))

    # -- raw -------------------------------------------------------------------
    def publish(self, message: FlopsMessage) -> None:
        log.info("report %s: %s", message.kind.value, message.model_dump_json(exclude={"project_id", "sent_at"}))
        self._link.publish(message)

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        self._link.subscribe(topic_filter, handler)
