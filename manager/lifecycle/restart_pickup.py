"""A restarted manager picks up the projects an earlier manager process left unfinished.

The phase table (:func:`manager.lifecycle.phases.on_restart`) says what happens to each:
training reconnects to the services that kept running; earlier phases start again from the
beginning (their services are undeployed first); later phases fail.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from manager.control import ControlError
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.phases import OnRestart, on_restart
from manager.records import ProjectPhase, ProjectRecord, ProjectStatus
from manager.security.config_vault import ConfigVault, config_owner
from manager.security.project_secrets import with_project_secrets
from manager.security.secret_box import SecretUnreadable
from manager.sla import ProjectSLA
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import OrchestratorAdapter

log = logging.getLogger(__name__)

RESTART_REASON = "the manager restarted while the project was running; its services were stopped"


class Prepare(Protocol):
    """Register a project's inbox and return its (not yet started) run thread."""

    def __call__(
        self,
        record: ProjectRecord,
        sla: ProjectSLA,
        adapter: OrchestratorAdapter,
        resume: bool,
        not_before: float | None = None,
    ) -> threading.Thread: ...


@dataclass
class RestartPickUp:
    settings: LifecycleSettings
    store: ProjectStore
    adapter: Callable[[str], OrchestratorAdapter]
    prepare: Prepare
    undeploy_leftovers: Callable[[ProjectRecord], None]
    event: Callable[[str, str, str], None]  # project id, text, level

    def settle_all(self) -> list[threading.Thread]:
        """Resume, restart or fail every unfinished project; returns the run threads to start."""
        pending: list[threading.Thread] = []
        ended: list[str] = []  # owners whose references a manager that stopped during cleanup may have left
        for record in self.store.list_projects(None):
            if record.status.finished:
                ended.append(record.project_id)
                if not record.serving_url:
                    ended.append(config_owner(record.project_id, "serving"))
                continue
            try:
                pending.append(self.pick_up(record))
            except Exception as error:  # the SLA or orchestrator may be gone; settle the record
                log.warning("cannot pick up project %s: %s", record.project_id, error)
                with contextlib.suppress(Exception):
                    self.undeploy_leftovers(record)
                self.event(record.project_id, f"{RESTART_REASON} ({error})", "error")
                self.store.update_project(
                    record.project_id,
                    status=ProjectStatus.FAILED,
                    phase=ProjectPhase.DONE,
                    error=RESTART_REASON,
                    finished_at=time.time(),
                    updated_at=time.time(),
                )
        ConfigVault(self.store, self.settings.secret_box).revoke(*ended)
        return pending

    def pick_up(self, record: ProjectRecord) -> threading.Thread:
        try:
            sla = with_project_secrets(ProjectSLA.model_validate(record.sla), record, self.settings.secret_box)
        except SecretUnreadable as error:
            raise ControlError(f"its repository credentials cannot be read: {error}") from None
        adapter = self.adapter(record.orchestrator)
        action = on_restart(record)  # from the phase table
        if action is OnRestart.RESUME:
            return self.prepare(record, sla, adapter, resume=True)
        if action is OnRestart.START_OVER:
            self.undeploy_leftovers(record)
            self.event(record.project_id, "manager restarted: the project starts again from the beginning", "info")
            # What the undeployed services reported before (the broker may still deliver it) is not this run's.
            return self.prepare(record, sla, adapter, resume=False, not_before=time.time())
        raise ControlError(f"phase {record.phase.value} cannot be resumed")
