"""The projects running in this manager: their run threads, their inboxes, and MQTT reports routed to them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flops_utils.mqtt_catalogue import FlopsMessage, split_topic
from manager.lifecycle.inbox import ProjectInbox
from manager.lifecycle.project_run import ProjectRun, RunDeps
from manager.records import ProjectRecord
from manager.sla import ProjectSLA

log = logging.getLogger(__name__)


class RunRegistry:
    def __init__(self) -> None:
        self._inboxes: dict[str, ProjectInbox] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._runs: dict[str, ProjectRun] = {}
        self._lock = threading.Lock()

    def prepare(
        self, record: ProjectRecord, sla: ProjectSLA, deps: RunDeps, resume: bool, not_before: float | None = None
    ) -> threading.Thread:
        """Register the project's inbox and return its (not yet started) run thread."""
        inbox = ProjectInbox(not_before=not_before)
        run = ProjectRun(record, sla, deps, inbox)
        body = (lambda: run.resume(record)) if resume else run.run
        thread = threading.Thread(
            target=self._run, args=(record.project_id, body), name=f"project-{record.project_id[:8]}", daemon=True
        )
        with self._lock:
            self._inboxes[record.project_id] = inbox
            self._threads[record.project_id] = thread
            self._runs[record.project_id] = run
        return thread

    def _run(self, project_id: str, body: Callable[[], None]) -> None:
        try:
            body()
        finally:
            with self._lock:
                self._inboxes.pop(project_id, None)
                self._threads.pop(project_id, None)
                self._runs.pop(project_id, None)

    def run(self, project_id: str) -> ProjectRun | None:
        """The project's run, while its thread runs."""
        with self._lock:
            return self._runs.get(project_id)

    def threads(self) -> dict[str, threading.Thread]:
        """The run threads by project id, as they are now."""
        with self._lock:
            return dict(self._threads)

    def route(self, topic: str, message: FlopsMessage) -> None:
        """Put a report in its project's inbox; reports of projects not running here are dropped."""
        parts = split_topic(topic)
        if parts is None or parts[0] != message.project_id:
            log.warning("ignored a report whose project does not match its topic %s", topic)
            return
        with self._lock:
            inbox = self._inboxes.get(message.project_id)
        if inbox is not None:
            inbox.put(message)
