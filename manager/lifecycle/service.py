"""The manager's core: starts project runs, routes MQTT reports to them, stops them.

Implements :class:`manager.control.ProjectControl` for the REST API. One MQTT
listener feeds every project's inbox (:mod:`run_registry`); each project runs in its
own thread. Adapters (:mod:`adapter_pool`), the data calls (:mod:`data_desk`) and the
background upkeep (:mod:`housekeeping`) are kept in their own modules.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping

from flops_utils.mqtt_catalogue import ALL_PROJECTS_FILTER
from flops_utils.mqtt_link import BrokerUnavailable, MqttLink
from flops_utils.service_config import DataServerSecurity
from manager.broker_access import ResolvingAccess
from manager.control import CachePruneRequest, CachePruneResult, ControlError, MockRequest, MockResult
from manager.data_models import DataToken, NodeList
from manager.lifecycle.adapter_pool import AdapterPool
from manager.lifecycle.cleanup import Deployed, ProjectCleanup
from manager.lifecycle.clock import SYSTEM_CLOCK, Clock
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.data_desk import DataDesk
from manager.lifecycle.housekeeping import Housekeeping
from manager.lifecycle.inbox import ReportLink
from manager.lifecycle.observatory import ObservatoryKeeper
from manager.lifecycle.project_run import RunDeps
from manager.lifecycle.restart_pickup import RestartPickUp
from manager.lifecycle.run_registry import RunRegistry
from manager.quotas import QuotaExceeded, check_active_projects, check_observatories
from manager.records import EventRecord, ProjectRecord, ServingState, ServingStatus
from manager.security.config_vault import ConfigRefused, ConfigVault, config_owner
from manager.security.project_secrets import seal_project_secrets
from manager.security.secret_box import SecretUnreadable
from manager.sla import ProjectSLA
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import AdapterError, AppKind, AppRef, OrchestratorAdapter

log = logging.getLogger(__name__)


class LifecycleService:
    def __init__(
        self,
        settings: LifecycleSettings,
        store: ProjectStore,
        *,
        link: ReportLink | None = None,
        adapters: Mapping[str, OrchestratorAdapter] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``link``, ``adapters`` (started, by name) and ``clock`` replace the MQTT link, the adapters made
        from settings and the system clock: the lifecycle tests run with in-memory ones."""
        self.settings = settings
        self.store = store
        client_id = settings.mqtt_client_id or f"flops-manager-{uuid.uuid4().hex[:8]}"
        self.link: ReportLink = link or MqttLink(
            settings.mqtt, client_id=client_id, persistent_session=settings.mqtt_client_id is not None
        )
        self.clock = clock
        self.observatories = ObservatoryKeeper(settings, store)
        self.broker = ResolvingAccess(settings.mqtt, settings.mqtt_project_credentials)
        self.adapters = AdapterPool(settings, adapters)
        self.runs = RunRegistry()
        self._admission = threading.Lock()  # quota checks and the insert they allow, one request at a time
        self._closing = threading.Event()
        self.data = DataDesk(settings, self.adapters.get)
        self.housekeeping = Housekeeping(settings, store, self.observatories, self.adapters.get, self._closing)

    # -- start / stop --------------------------------------------------------------
    def start(self) -> None:
        """Pick up projects of an earlier manager process, then connect to the broker.

        Runs are prepared before the MQTT link connects, so retained results published
        while the manager was away reach their inboxes.
        """
        self.link.subscribe(ALL_PROJECTS_FILTER, self.runs.route)
        self.observatories.adopt_legacy_stores(self.adapter())
        pending = self._settle_interrupted_projects()
        try:
            self.link.connect(timeout=5)
        except BrokerUnavailable as error:
            log.warning("%s; retrying in the background", error)
            threading.Thread(target=self._connect_forever, name="mqtt-connect", daemon=True).start()
        for thread in pending:
            thread.start()
        if self.settings.start_adapter_at_start:
            threading.Thread(target=self.adapters.start_default, name="adapter-start", daemon=True).start()
        self.housekeeping.start()

    def _connect_forever(self) -> None:
        while not self._closing.is_set() and not self.link.connected:
            try:
                self.link.connect(timeout=5)
            except BrokerUnavailable:
                self._closing.wait(2.0)

    def close(self) -> None:
        """Disconnect. Running projects are left running: the next manager process resumes them."""
        self._closing.set()
        self.link.close()
        self.adapters.close()

    @property
    def broker_connected(self) -> bool:
        return self.link.connected

    def adapter(self, name: str | None = None) -> OrchestratorAdapter:
        return self.adapters.get(name)

    # -- ProjectControl ------------------------------------------------------------
    def start_project(self, sla: ProjectSLA, customer: str) -> ProjectRecord:
        if not self.link.connected:
            raise ControlError(
                f"the MQTT broker at {self.settings.mqtt.host}:{self.settings.mqtt.port} is unreachable; "
                "no project was created",
                status=503,
            )
        orchestrator = sla.orchestrator or self.settings.orchestrator
        try:
            adapter = self.adapter(orchestrator)
        except AdapterError as error:
            raise ControlError(str(error), status=400) from None
        try:
            sealed = seal_project_secrets(sla, self.settings.secret_box)
        except (OSError, SecretUnreadable) as error:
            raise ControlError(
                f"cannot keep the repository credentials safe: {error}; no project was created", status=503
            ) from None
        record = ProjectRecord(
            project_id=uuid.uuid4().hex,
            customer=customer,
            sla=sla.model_dump(mode="json", by_alias=True),  # without repo_credentials: they are sealed
            orchestrator=orchestrator,
            sealed=sealed,
        )
        with self._admission:
            active = sum(1 for known in self.store.list_projects(customer) if not known.status.finished)
            try:
                check_active_projects(customer, active, self.settings.quotas)
                check_observatories(customer, self.observatories.running_customers(), self.settings.quotas)
            except QuotaExceeded as exceeded:
                raise ControlError(f"{exceeded}; no project was created", status=exceeded.status) from None
            self.store.insert_project(record)
        self._event(record.project_id, f"project created by {customer} on the {orchestrator} orchestrator")
        self._prepare(record, sla, adapter, resume=False).start()
        return record

    def _prepare(
        self,
        record: ProjectRecord,
        sla: ProjectSLA,
        adapter: OrchestratorAdapter,
        resume: bool,
        not_before: float | None = None,
    ) -> threading.Thread:
        """Register the project's inbox and return its (not yet started) run thread."""
        deps = RunDeps(
            self.settings,
            self.store,
            adapter,
            self.observatories,
            self.link.publish,
            self.broker,
            self.link.clear_retained,
            self.clock,
        )
        return self.runs.prepare(record, sla, deps, resume, not_before)

    def stop_project(self, project_id: str) -> ProjectRecord:
        """A running project answers STOPPING at once; its own run thread undeploys its services (so
        projects stop in parallel) and ends STOPPED. A finished one gets its serving endpoint undeployed."""
        self._project(project_id)  # 404 for an unknown project
        run = self.runs.run(project_id)
        if run is not None:
            if run.request_stop():
                self._event(project_id, "stop requested")
            return self._project(project_id)
        with self.housekeeping.serving.lock:  # the serving watch must not redeploy what this undeploys
            self._remove_finished_project_services(self._project(project_id))
        return self._project(project_id)

    def _remove_finished_project_services(self, record: ProjectRecord) -> None:
        project_id = record.project_id
        if record.apps.get("project"):
            cleanup = self._cleanup(record)
            problems = cleanup.undeploy(Deployed.from_record(record))
            problems += cleanup.revoke(
                broker=True, config_owners=[config_owner(project_id, "serving")], data_tokens=True
            )
            for problem in problems:
                log.warning("stopping project %s: %s", project_id, problem)
            if record.serving_url:
                stopped = ServingStatus(
                    state=ServingState.STOPPED, restarts=record.serving.restarts if record.serving else 0
                )
                self.store.update_project(project_id, serving_url=None, serving=stopped, updated_at=time.time())
                self._event(project_id, "serving endpoint undeployed")

    def _cleanup(self, record: ProjectRecord) -> ProjectCleanup:
        """The same cleanup a run does when it ends, for a project without a run thread."""
        return ProjectCleanup(
            record.project_id, self.adapter(record.orchestrator), self.store, self.settings, self.broker
        )

    def tracking_url(self, customer: str) -> str:
        from manager.lifecycle.errors import PhaseFailed

        try:
            with self._admission:
                check_observatories(customer, self.observatories.running_customers(), self.settings.quotas)
        except QuotaExceeded as exceeded:
            raise ControlError(str(exceeded), status=exceeded.status) from None
        try:
            return self.observatories.ensure(self.adapter(), customer).tracking_url
        except (PhaseFailed, AdapterError) as error:
            raise ControlError(f"could not start the tracking server: {error}", status=503) from None

    def tracking_ca_pem(self) -> str | None:
        return self.observatories.ca_pem()

    def push_mock_data(self, request: MockRequest) -> MockResult:
        return self.data.push_mock_data(request)

    def list_nodes(self, customer: str) -> NodeList:
        return self.data.list_nodes(customer)

    def data_write_token(self, customer: str, node: str) -> DataToken:
        return self.data.data_write_token(customer, node)

    def data_server_security(self) -> DataServerSecurity | None:
        return self.data.data_server_security()

    def service_config(self, config_id: str, token: str) -> str:
        try:
            return ConfigVault(self.store, self.settings.secret_box).withdraw(config_id, token)
        except ConfigRefused as refused:
            raise ControlError(str(refused), status=refused.status) from None
        except SecretUnreadable as error:
            raise ControlError(f"the service configuration cannot be opened: {error}", status=503) from None

    def prune_cache(self, request: CachePruneRequest) -> CachePruneResult:
        return self.housekeeping.prune_cache(request)

    def reset(self) -> None:
        running = self.runs.threads()
        for project_id in running:
            self.stop_project(project_id)
        for thread in running.values():
            thread.join(timeout=120)
        for record in self.store.list_projects(None):
            self._undeploy_leftovers(record)
        for app in self.store.list_apps(kind=AppKind.OBSERVATORY.value):
            observatory = AppRef(str(app["app_id"]), str(app["name"]), AppKind.OBSERVATORY, str(app["customer"]))
            self.adapter().delete_app(observatory)
        self.store.reset()

    # -- restarts ------------------------------------------------------------------
    def _settle_interrupted_projects(self) -> list[threading.Thread]:
        """Projects a previous manager process left unfinished: resume, restart or fail them (phase table)."""
        pick_up = RestartPickUp(
            self.settings, self.store, self.adapter, self._prepare, self._undeploy_leftovers, self._event
        )
        return pick_up.settle_all()

    def _undeploy_leftovers(self, record: ProjectRecord) -> None:
        """Remove what a project left running: its project app and its observer."""
        for problem in self._cleanup(record).undeploy(Deployed.from_record(record)):
            log.warning("leftovers of project %s: %s", record.project_id, problem)

    # -- helpers -------------------------------------------------------------------
    def _project(self, project_id: str) -> ProjectRecord:
        record = self.store.get_project(project_id)
        if record is None:
            raise ControlError(f"no project {project_id}", status=404)
        return record

    def _event(self, project_id: str, text: str, level: str = "info") -> None:
        self.store.append_event(EventRecord(project_id=project_id, text=text, level=level))
