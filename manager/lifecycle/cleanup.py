"""Undeploy what a project left running and withdraw its accesses: one path for the run and for stop.

A run cleans up after itself when it ends (keeping the serving endpoint of a completed
project); ``LifecycleService`` uses the same steps for a finished project's serving
endpoint, for leftovers of a project a restarted manager starts over, and for reset.
Every step runs even when an earlier one failed; the problems come back as one-line texts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from manager.broker_access import BrokerAccess, BrokerAccessError
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.data_nodes import DataServers
from manager.lifecycle.observatory_names import observatory_name
from manager.lifecycle.service_entries import ServiceTable
from manager.records import ProjectRecord
from manager.security.config_vault import ConfigVault, config_owner
from manager.storage.base import ProjectStore, StorageUnavailable
from orchestrator_adapters.base import AdapterError, AppKind, AppRef, OrchestratorAdapter

log = logging.getLogger(__name__)

OBSERVER_LINGER_S = 0.5  # a stopping run lets its observer log the last reports


def project_app_name(project_id: str) -> str:
    return f"project-{project_id[:8]}"


@dataclass(frozen=True)
class Deployed:
    """Where a project's services live: its project app, and its observer in the customer's observatory."""

    project_app: AppRef | None
    observatory_app: AppRef | None
    services: ServiceTable

    @classmethod
    def from_record(cls, record: ProjectRecord) -> Deployed:
        app_id, observatory_id = record.apps.get("project"), record.apps.get("observatory")
        app = (
            AppRef(app_id, project_app_name(record.project_id), AppKind.PROJECT, record.customer, record.project_id)
            if app_id
            else None
        )
        observatory = (
            AppRef(observatory_id, observatory_name(record.customer), AppKind.OBSERVATORY, record.customer)
            if observatory_id
            else None
        )
        return cls(app, observatory, ServiceTable.from_record(record))


class ProjectCleanup:
    def __init__(
        self,
        project_id: str,
        adapter: OrchestratorAdapter,
        store: ProjectStore,
        settings: LifecycleSettings,
        broker: BrokerAccess,
    ) -> None:
        self.project_id = project_id
        self.adapter = adapter
        self.store = store
        self.settings = settings
        self.broker = broker

    def undeploy(self, deployed: Deployed, *, keep_serving: bool = False, linger_s: float = 0.0) -> list[str]:
        """Delete the project app (or, keeping the serving endpoint, undeploy everything else) and the observer."""
        problems: list[str] = []
        app = deployed.project_app
        if app is not None:
            with _noted(problems, AdapterError):
                if keep_serving:
                    for item in deployed.services.in_project_app():
                        if item.kind != "serving":
                            self.adapter.undeploy_service(app, item.service_id)
                else:
                    self.adapter.delete_app(app)
        observer = deployed.services.observer()
        if observer is not None and deployed.observatory_app is not None:
            time.sleep(linger_s)
            with _noted(problems, AdapterError):  # the observatory outlives it
                self.adapter.remove_service(deployed.observatory_app, observer.service_id)
        return problems

    def end_of_run(self, deployed: Deployed, *, keep_serving: bool, training_started: bool) -> list[str]:
        """What a run removes when it ends; a kept serving endpoint keeps its configuration and broker account."""
        problems = self.undeploy(deployed, keep_serving=keep_serving, linger_s=OBSERVER_LINGER_S)
        owners = [self.project_id] + ([] if keep_serving else [config_owner(self.project_id, "serving")])
        return problems + self.revoke(broker=not keep_serving, config_owners=owners, data_tokens=training_started)

    def revoke(self, *, broker: bool, config_owners: list[str], data_tokens: bool) -> list[str]:
        """Withdraw the project's MQTT accounts, its services' stored configs and the learners' data tokens."""
        problems: list[str] = []
        if broker:
            with _noted(problems, BrokerAccessError):
                self.broker.revoke(self.project_id)
        if config_owners:
            try:
                ConfigVault(self.store, self.settings.secret_box).revoke(*config_owners)
            except StorageUnavailable as error:  # the next manager start revokes what finished projects left
                log.warning("could not revoke the service configurations of %s: %s", self.project_id, error)
        if data_tokens:  # the learners' read tokens die with the project (they also expire on their own)
            try:
                nodes = self.adapter.list_nodes()
            except AdapterError as error:
                log.warning("could not revoke the data tokens of project %s: %s", self.project_id, error)
            else:
                for problem in DataServers(self.settings.data_access).revoke_project(nodes, self.project_id):
                    log.warning("could not revoke the data tokens of project %s on %s", self.project_id, problem)
        return problems


@contextlib.contextmanager
def _noted(problems: list[str], *errors: type[Exception]) -> Iterator[None]:
    try:
        yield
    except errors as error:
        problems.append(str(error) or type(error).__name__)
