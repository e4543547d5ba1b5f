"""The manager's core: starts project runs, routes MQTT reports to them, stops them.

Implements :class:`manager.control.ProjectControl` for the REST API. One MQTT
listener feeds every project's inbox; each project runs in its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from flops_utils.mqtt_catalogue import ALL_PROJECTS_FILTER, FlopsMessage, split_topic
from flops_utils.mqtt_link import BrokerUnavailable, MqttLink
from flops_utils.service_config import DataServerSecurity
from manager.broker_access import ResolvingAccess
from manager.control import CachePruneRequest, CachePruneResult, ControlError, MockRequest, MockResult
from manager.data_models import DataToken, NodeList
from manager.lifecycle.cache_upkeep import DAY_S, prune_build_cache
from manager.lifecycle.cleanup import Deployed, ProjectCleanup
from manager.lifecycle.clock import SYSTEM_CLOCK, Clock
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.data_nodes import DataServers
from manager.lifecycle.inbox import ProjectInbox, ReportLink
from manager.lifecycle.inventory import node_inventory, write_token_for
from manager.lifecycle.observatory import ObservatoryKeeper
from manager.lifecycle.project_run import ProjectRun, RunDeps
from manager.lifecycle.restart_pickup import RestartPickUp
from manager.quotas import QuotaExceeded, check_active_projects, check_observatories
from manager.records import EventRecord, ProjectRecord
from manager.security.config_vault import ConfigRefused, ConfigVault, config_owner
from manager.security.project_secrets import seal_project_secrets
from manager.security.secret_box import SecretUnreadable
from manager.sla import ProjectSLA
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import AdapterError, AppKind, AppRef, NodeInfo, OrchestratorAdapter
from orchestrator_adapters.registry import adapter_class, create_adapter

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
        self._adapters: dict[str, OrchestratorAdapter] = dict(adapters or {})
        self._adapter_lock = threading.Lock()
        self._inboxes: dict[str, ProjectInbox] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._runs: dict[str, ProjectRun] = {}
        self._lock = threading.Lock()
        self._admission = threading.Lock()  # quota checks and the insert they allow, one request at a time
        self._closing = threading.Event()

    # -- start / stop --------------------------------------------------------------
    def start(self) -> None:
        """Pick up projects of an earlier manager process, then connect to the broker.

        Runs are prepared before the MQTT link connects, so retained results published
        while the manager was away reach their inboxes.
        """
        self.link.subscribe(ALL_PROJECTS_FILTER, self._on_report)
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
            threading.Thread(target=self._start_default_adapter, name="adapter-start", daemon=True).start()
        if self.settings.cache_max_age_s > 0:
            threading.Thread(target=self._prune_cache_forever, name="cache-upkeep", daemon=True).start()
        if self.settings.quotas.observatory_idle_s > 0:
            threading.Thread(target=self._stop_idle_observatories_forever, name="observatory-idle", daemon=True).start()

    def _start_default_adapter(self) -> None:
        """Nodes' data servers run before any project (the local adapter starts them), so data can come first."""
        try:
            self.adapter()
        except AdapterError as error:
            log.warning(
                "the %s orchestrator did not start: %s; retrying when it is first needed",
                self.settings.orchestrator,
                error,
            )

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
        for adapter in self._adapters.values():
            adapter.close()

    @property
    def broker_connected(self) -> bool:
        return self.link.connected

    def adapter(self, name: str | None = None) -> OrchestratorAdapter:
        name = name or self.settings.orchestrator
        with self._adapter_lock:
            if name not in self._adapters:
                settings = dict(self.settings.adapter_settings.get(name, {}))
                access = self.settings.data_access
                # Adapters that run the nodes' data servers themselves get their certificate and token key.
                runs_data_servers = adapter_class(name).capabilities.runs_data_servers
                if access is not None and runs_data_servers and settings.get("data_security") is None:
                    host = str(settings.get("host") or "127.0.0.1")
                    settings["data_security"] = access.server_security(host).model_dump()
                adapter = create_adapter(name, settings)
                adapter.start()
                self._adapters[name] = adapter
            return self._adapters[name]

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
        inbox = ProjectInbox(not_before=not_before)
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

    def stop_project(self, project_id: str) -> ProjectRecord:
        """A running project answers STOPPING at once; its own run thread undeploys its services (so
        projects stop in parallel) and ends STOPPED. A finished one gets its serving endpoint undeployed."""
        record = self._project(project_id)
        with self._lock:
            run = self._runs.get(project_id)
        if run is not None:
            if run.request_stop():
                self._event(project_id, "stop requested")
            return self._project(project_id)
        if record.apps.get("project"):
            cleanup = self._cleanup(record)
            problems = cleanup.undeploy(Deployed.from_record(record))
            problems += cleanup.revoke(
                broker=True, config_owners=[config_owner(project_id, "serving")], data_tokens=True
            )
            for problem in problems:
                log.warning("stopping project %s: %s", project_id, problem)
            if record.serving_url:
                self.store.update_project(project_id, serving_url=None, updated_at=time.time())
                self._event(project_id, "serving endpoint undeployed")
        return self._project(project_id)

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
        from manager.mocks import push_mock_data

        return push_mock_data(
            self.adapter().list_nodes(),
            request.mock_data_configuration,
            request.customer_id,
            DataServers(self.settings.data_access),
        )

    def list_nodes(self, customer: str) -> NodeList:
        return node_inventory(self._nodes(), customer, DataServers(self.settings.data_access))

    def data_write_token(self, customer: str, node: str) -> DataToken:
        return write_token_for(self._nodes(), customer, node, self.settings.data_access)

    def data_server_security(self) -> DataServerSecurity | None:
        access = self.settings.data_access
        return access.server_security() if access is not None else None

    def _nodes(self) -> list[NodeInfo]:
        try:
            return self.adapter().list_nodes()
        except AdapterError as error:
            raise ControlError(f"the {self.settings.orchestrator} orchestrator is unavailable: {error}", 503) from None

    def service_config(self, config_id: str, token: str) -> str:
        try:
            return ConfigVault(self.store, self.settings.secret_box).withdraw(config_id, token)
        except ConfigRefused as refused:
            raise ControlError(str(refused), status=refused.status) from None
        except SecretUnreadable as error:
            raise ControlError(f"the service configuration cannot be opened: {error}", status=503) from None

    def prune_cache(self, request: CachePruneRequest) -> CachePruneResult:
        days = request.older_than_days
        max_age_s = self.settings.cache_max_age_s if days is None else days * DAY_S
        return prune_build_cache(
            self.settings.cache_dir, self.store.list_projects(None), max_age_s=max_age_s, dry_run=request.dry_run
        )

    def _stop_idle_observatories_forever(self) -> None:
        """Stop observatories unused for ``quotas.observatory_idle_s`` whose customer runs no project."""
        idle_s = self.settings.quotas.observatory_idle_s
        while not self._closing.wait(max(1.0, min(60.0, idle_s / 4))):
            try:
                busy = {record.customer for record in self.store.list_projects(None) if not record.status.finished}
                for customer in busy:
                    self.observatories.touch(customer)  # idle time counts from a customer's last project
                self.observatories.stop_idle(lambda name: self.adapter(name or None), busy, idle_s)
            except Exception as error:  # the database or orchestrator may be away; try again next turn
                log.warning("could not stop idle observatories: %s", error)

    def _prune_cache_forever(self) -> None:
        """Prune at start and then every ``cache_prune_interval_s``; a failure waits for the next turn."""
        while not self._closing.is_set():
            try:
                self.prune_cache(CachePruneRequest())
            except Exception as error:  # the database may be away; the cache can wait
                log.warning("could not prune the build cache: %s", error)
            self._closing.wait(max(self.settings.cache_prune_interval_s, 60.0))

    def reset(self) -> None:
        with self._lock:
            running = dict(self._threads)
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

    # -- MQTT reports --------------------------------------------------------------
    def _on_report(self, topic: str, message: FlopsMessage) -> None:
        parts = split_topic(topic)
        if parts is None or parts[0] != message.project_id:
            log.warning("ignored a report whose project does not match its topic %s", topic)
            return
        with self._lock:
            inbox = self._inboxes.get(message.project_id)
        if inbox is not None:
            inbox.put(message)

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
