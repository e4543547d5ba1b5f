"""The serving endpoints of completed projects outlive their runs: this watch redeploys one that is lost.

A completed project keeps its serving service (and its configuration and broker account)
after its run thread ended, so nobody else looks at it. Every few seconds the watch inspects
the endpoint of each completed project whose record says it runs; a lost one is redeployed
(same port, same configuration) up to :data:`MAX_SERVING_RESTARTS` times per project, each
time with an event and the count in the record's ``serving``; after that the record says
``failed`` with the reason and the endpoint stays down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from manager.lifecycle.cleanup import Deployed
from manager.lifecycle.service_loss import lost_reason
from manager.records import EventRecord, ProjectRecord, ProjectStatus, ServingState, ServingStatus
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import AdapterError, OrchestratorAdapter, ServiceState

log = logging.getLogger(__name__)

MAX_SERVING_RESTARTS = 3  # per project; the count is kept in its record, so a manager restart does not reset it
WATCH_EVERY_S = 3.0


class ServingWatch:
    def __init__(self, store: ProjectStore, adapter: Callable[[str], OrchestratorAdapter]) -> None:
        """``adapter`` gives an orchestrator's adapter by name."""
        self.store = store
        self._adapter = adapter
        self.lock = threading.Lock()  # held by whoever changes an endpoint: this watch, or a stop undeploying it

    def check_all(self) -> None:
        """One look at every served completed project."""
        for listed in self.store.list_projects(None):
            if not _served(listed):
                continue
            with self.lock:
                record = self.store.get_project(listed.project_id)  # a stop may have undeployed it meanwhile
                if record is None or not _served(record):
                    continue
                try:
                    self.check(record)
                except AdapterError as error:  # the orchestrator may be away: look again next turn
                    log.warning("could not inspect the serving endpoint of %s: %s", record.project_id, error)

    def check(self, record: ProjectRecord) -> None:
        deployed = Deployed.from_record(record)
        serving, app = deployed.services.serving(), deployed.project_app
        if serving is None or app is None:
            return
        adapter = self._adapter(record.orchestrator)
        info = adapter.inspect_service(app, serving.service_id)
        if info.state is not ServiceState.FAILED:
            return
        why = lost_reason(info)
        status = record.serving or ServingStatus()
        if not info.redeployable or status.restarts >= MAX_SERVING_RESTARTS:
            self._settle(record, status.model_copy(update={"state": ServingState.FAILED, "detail": why}))
            self._event(
                record,
                f"the model serving endpoint was lost ({why}) after {status.restarts} restarts; "
                "it is not redeployed again",
                "error",
            )
            return
        restarts = status.restarts + 1
        self._event(
            record,
            f"the model serving endpoint was lost ({why}); redeploying it, restart {restarts} of "
            f"{MAX_SERVING_RESTARTS}",
            "warning",
        )
        adapter.deploy_service(app, serving.service_id)
        self._settle(record, ServingStatus(state=ServingState.RUNNING, restarts=restarts, detail=why))

    def _settle(self, record: ProjectRecord, status: ServingStatus) -> None:
        self.store.update_project(record.project_id, serving=status, updated_at=time.time())

    def _event(self, record: ProjectRecord, text: str, level: str) -> None:
        self.store.append_event(EventRecord(project_id=record.project_id, source="manager", level=level, text=text))


def _served(record: ProjectRecord) -> bool:
    """A completed project with an endpoint the watch looks after. Records from before the watch (no
    status) are watched too; failed and stopped endpoints are not."""
    status = record.serving
    watched = status is None or status.state is ServingState.RUNNING
    return record.status is ProjectStatus.COMPLETED and bool(record.serving_url) and watched
