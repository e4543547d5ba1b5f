"""One project's way through the phases, run in its own thread.

The phases, their order and what a restarted manager does with each are in
:mod:`manager.lifecycle.phases`; this class holds what the phases share (the project's
state, its record writer, its broker account) and settles the outcome: any failure
undeploys the project's services (:mod:`manager.lifecycle.cleanup`) and keeps a one-line
reason on the project.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from flops_utils.message_text import error_line, one_line
from flops_utils.mqtt_catalogue import BuildResult, ControlCommand
from flops_utils.service_config import MqttSettings
from manager.broker_access import BrokerAccessError
from manager.lifecycle import phases
from manager.lifecycle.cleanup import Deployed, ProjectCleanup, project_app_name
from manager.lifecycle.config_reference import by_reference
from manager.lifecycle.errors import PhaseFailed, StopRequested
from manager.lifecycle.inbox import ProjectInbox
from manager.lifecycle.mlflow_run import experiment_name
from manager.lifecycle.observatory import Observatory
from manager.lifecycle.record_writer import RecordWriter
from manager.lifecycle.run_state import RunDeps, RunState
from manager.lifecycle.run_tracking import settle_experiment
from manager.lifecycle.service_entries import OBSERVER_KEY, ServiceTable, entry
from manager.lifecycle.service_loss import ObserverKeeper
from manager.lifecycle.specs import (
    ProjectFacts,
    environment_python,
    registered_model_name,
    service_spec,
    sla_resources,
)
from manager.lifecycle.supervision import ReportLoop, RestartPolicy
from manager.lifecycle.training_clock import TrainingClock
from manager.records import EventRecord, Progress, ProjectPhase, ProjectRecord, ProjectStatus
from manager.security.config_vault import config_owner
from manager.security.flower_pki import ProjectFlowerCa
from manager.sla import ProjectSLA
from manager.storage.base import StorageUnavailable
from orchestrator_adapters.base import (
    AdapterError,
    AppKind,
    AppRef,
    Placement,
    PortSpec,
    ServiceKind,
    ServiceSpec,
)

__all__ = ["OBSERVER_KEY", "ProjectRun", "RunDeps", "RunState", "project_app_name", "registered_model_name"]

log = logging.getLogger(__name__)


class ProjectRun:
    def __init__(self, record: ProjectRecord, sla: ProjectSLA, deps: RunDeps, inbox: ProjectInbox) -> None:
        self.project_id = record.project_id
        self.customer = record.customer
        self.sla = sla
        self.deps = deps
        self.inbox = inbox
        self.state = RunState()
        self.writer = RecordWriter(deps.store, self.project_id, deps.settings.db_outage_limit_s, deps.clock)
        self.flower_ca = ProjectFlowerCa(self.project_id)  # no I/O: keys are made on first use
        self.reports = ReportLoop(self)
        self.restarts = RestartPolicy(self)
        self.observer_keeper = ObserverKeeper(self)
        self.phase = ProjectPhase.QUEUED
        self.phase_started: dict[str, float] = {}
        self.progress = Progress()
        self.clock: TrainingClock | None = None
        self._ending = False  # the run is settling its outcome: a stop request comes too late
        self._ending_lock = threading.Lock()

    # -- the run -----------------------------------------------------------------
    def run(self) -> None:
        """Run every phase from the start."""
        self._execute(lambda: phases.run_all(self))

    def resume(self, record: ProjectRecord) -> None:
        """Continue a project that a previous manager process left running (see ``phases.PHASES``)."""
        self._execute(lambda: phases.resume(self, record))

    def request_stop(self) -> bool:
        """Ask the run to stop (from another thread): it shows STOPPING at once and undeploys its
        services in its own thread. False when it is already ending with an outcome of its own."""
        with self._ending_lock:
            if self._ending:
                return False
            if not self.inbox.stop_requested.is_set():
                self.inbox.stop_requested.set()
                self.update(status=ProjectStatus.STOPPING)
            return True

    def _execute(self, body: Callable[[], None]) -> None:
        status, error = ProjectStatus.COMPLETED, None
        with self._ending_lock:
            if not self.inbox.stop_requested.is_set():
                self.update(status=ProjectStatus.RUNNING)
        try:
            body()
        except StopRequested:
            status = ProjectStatus.STOPPED
        except PhaseFailed as failure:
            status, error = ProjectStatus.FAILED, failure.reason
        except AdapterError as failure:
            status, error = ProjectStatus.FAILED, f"the {self.deps.adapter.name} orchestrator refused: {failure}"
        except StorageUnavailable as failure:
            status, error = ProjectStatus.FAILED, str(failure)
        except Exception as failure:  # keep the project consistent whatever went wrong
            log.exception("project %s crashed in phase %s", self.project_id, self.phase)
            status, error = ProjectStatus.FAILED, f"internal error in phase {self.phase.value}: {error_line(failure)}"
        self._finish(status, error)

    def enter(self, phase: ProjectPhase) -> None:
        self.check_stop()
        self.set_phase(phase)
        self.event(f"phase {phase.value}")

    def set_phase(self, phase: ProjectPhase, **fields: object) -> None:
        """Enter ``phase`` and remember when (the API serves per-phase times from these instants)."""
        self.phase = phase
        self.phase_started[phase.value] = time.time()
        self.update(phase=phase, phase_started=dict(self.phase_started), **fields)

    def _finish(self, status: ProjectStatus, error: str | None) -> None:
        with self._ending_lock:
            self._ending = True
            if self.inbox.stop_requested.is_set() and status is ProjectStatus.COMPLETED:
                status = ProjectStatus.STOPPED  # asked to stop while it finished: the caller saw STOPPING
        self.set_phase(ProjectPhase.CLEANUP)
        keep_serving = status is ProjectStatus.COMPLETED and self.state.services.serving() is not None
        try:
            for problem in self._cleanup(keep_serving):
                self.event(f"cleanup incomplete: {one_line(problem)}", level="warning")
        except Exception as failure:  # cleanup must never hide the project's real outcome
            log.exception("cleanup of project %s failed", self.project_id)
            self.event(f"cleanup incomplete: {error_line(failure)}", level="warning")
        if self.state.training_started:
            settle_experiment(self, status)
        try:
            self.deps.clear_retained(self.project_id)  # the broker keeps nothing of a finished project
        except Exception as failure:  # only housekeeping
            log.warning("retained messages of %s not cleared: %s", self.project_id, failure)
        if error:
            self.event(f"project failed: {error}", level="error")
        else:
            self.event(f"project {status.value.lower()}")
        self.set_phase(ProjectPhase.DONE, status=status, error=error, finished_at=time.time())
        if not self.writer.settle(self.deps.settings.db_outage_limit_s):
            log.error(
                "project %s ended %s but the project store did not take its last state", self.project_id, status.value
            )

    def _cleanup(self, keep_serving: bool) -> list[str]:
        if self.state.training_started:
            self._publish_stop()
        observatory = self.state.observatory
        deployed = Deployed(self.state.app, observatory.app if observatory else None, self.state.services)
        cleanup = ProjectCleanup(
            self.project_id, self.deps.adapter, self.deps.store, self.deps.settings, self.deps.broker
        )
        return cleanup.end_of_run(deployed, keep_serving=keep_serving, training_started=self.state.training_started)

    def _publish_stop(self) -> None:
        try:
            self.deps.publish(ControlCommand(project_id=self.project_id, sender="manager", command="stop"))
        except Exception as failure:  # services are undeployed anyway
            log.warning("could not publish stop for %s: %s", self.project_id, failure)

    # -- what the phases share -------------------------------------------------------
    def facts(self) -> ProjectFacts:
        """The project's facts for service configs (grants the broker account on first use)."""
        observatory = self.state.observatory
        return ProjectFacts(
            project_id=self.project_id,
            customer=self.customer,
            sla=self.sla,
            mqtt=self.mqtt(),
            bind_host=self.deps.adapter.capabilities.bind_host,
            tracking_url=observatory.tracking_url if observatory else "",
            tracking_token=self.deps.settings.tracking_access.service_token(self.customer),
            tracking_ca_pem=self.deps.observatories.ca_pem(),
            experiment_name=self.experiment_name(),
        )

    def experiment_name(self) -> str:
        return experiment_name(self.customer, self.sla.ml_repo_url, self.project_id)

    def spec(
        self,
        name: str,
        kind: ServiceKind,
        config: BaseModel,
        *,
        runtime: bool = False,
        image: str | None = None,
        placement: Placement | None = None,
        ports: tuple[PortSpec, ...] = (),
    ) -> ServiceSpec:
        """A spec for ``config``. Runtime services run the build (its images, or its environment's interpreter
        on the host) with the SLA's resources; the rest run FLOps' image (``images``) or the adapter's python."""
        build = self.state.build if runtime else None
        spec = service_spec(
            name,
            kind,
            config,
            image=image or self.deps.settings.images.get(kind.value),
            python=environment_python(build.environment_dir) if build else None,
            workdir=build.app_dir if build else None,
            resources=sla_resources(self.sla) if runtime else None,
            placement=placement,
            ports=ports,
            verbose=self.sla.verbose,
        )
        # Where configs go by reference (config_vault), the spec carries only where to fetch it.
        return by_reference(
            spec,
            owner=config_owner(self.project_id, name),
            adapter=self.deps.adapter,
            settings=self.deps.settings,
            store=self.deps.store,
        )

    def deploy(self, spec: ServiceSpec, *, role: str | None = None, cluster: str | None = None) -> str:
        """Add ``spec`` to the project app, record it (typed) on the project, then deploy it."""
        app = self.app()
        service_id = self.deps.adapter.add_service(app, spec)
        self.state.services.add(entry(spec.name, spec.kind, service_id, role=role, cluster=cluster))
        self.store_services()
        self.deps.adapter.deploy_service(app, service_id)
        self.event(f"{spec.name} deployed")
        return service_id

    def store_services(self) -> None:
        services = self.state.services
        self.update(services=services.ids(), service_entries=services.entries())

    def reconnect(self, record: ProjectRecord) -> None:
        """Take over what a previous manager process left running, from the stored record."""
        adapter = self.deps.adapter
        self.state.observatory = self.deps.observatories.ensure(adapter, self.customer)
        self.state.app = Deployed.from_record(record).project_app
        self.state.services = ServiceTable.from_record(record)
        self.state.build = BuildResult(project_id=self.project_id, sender="builder", **record.build)
        self.state.training_started = True
        self.progress = record.progress
        self.phase_started = dict(record.phase_started)
        self.clock = TrainingClock(record.progress.total_rounds, record.progress.total_cycles)
        self.clock.replay(self.deps.store.list_rounds(self.project_id))  # the estimate goes on where it was

    def work_dir(self, name: str) -> Path:
        path = self.deps.settings.state_dir / "projects" / self.project_id / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mqtt(self) -> MqttSettings:
        """The broker account this project's services use: limited to the project's topics where the broker can."""
        if self.state.mqtt is None:
            try:
                self.state.mqtt = self.deps.broker.grant(self.project_id)
            except BrokerAccessError as error:
                raise PhaseFailed(f"no MQTT account for the project's services: {error}") from None
        return self.state.mqtt

    def app(self) -> AppRef:
        assert self.state.app is not None, "project app not created yet"
        return self.state.app

    def observatory(self) -> Observatory:
        assert self.state.observatory is not None, "observatory not ready yet"
        return self.state.observatory

    def build_result(self) -> BuildResult:
        assert self.state.build is not None, "no build result yet"
        return self.state.build

    def app_ids(self) -> dict[str, str]:
        ids = {}
        if self.state.observatory:
            ids["observatory"] = self.state.observatory.app.app_id
        if self.state.app:
            ids[AppKind.PROJECT.value] = self.state.app.app_id
        return ids

    def check_stop(self) -> None:
        if self.inbox.stop_requested.is_set():
            raise StopRequested

    def update(self, **fields: object) -> None:
        self.writer.update(updated_at=time.time(), **fields)

    def event(self, text: str, *, source: str = "manager", level: str = "info", event_id: str | None = None) -> None:
        event = EventRecord(project_id=self.project_id, source=source, level=level, text=text)
        self.writer.event(event.model_copy(update={"event_id": event_id}) if event_id else event)
