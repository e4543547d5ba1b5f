"""One project's way through the phases, run in its own thread.

observatory -> project app -> observer -> build -> training -> post-training -> cleanup.
Every transition is an event; any failure undeploys the project's services and keeps
a one-line reason on the project.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from flops_utils.message_text import describe, error_line
from flops_utils.mqtt_catalogue import (
    BuildResult,
    ControlCommand,
    EventLine,
    FlopsMessage,
    ModelImageBuilt,
    ReportedState,
    ServiceStatus,
    TrainingProgress,
    TrainingResult,
)
from flops_utils.service_config import (
    AggregatorConfig,
    BuilderConfig,
    LearnerConfig,
    MqttSettings,
    ObserverConfig,
    ServingConfig,
)
from manager.broker_access import BrokerAccess, BrokerAccessError
from manager.config_vault import ConfigVault, config_owner
from manager.learning_curve import PLOT_FILE, render_png
from manager.lifecycle.config_reference import by_reference
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.data_nodes import DataServers, check_feature_widths
from manager.lifecycle.errors import PhaseFailed, StopRequested
from manager.lifecycle.flower_pki import ProjectFlowerCa, cluster_identity
from manager.lifecycle.inbox import ProjectInbox
from manager.lifecycle.mlflow_run import (
    ProjectTracking,
    TrackingCallFailed,
    experiment_name,
    image_tags,
    run_url,
    without_credentials,
)
from manager.lifecycle.observatory import Observatory, ObservatoryKeeper
from manager.lifecycle.placement import LearnerPlan, plan_learners
from manager.lifecycle.privacy_progress import privacy_progress, privacy_result
from manager.lifecycle.record_writer import RecordWriter
from manager.lifecycle.round_log import round_record
from manager.lifecycle.specs import (
    FLEET_PORT,
    OBSERVER_PORT,
    SERVING_PORT,
    bind_host_for,
    environment_python,
    service_spec,
    sla_resources,
)
from manager.lifecycle.training_clock import TrainingClock
from manager.lifecycle.waiting import QuietNotes, http_ok
from manager.records import EventRecord, Progress, ProjectPhase, ProjectRecord, ProjectStatus
from manager.sla import ProjectSLA, sla_to_training_settings
from manager.storage.base import ProjectStore, StorageUnavailable
from orchestrator_adapters.base import (
    AdapterError,
    AppKind,
    AppRef,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    ServiceInfo,
    ServiceKind,
    ServiceSpec,
    ServiceState,
)

log = logging.getLogger(__name__)

Publish = Callable[[FlopsMessage], None]
Reviver = Callable[[str, str, ServiceInfo], bool]
Answer = TypeVar("Answer", BuildResult, ModelImageBuilt)
FAILED_GRACE_S = 3.0  # time to let a service's own MQTT failure report arrive before using the adapter's
RESULT_GRACE_S = 15.0  # a one-shot service that exited 0 gets this long for its report to arrive
MAX_LEARNER_RESTARTS = 3  # per learner and project; a learner that keeps dying is left out after that
MAX_AGGREGATOR_RESTARTS = 2  # per aggregator and project (classic, root or cluster)
MAX_TRACKING_RESTARTS = 3  # per project: the customer's MLflow server
FAILED = ReportedState.FAILED
OBSERVER_KEY = "observer"  # the observer lives in the observatory app; stored beside the project's services


def project_app_name(project_id: str) -> str:
    return f"project-{project_id[:8]}"


def registered_model_name(project_id: str) -> str:
    return f"flops-{project_id[:8]}"


@dataclass
class RunDeps:
    settings: LifecycleSettings
    store: ProjectStore
    adapter: OrchestratorAdapter
    observatories: ObservatoryKeeper
    publish: Publish
    broker: BrokerAccess
    clear_retained: Callable[[str], None]


@dataclass
class RunState:
    observatory: Observatory | None = None
    app: AppRef | None = None
    observer: str | None = None
    services: dict[str, str] = field(default_factory=dict)  # name -> adapter service id
    build: BuildResult | None = None
    result: TrainingResult | None = None
    model_image: ModelImageBuilt | None = None
    mqtt: MqttSettings | None = None  # this run's broker account (granted on first use)
    learner_restarts: dict[str, int] = field(default_factory=dict)
    aggregator_restarts: dict[str, int] = field(default_factory=dict)
    aggregator_failures: dict[str, str] = field(default_factory=dict)  # reported by cluster aggregators
    retired_learners: set[str] = field(default_factory=set)  # died too often: not started again
    tracking_restarts: int = 0
    training_started: bool = False


class ProjectRun:
    def __init__(self, record: ProjectRecord, sla: ProjectSLA, deps: RunDeps, inbox: ProjectInbox) -> None:
        self.project_id = record.project_id
        self.customer = record.customer
        self.sla = sla
        self.deps = deps
        self.inbox = inbox
        self.state = RunState()
        self.writer = RecordWriter(deps.store, self.project_id, deps.settings.db_outage_limit_s)
        self.flower_ca = ProjectFlowerCa(self.project_id)  # no I/O: keys are made on first use
        self.phase = ProjectPhase.QUEUED
        self.phase_started: dict[str, float] = {}
        self.progress = Progress()
        self.clock: TrainingClock | None = None
        self._ending = False  # the run is settling its outcome: a stop request comes too late
        self._ending_lock = threading.Lock()

    # -- the run -----------------------------------------------------------------
    def run(self) -> None:
        """Run every phase from the start."""
        self._execute(self._all_phases)

    def resume(self, record: ProjectRecord) -> None:
        """Continue a project that a previous manager process left in training.

        The training services kept running; reconnect to them from the stored record.
        A result published while the manager was away arrives as a retained message.
        """
        self._execute(lambda: self._resume_training(record))

    def _all_phases(self) -> None:
        self._enter(ProjectPhase.OBSERVATORY, self._observatory)
        self._enter(ProjectPhase.PROJECT_APP, self._project_app)
        self._enter(ProjectPhase.OBSERVER, self._observer)
        self._enter(ProjectPhase.BUILD, self._build)
        self._enter(ProjectPhase.TRAINING, self._train)
        self._enter(ProjectPhase.POST_TRAINING, self._post_training)

    def _resume_training(self, record: ProjectRecord) -> None:
        self._reconnect(record)
        self._event("manager restarted: reconnected to the running training services")
        self._set_phase(ProjectPhase.TRAINING)
        top = "root-aggregator" if "root-aggregator" in self.state.services else "aggregator"
        watched = {name: sid for name, sid in self.state.services.items() if name.endswith("aggregator")
                   or name.startswith("cluster-aggregator")}  # fmt: skip
        self._await_training(top, watched)
        self._enter(ProjectPhase.POST_TRAINING, self._post_training)

    def request_stop(self) -> bool:
        """Ask the run to stop (from another thread): it shows STOPPING at once and undeploys its
        services in its own thread. False when it is already ending with an outcome of its own."""
        with self._ending_lock:
            if self._ending:
                return False
            if not self.inbox.stop_requested.is_set():
                self.inbox.stop_requested.set()
                self._update(status=ProjectStatus.STOPPING)
            return True

    def _execute(self, body: Callable[[], None]) -> None:
        status, error = ProjectStatus.COMPLETED, None
        with self._ending_lock:
            if not self.inbox.stop_requested.is_set():
                self._update(status=ProjectStatus.RUNNING)
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

    def _reconnect(self, record: ProjectRecord) -> None:
        adapter = self.deps.adapter
        self.state.observatory = self.deps.observatories.ensure(adapter, self.customer)
        name = project_app_name(self.project_id)
        self.state.app = AppRef(record.apps["project"], name, AppKind.PROJECT, self.customer, self.project_id)
        services = dict(record.services)
        self.state.observer = services.pop(OBSERVER_KEY, None)
        self.state.services = services
        self.state.build = BuildResult(project_id=self.project_id, sender="builder", **record.build)
        self.state.training_started = True
        self.progress = record.progress
        self.phase_started = dict(record.phase_started)
        self.clock = TrainingClock(record.progress.total_rounds, record.progress.total_cycles)
        self.clock.replay(self.deps.store.list_rounds(self.project_id))  # the estimate goes on where it was

    def _enter(self, phase: ProjectPhase, action: Callable[[], None]) -> None:
        self._check_stop()
        self._set_phase(phase)
        self._event(f"phase {phase.value}")
        action()

    def _set_phase(self, phase: ProjectPhase, **fields: object) -> None:
        """Enter ``phase`` and remember when (the API serves per-phase times from these instants)."""
        self.phase = phase
        self.phase_started[phase.value] = time.time()
        self._update(phase=phase, phase_started=dict(self.phase_started), **fields)

    def _finish(self, status: ProjectStatus, error: str | None) -> None:
        with self._ending_lock:
            self._ending = True
            if self.inbox.stop_requested.is_set() and status is ProjectStatus.COMPLETED:
                status = ProjectStatus.STOPPED  # asked to stop while it finished: the caller saw STOPPING
        self._set_phase(ProjectPhase.CLEANUP)
        keep_serving = status is ProjectStatus.COMPLETED and "serving" in self.state.services
        try:
            self._cleanup(keep_serving)
        except Exception as failure:  # cleanup must never hide the project's real outcome
            log.exception("cleanup of project %s failed", self.project_id)
            self._event(f"cleanup incomplete: {error_line(failure)}", level="warning")
        if self.state.training_started:
            self._settle_experiment(status)
        try:
            self.deps.clear_retained(self.project_id)  # the broker keeps nothing of a finished project
        except Exception as failure:  # only housekeeping
            log.warning("retained messages of %s not cleared: %s", self.project_id, failure)
        if error:
            self._event(f"project failed: {error}", level="error")
        else:
            self._event(f"project {status.value.lower()}")
        self._set_phase(ProjectPhase.DONE, status=status, error=error, finished_at=time.time())
        if not self.writer.settle(self.deps.settings.db_outage_limit_s):
            log.error("project %s ended %s but the project store did not take its last state", self.project_id,
                      status.value)  # fmt: skip

    # -- phases ------------------------------------------------------------------
    def _observatory(self) -> None:
        observatory = self.deps.observatories.ensure(self.deps.adapter, self.customer, note=self._event)
        self.state.observatory = observatory
        self._update(tracking_url=observatory.tracking_url, apps={"observatory": observatory.app.app_id},
                     mlflow_experiment=self._experiment_name())

    def _project_app(self) -> None:
        adapter = self.deps.adapter
        name = project_app_name(self.project_id)
        self.state.app = adapter.create_app(name, AppKind.PROJECT, self.customer, self.project_id)
        self._update(apps=self._app_ids())

    def _observer(self) -> None:
        observatory = self._observatory_ref()
        adapter = self.deps.adapter
        name = f"observer-{self.project_id[:8]}"
        endpoint = adapter.plan_endpoint(observatory.app, name, OBSERVER_PORT, Placement())
        config = ObserverConfig(
            project_id=self.project_id,
            mqtt=self._mqtt(),
            instance_name=name,
            bind_host=bind_host_for(adapter),
            port=endpoint.port,
            log_file=str(self._work_dir("observer") / "events.log"),
            access_token_sha256=self.deps.settings.tracking_access.digests(self.customer),
            # HTTPS from the same CA as the customer's MLflow server (mlflow_tls): tokens never cross in clear.
            tls=pki.issue(endpoint.host, "observer") if (pki := self.deps.settings.tracking_pki) else None,
            tls_dir=str(self._work_dir("observer") / "tls"),
        )
        spec = self._spec(name, ServiceKind.OBSERVER, config, ports=(OBSERVER_PORT,))
        self.state.observer = adapter.add_service(observatory.app, spec)
        self._update(services={**self.state.services, OBSERVER_KEY: self.state.observer})
        adapter.deploy_service(observatory.app, self.state.observer)
        url = endpoint.url if config.tls is None else "https://" + endpoint.url.split("://", 1)[-1]
        self._event(f"observer {name} deployed at {url}")

    def _build(self) -> None:
        sla, settings = self.sla, self.deps.settings
        config = BuilderConfig(
            project_id=self.project_id,
            mqtt=self._mqtt(),
            instance_name="builder",
            repo_url=self._repo_url(),
            repo_credentials=sla.repo_credentials,
            repo_ref=sla.repo_ref,
            repo_access=settings.repo_access.for_owner(self.customer),
            flavor=sla.ml_model_flavor,
            cache_dir=str(settings.cache_dir),
            mode="local" if self.deps.adapter.name == "local" else "oci",
            registry=settings.registry,
            platforms=list(sla.supported_platforms),
        )
        build = self._run_builder("builder", config, BuildResult, failed="build", what="the build")
        self.state.build = build
        self._update(build=build.model_dump(exclude={"project_id", "sender", "sent_at", "type"}))

    def _run_builder(self, name: str, config: BuilderConfig, answer: type[Answer], *, failed: str, what: str) -> Answer:
        """Deploy a builder and wait for its one ``answer``; its own failure report fails the phase."""
        service = self._deploy(name, self._spec(name, ServiceKind.BUILDER, config))
        answers: list[Answer] = []

        def on_message(message: FlopsMessage) -> bool:
            if isinstance(message, answer):
                answers.append(message)
                return True
            if isinstance(message, ServiceStatus) and message.service == "builder" and message.state is FAILED:
                raise PhaseFailed(f"{failed} failed: {message.detail}")
            return False

        self._await(on_message, {name: service}, self.deps.settings.build_timeout_s, what)
        return answers[0]

    def _train(self) -> None:
        training = sla_to_training_settings(self.sla)
        nodes = self.deps.adapter.list_nodes()
        tags = list(training.data_tags)
        plan, notes = plan_learners(nodes, training, self._customer_tag_lister(tags))
        for note in notes:
            self._event(note, level="warning")
        check_feature_widths(plan.nodes, tags, self._data_servers().shape_lister(self.customer, tags))
        self._event(f"learners on nodes {[node.name for node in plan.nodes]}")
        total_cycles = training.training_cycles if training.mode == "hierarchical" else 1
        self.progress = Progress(total_rounds=training.training_rounds, total_cycles=total_cycles)
        self.clock = TrainingClock(training.training_rounds, total_cycles)
        self._update(progress=self.progress)
        if training.mode == "classic":
            top, aggregators = self._deploy_classic(plan)
        else:
            top, aggregators = self._deploy_hierarchical(plan)
        self.state.training_started = True
        self._await_training(top, aggregators)

    def _await_training(self, top: str, aggregators: dict[str, str]) -> None:
        def on_message(message: FlopsMessage) -> bool:
            if isinstance(message, TrainingProgress):
                self._on_progress(message)
            elif isinstance(message, TrainingResult) and message.sender == top:
                self.state.result = message
                return True
            elif isinstance(message, ServiceStatus) and message.service == "aggregator" and message.state is FAILED:
                if message.sender == top:
                    raise PhaseFailed(f"{message.sender} failed: {message.detail}")
                # A cluster aggregator's failure (often: it lost the root) is handled when its process has
                # ended: it is redeployed, and its reason is the project's if it cannot be.
                self.state.aggregator_failures[message.sender] = message.detail or "failed"
            return False

        self._await(on_message, aggregators, self.deps.settings.training_timeout_s, "training",
                    on_inspect=self._revive_during_training, revive=self._revive_aggregator,
                    awaited=self._awaited_round)
        result = self.state.result
        assert result is not None
        self.progress = self.progress.model_copy(update={"loss": result.loss, "accuracy": result.accuracy,
                                                         **privacy_result(result)})  # fmt: skip
        if result.reason:
            self._event(f"training ended after {result.rounds_completed} rounds: {result.reason}")
        self._update(
            progress=self.progress,
            mlflow_run_id=result.mlflow_run_id,
            registered_model=result.registered_model,
        )
        if result.mlflow_run_id:
            self._link_run_and_log_curve(result.mlflow_run_id)

    # -- the project's MLflow experiment -------------------------------------------
    def _experiment_name(self) -> str:
        return experiment_name(self.customer, self.sla.ml_repo_url, self.project_id)

    def _tracking(self) -> ProjectTracking:
        return ProjectTracking(self._observatory_ref().tracking_url, self._tracking_token(),
                               self.deps.observatories.ca_pem())  # fmt: skip

    def _link_run_and_log_curve(self, run_id: str) -> None:
        """The run's GUI link on the project, and the learning curve among the run's artifacts.

        Neither is worth failing a trained project for: a refusal is a warning event.
        """
        tracking = self._tracking()
        try:
            info = tracking.run(run_id)
            link = run_url(tracking.tracking_url, str(info["experiment_id"]), run_id)
            self._update(mlflow_run_url=link)
            self._event(f"MLflow run: {link}")
            build = self.state.build
            if build is not None and build.learner_image:
                tracking.set_run_tags(run_id, image_tags(build.learner_image, build.aggregator_image,
                                                         build.platform_digests))
            png = render_png(self.deps.store.list_rounds(self.project_id), self._experiment_name())
            tracking.log_artifact(run_id, PLOT_FILE, png)
            self._event(f"learning curve logged to the MLflow run as {PLOT_FILE} ({len(png) // 1024} KB)")
        except (TrackingCallFailed, StorageUnavailable) as error:
            self._event(f"learning curve not logged to MLflow: {error}", level="warning")

    def _settle_experiment(self, status: ProjectStatus) -> None:
        """Tag the project's experiment with its outcome; an unfinished project's empty experiment goes."""
        if self.state.observatory is None:
            return
        tags = {"flops.project_id": self.project_id, "flops.customer": self.customer,
                "flops.repository": without_credentials(self.sla.ml_repo_url)}  # fmt: skip
        try:
            self._event(self._tracking().settle_experiment(self._experiment_name(), status.value, tags))
        except TrackingCallFailed as error:
            self._event(f"MLflow experiment not tagged {status.value}: {error}", level="warning")

    def _revive_aggregator(self, label: str, service_id: str, info: ServiceInfo) -> bool:
        """A crashed aggregator (classic, root or cluster) is redeployed; it resumes from its last checkpoint."""
        restarts = self.state.aggregator_restarts.get(label, 0)
        reported = self.state.aggregator_failures.pop(label, None)
        if restarts >= MAX_AGGREGATOR_RESTARTS:
            raise PhaseFailed(f"the {label} failed: {reported or info.detail or 'no detail'}")
        self.state.aggregator_restarts[label] = restarts + 1
        self._event(f"the {label} was lost ({reported or info.detail or 'failed'}); redeploying it, restart "
                    f"{restarts + 1} of {MAX_AGGREGATOR_RESTARTS}: it resumes from its last checkpoint",
                    level="warning")  # fmt: skip
        self.deps.adapter.deploy_service(self._app(), service_id)
        return True

    def _revive_during_training(self) -> None:
        self._revive_learners()
        self._revive_tracking()

    def _revive_tracking(self) -> None:
        """The customer's MLflow server crashed: start it again (aggregators keep their metrics meanwhile)."""
        observatory = self.state.observatory
        if observatory is None or self.state.tracking_restarts >= MAX_TRACKING_RESTARTS:
            return
        info = self.deps.adapter.inspect_service(observatory.app, observatory.tracking_service)
        if info.state is not ServiceState.FAILED:
            return
        if not info.redeployable:
            self.state.tracking_restarts = MAX_TRACKING_RESTARTS
            self._event(f"the MLflow tracking server stopped and cannot be redeployed: {info.detail}", level="warning")
            return
        self.state.tracking_restarts += 1
        self._event(f"the MLflow tracking server stopped ({info.detail or 'failed'}); redeploying it, restart "
                    f"{self.state.tracking_restarts} of {MAX_TRACKING_RESTARTS}; the aggregators keep their "
                    "metrics until it is back", level="warning")  # fmt: skip
        self.deps.adapter.deploy_service(observatory.app, observatory.tracking_service)

    def _revive_learners(self) -> None:
        """A learner that crashed during training is started again; it rejoins as a new Flower node.

        Learners that exit 0 (no data, training over, stop requested) are left alone.
        """
        app = self._app()
        for name, service_id in list(self.state.services.items()):
            if not name.startswith("learner-") or name in self.state.retired_learners:
                continue
            info = self.deps.adapter.inspect_service(app, service_id)
            if info.state is not ServiceState.FAILED:
                continue
            if not info.redeployable:
                raise PhaseFailed(f"{name} failed: {info.detail or 'no detail'}")
            why = info.detail or "failed"
            restarts = self.state.learner_restarts.get(name, 0)
            if restarts >= MAX_LEARNER_RESTARTS:
                self.state.retired_learners.add(name)
                self._event(f"{name} lost for good after {restarts} restarts: {why}", level="warning")
                continue
            self.state.learner_restarts[name] = restarts + 1
            self._event(f"{name} lost ({why}); redeploying it, restart {restarts + 1} of {MAX_LEARNER_RESTARTS}",
                        level="warning")
            self.deps.adapter.deploy_service(app, service_id)

    def _data_servers(self) -> DataServers:
        return DataServers(self.deps.settings.data_access)

    def _customer_tag_lister(self, tags: list[str]) -> Callable[[str], dict[str, int]]:
        """Rows per tag in this project's customer's namespace only (placement counts nobody else's)."""
        servers = self._data_servers()

        def list_tags(address: str) -> dict[str, int]:
            with servers.reader(address, self.customer, tags) as client:
                return client.list_tags(tags)

        return list_tags

    def _deploy_classic(self, plan: LearnerPlan) -> tuple[str, dict[str, str]]:
        name = "aggregator"
        address = self._aggregator(name, role="classic", cluster=None, placement=Placement())
        for node in plan.nodes:
            self._learner(node.name, node.cluster, node.data_server or "", address)
        return name, {name: self.state.services[name]}

    def _deploy_hierarchical(self, plan: LearnerPlan) -> tuple[str, dict[str, str]]:
        root = "root-aggregator"
        clusters = [str(cluster) for cluster in plan.clusters]
        root_address = self._aggregator(root, role="root", cluster=None, placement=Placement(), clusters=clusters)
        watched = {root: self.state.services[root]}
        for cluster, members in plan.clusters.items():
            name = f"cluster-aggregator-{cluster}"
            placement = Placement(cluster=cluster)
            address = self._aggregator(name, role="cluster", cluster=cluster, placement=placement, root=root_address)
            watched[name] = self.state.services[name]
            for node in members:
                self._learner(node.name, node.cluster, node.data_server or "", address)
        return root, watched

    def _aggregator(
        self,
        name: str,
        *,
        role: str,
        cluster: str | None,
        placement: Placement,
        clusters: list[str] | None = None,
        root: str | None = None,
    ) -> str:
        adapter, build, observatory = self.deps.adapter, self._build_result(), self._observatory_ref()
        endpoint = adapter.plan_endpoint(self._app(), name, FLEET_PORT, placement)
        config = AggregatorConfig(
            project_id=self.project_id,
            mqtt=self._mqtt(),
            instance_name=name,
            role=role,  # type: ignore[arg-type]
            cluster=cluster,
            training=sla_to_training_settings(self.sla),
            flavor=self.sla.ml_model_flavor,
            app_dir=build.app_dir or "/app",
            bind_host=bind_host_for(adapter),
            port=endpoint.port,
            root_address=root,
            expected_clusters=clusters or [],
            tracking_uri=observatory.tracking_url,
            tracking_token=self._tracking_token(),
            tracking_ca_pem=self.deps.observatories.ca_pem(),
            experiment_name=self._experiment_name(),
            registered_model_name=registered_model_name(self.project_id),
            params=self._params(),
            work_dir=str(self._work_dir(name)),
            flower_tls=self.flower_ca.for_superlink(endpoint.host, cluster_identity(cluster) if cluster else None)
            if self.deps.settings.flower_tls
            else None,
        )
        spec = self._spec(
            name, ServiceKind.AGGREGATOR, config,
            runtime=True, image=build.aggregator_image, placement=placement, ports=(FLEET_PORT,),
        )  # fmt: skip
        self._deploy(name, spec)
        return endpoint.address

    def _learner(self, node: str, cluster: str | None, data_server: str, aggregator_address: str) -> None:
        build = self._build_result()
        name = f"learner-{node}"
        config = LearnerConfig(
            project_id=self.project_id,
            mqtt=self._mqtt(),
            instance_name=name,
            node=node,
            cluster=cluster,
            app_dir=build.app_dir or "/app",
            aggregator_address=aggregator_address,
            data_server_address=data_server,
            data_tags=list(self.sla.training_configuration.data_tags),
            data_token=self._data_servers().project_read_token(
                self.customer, self.project_id, node, list(self.sla.training_configuration.data_tags)),
            data_ca_pem=self._data_servers().ca_pem,
            work_dir=str(self._work_dir(name)),
            flower_tls=self.flower_ca.for_supernode(node) if self.deps.settings.flower_tls else None,
        )
        placement = Placement(node=node, cluster=cluster, data_tags=tuple(config.data_tags))
        spec = self._spec(
            name, ServiceKind.LEARNER, config, runtime=True, image=build.learner_image, placement=placement
        )
        self._deploy(name, spec)

    def _post_training(self) -> None:
        steps = set(self.sla.post_training_steps)
        if "build_image_for_trained_model" in steps:
            self._build_model_image()
        if "deploy_trained_model_image" in steps:
            self._serve()

    def _trained_model_uri(self) -> str:
        result = self.state.result
        assert result is not None
        if result.registered_model and result.registered_version:
            return f"models:/{result.registered_model}/{result.registered_version}"
        if not result.model_uri:
            raise PhaseFailed("training reported no model")
        return result.model_uri

    def _build_model_image(self) -> None:
        """The builder packages the trained model as an inference image (image-based orchestrators)."""
        settings, build = self.deps.settings, self._build_result()
        if self.deps.adapter.name == "local":
            self._event("build_image_for_trained_model: the local orchestrator runs no images; "
                        "the model is served from the build's environment")
            return
        if settings.registry is None:
            raise PhaseFailed("build_image_for_trained_model needs the manager's registry setting")
        config = BuilderConfig(
            project_id=self.project_id,
            mqtt=self._mqtt(),
            instance_name="model-builder",
            repo_url=self._repo_url(),
            repo_access=settings.repo_access.for_owner(self.customer),
            flavor=self.sla.ml_model_flavor,
            cache_dir=str(settings.cache_dir),
            mode="oci",
            registry=settings.registry,
            task="model_image",
            model_uri=self._trained_model_uri(),
            tracking_uri=self._observatory_ref().tracking_url,
            tracking_token=self._tracking_token(),
            tracking_ca_pem=self.deps.observatories.ca_pem(),
            base_image=build.aggregator_image or build.learner_image,  # the aggregator's holds MLflow
            platforms=list(self.sla.supported_platforms),
        )
        built = self._run_builder("model-builder", config, ModelImageBuilt, failed="build_image_for_trained_model",
                                  what="the inference image build")
        self.state.model_image = built
        self._update(model_image=built.pinned)
        how = "found in the registry" if built.cached else f"built in {built.total_seconds:.0f}s"
        tagged = f", tagged on MLflow run {built.run_id}" if built.run_tagged else ""
        self._event(f"inference image {built.pinned} {how}{tagged}")

    def _tracking_token(self) -> str | None:
        return self.deps.settings.tracking_access.service_token(self.customer)

    def _serve(self) -> None:
        adapter, observatory = self.deps.adapter, self._observatory_ref()
        model_uri = self._trained_model_uri()
        endpoint = adapter.plan_endpoint(self._app(), "serving", SERVING_PORT, Placement())
        if self.state.model_image is not None:
            # The inference image serves its model by itself (MLflow's scoring server as entrypoint).
            spec = ServiceSpec(
                name="serving", kind=ServiceKind.SERVING, config={}, image=self.state.model_image.pinned,
                environment={"UVICORN_HOST": bind_host_for(adapter), "UVICORN_PORT": str(endpoint.port)},
                resources=sla_resources(self.sla), ports=(PortSpec(SERVING_PORT.name, endpoint.port),),
            )
        else:
            config = ServingConfig(
                project_id=self.project_id,
                mqtt=self._mqtt(),
                instance_name="serving",
                model_uri=model_uri,
                tracking_uri=observatory.tracking_url,
                tracking_token=self._tracking_token(),
                tracking_ca_pem=self.deps.observatories.ca_pem(),
                bind_host=bind_host_for(adapter),
                port=endpoint.port,
                access_token_sha256=self.deps.settings.tracking_access.digests(self.customer),
            )
            spec = self._spec("serving", ServiceKind.SERVING, config, runtime=True,
                              image=self.state.build.aggregator_image if self.state.build else None,
                              ports=(SERVING_PORT,))
        service = self._deploy("serving", spec)

        def healthy() -> bool:
            return http_ok(f"{endpoint.url}/ping")

        self._event(f"starting the model serving endpoint at {endpoint.url}")
        began = time.monotonic()
        deadline = began + self.deps.settings.serving_timeout_s
        quiet = QuietNotes(began)
        while not healthy():
            self._check_stop()
            if quiet.due(time.monotonic()):
                self._event(f"waiting for the model serving endpoint to answer /ping "
                            f"({time.monotonic() - began:.0f} s so far)")
            info = adapter.inspect_service(self._app(), service)
            if info.state in (ServiceState.FAILED, ServiceState.SUCCEEDED, ServiceState.STOPPED):
                raise PhaseFailed(f"the model serving endpoint failed to start: {info.detail or info.state.value}")
            if time.monotonic() > deadline:
                raise PhaseFailed(f"the model serving endpoint did not answer /ping within "
                                  f"{self.deps.settings.serving_timeout_s:.0f}s")
            time.sleep(1.0)
        self._update(serving_url=endpoint.url)
        self._event(f"model {model_uri} served at {endpoint.url}/invocations")

    # -- waiting on reports and services ------------------------------------------
    def _await(
        self,
        on_message: Callable[[FlopsMessage], bool],
        watched: dict[str, str],
        timeout: float,
        what: str,
        on_inspect: Callable[[], None] | None = None,
        revive: Reviver | None = None,
        awaited: Callable[[], str] | None = None,
    ) -> None:
        """Handle reports until ``on_message`` says done; fail on crashed services or timeout.

        ``on_inspect`` runs whenever the watched services are inspected (every two seconds);
        ``revive(label, service_id, info)`` may handle a crashed watched service (True: redeployed).
        A stretch without reports gets an event saying what is awaited (``awaited()``, else ``what``).
        """
        started = time.monotonic()
        deadline = started + timeout
        next_inspect = 0.0
        exited_at: dict[str, float] = {}
        quiet = QuietNotes(started)
        while True:
            self._check_stop()
            message = self.inbox.get(timeout=self.deps.settings.poll_interval_s)
            if message is not None:
                self._record(message)
                quiet.heard(time.monotonic())
                if on_message(message):
                    return
            if self.writer.pending:
                self.writer.flush()  # buffered while the database was away; fails the run after the limit
            now = time.monotonic()
            if quiet.due(now):
                self._event(f"waiting for {awaited() if awaited else what} ({now - started:.0f} s so far)")
            if now >= next_inspect:
                next_inspect = now + 2.0
                self._inspect_watched(on_message, watched, exited_at, revive)
                if on_inspect is not None:
                    on_inspect()
            if now > deadline:
                raise PhaseFailed(f"{what} did not finish within {timeout:.0f}s")

    def _inspect_watched(
        self,
        on_message: Callable[[FlopsMessage], bool],
        watched: dict[str, str],
        exited_at: dict[str, float],
        revive: Reviver | None = None,
    ) -> None:
        for label, service_id in watched.items():
            info = self.deps.adapter.inspect_service(self._app(), service_id)
            if info.state is ServiceState.FAILED:
                if not info.redeployable:  # e.g. the orchestrator cannot place it: no report will come
                    raise PhaseFailed(f"the {label} failed: {info.detail or 'no detail'}")
                self._drain(on_message, FAILED_GRACE_S)  # prefer the service's own one-line reason
                if revive is not None and revive(label, service_id, info):
                    continue
                raise PhaseFailed(f"the {label} failed: {info.detail or 'no detail'}")
            if info.state in (ServiceState.SUCCEEDED, ServiceState.STOPPED):
                first = exited_at.setdefault(label, time.monotonic())
                if time.monotonic() - first > RESULT_GRACE_S:
                    raise PhaseFailed(f"the {label} exited without reporting its result")

    def _drain(self, on_message: Callable[[FlopsMessage], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self.inbox.get(timeout=0.2)
            if message is not None:
                self._record(message)
                on_message(message)

    def _awaited_round(self) -> str:
        """What training waits for now, for the event a quiet stretch gets."""
        progress = self.progress
        total = progress.total_rounds
        if progress.round == 0 and progress.cycle <= 1:
            return f"round 1 of {total} (learners connecting and training)"
        where = f"cycle {progress.cycle} of {progress.total_cycles}, " if progress.total_cycles > 1 else ""
        eta = self.clock.estimate(time.time()) if self.clock is not None else None
        left = f", about {max(eta - time.time(), 0):.0f} s of training left" if eta is not None else ""
        return f"{where}round {min(progress.round + 1, total)} of {total}{left}"

    def _on_progress(self, message: TrainingProgress) -> None:
        now = time.time()
        self.writer.round(round_record(self.project_id, message, now))
        eta_at = self.clock.observe(message, now) if self.clock is not None else None
        timing = {} if eta_at is None else {"training_eta_at": eta_at}
        update: dict[str, object] = {"cycle": message.cycle, "total_cycles": message.total_cycles}
        if message.cluster is None:
            update.update(round=message.round, total_rounds=message.total_rounds,
                          loss=message.loss, accuracy=message.accuracy)  # fmt: skip
        elif message.cycle >= self.progress.cycle:
            update.update(round=message.round, total_rounds=message.total_rounds)
        update.update(privacy_progress(self.progress, message))
        self.progress = self.progress.model_copy(update=update)
        self._update(progress=self.progress, **timing)

    def _record(self, message: FlopsMessage) -> None:
        level = "info"
        if isinstance(message, ServiceStatus) and message.state in (ReportedState.FAILED, ReportedState.NO_DATA):
            level = "warning"
        elif isinstance(message, EventLine):
            level = message.level
        # The event id is the message's digest: a report the broker delivers twice (QoS 1 after a manager
        # restart, a retained result heard again) is stored once.
        event_id = hashlib.sha256(message.topic().encode() + b"\0" + message.to_payload()).hexdigest()[:32]
        self._event(describe(message), source=message.sender, level=level, event_id=event_id)

    # -- cleanup -------------------------------------------------------------------
    def _cleanup(self, keep_serving: bool) -> None:
        adapter = self.deps.adapter
        if self.state.training_started:
            self._publish_stop()
        app = self.state.app
        if app is not None:
            if keep_serving:
                for name, service_id in self.state.services.items():
                    if name != "serving":
                        adapter.undeploy_service(app, service_id)
            else:
                adapter.delete_app(app)
        if self.state.observer and self.state.observatory:
            time.sleep(0.5)  # let the observer log the last reports
            adapter.remove_service(self.state.observatory.app, self.state.observer)  # the observatory outlives it
        if not keep_serving:
            self.deps.broker.revoke(self.project_id)
        self._revoke_configs(keep_serving)
        if self.state.training_started:
            self._revoke_data_tokens()

    def _revoke_data_tokens(self) -> None:
        """The learners' read tokens die with the project (they also expire on their own)."""
        try:
            problems = self._data_servers().revoke_project(self.deps.adapter.list_nodes(), self.project_id)
        except AdapterError as error:
            problems = [str(error)]
        for problem in problems:
            log.warning("could not revoke the data tokens of project %s on %s", self.project_id, problem)

    def _revoke_configs(self, keep_serving: bool) -> None:
        owners = [self.project_id] + ([] if keep_serving else [config_owner(self.project_id, "serving")])
        try:
            ConfigVault(self.deps.store, self.deps.settings.secret_box).revoke(*owners)
        except StorageUnavailable as error:  # the next manager start revokes what finished projects left
            log.warning("could not revoke the service configurations of %s: %s", self.project_id, error)

    def _publish_stop(self) -> None:
        try:
            self.deps.publish(ControlCommand(project_id=self.project_id, sender="manager", command="stop"))
        except Exception as failure:  # services are undeployed anyway
            log.warning("could not publish stop for %s: %s", self.project_id, failure)

    # -- helpers -------------------------------------------------------------------
    def _spec(
        self,
        name: str,
        kind: ServiceKind,
        config: object,
        *,
        runtime: bool = False,
        image: str | None = None,
        placement: Placement | None = None,
        ports: tuple = (),
    ) -> ServiceSpec:
        """Runtime services run in the build's environment; the rest in the manager's."""
        settings = self.deps.settings
        python = settings.python
        workdir = None
        if runtime and self.state.build is not None:
            python = environment_python(self.state.build.environment_dir, settings.python)
            workdir = self.state.build.app_dir
        if self.deps.adapter.name != "local":
            python = "python"
        spec = service_spec(
            name, kind, config,  # type: ignore[arg-type]
            python=python, image=image or settings.images.get(kind.value), workdir=workdir,
            resources=sla_resources(self.sla) if runtime else None, placement=placement, ports=ports,
            verbose=self.sla.verbose,
        )  # fmt: skip
        return by_reference(spec, owner=config_owner(self.project_id, name), adapter_name=self.deps.adapter.name,
                            settings=settings, store=self.deps.store)  # fmt: skip

    def _deploy(self, name: str, spec: ServiceSpec) -> str:
        app = self._app()
        service_id = self.deps.adapter.add_service(app, spec)
        self.state.services[name] = service_id
        stored = dict(self.state.services)
        if self.state.observer:
            stored[OBSERVER_KEY] = self.state.observer
        self._update(services=stored)
        self.deps.adapter.deploy_service(app, service_id)
        self._event(f"{name} deployed")
        return service_id

    def _params(self) -> dict[str, str]:
        training = self.sla.training_configuration
        build = self._build_result()
        params = {f"sla.{key}": str(value) for key, value in training.model_dump().items()}
        params.update({
            "sla.ml_model_flavor": self.sla.ml_model_flavor,
            "sla.ml_repo_url": self.sla.ml_repo_url,
            "build.commit": build.commit,
            "build.digest": build.digest,
            "build.cached": str(build.cached),
            "build.seconds": f"{build.total_seconds:.2f}",
            "orchestrator": self.deps.adapter.name,
        })  # fmt: skip
        return params

    def _repo_url(self) -> str:
        url = self.sla.ml_repo_url
        if "://" in url or url.startswith("git@") or Path(url).is_absolute():
            return url
        return str((self.deps.settings.repo_base_dir / url).resolve())

    def _work_dir(self, name: str) -> Path:
        path = self.deps.settings.state_dir / "projects" / self.project_id / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _mqtt(self) -> MqttSettings:
        """The broker account this project's services use: limited to the project's topics where the broker can."""
        if self.state.mqtt is None:
            try:
                self.state.mqtt = self.deps.broker.grant(self.project_id)
            except BrokerAccessError as error:
                raise PhaseFailed(f"no MQTT account for the project's services: {error}") from None
        return self.state.mqtt

    def _app(self) -> AppRef:
        assert self.state.app is not None, "project app not created yet"
        return self.state.app

    def _observatory_ref(self) -> Observatory:
        assert self.state.observatory is not None, "observatory not ready yet"
        return self.state.observatory

    def _build_result(self) -> BuildResult:
        assert self.state.build is not None, "no build result yet"
        return self.state.build

    def _app_ids(self) -> dict[str, str]:
        ids = {}
        if self.state.observatory:
            ids["observatory"] = self.state.observatory.app.app_id
        if self.state.app:
            ids["project"] = self.state.app.app_id
        return ids

    def _check_stop(self) -> None:
        if self.inbox.stop_requested.is_set():
            raise StopRequested

    def _update(self, **fields: object) -> None:
        self.writer.update(updated_at=time.time(), **fields)

    def _event(self, text: str, *, source: str = "manager", level: str = "info", event_id: str | None = None) -> None:
        event = EventRecord(project_id=self.project_id, source=source, level=level, text=text)
        self.writer.event(event.model_copy(update={"event_id": event_id}) if event_id else event)
