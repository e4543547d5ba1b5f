"""Service configs and ServiceSpecs for every FLOps service: pure functions of the project's facts.

Nothing here does I/O: whatever needs some (the broker account, certificates, work folders)
is made by the run and passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from flops_utils.mqtt_catalogue import BuildResult
from flops_utils.service_config import (
    LOG_LEVEL_ENV,
    AggregatorConfig,
    BuilderConfig,
    FlowerTls,
    LearnerConfig,
    MqttSettings,
    ObserverConfig,
    ServerCertificate,
)
from manager.lifecycle.context import LifecycleSettings
from manager.sla import ProjectSLA, sla_to_training_settings
from orchestrator_adapters.base import (
    Endpoint,
    Placement,
    PortSpec,
    Resources,
    ServiceKind,
    ServiceSpec,
)

# Modules each service runs as (``python -m MODULE``), and the default image per kind.
SERVICE_MODULES: dict[ServiceKind, str] = {
    ServiceKind.TRACKING: "services.observer.tracking_server",
    ServiceKind.OBSERVER: "services.observer.main",
    ServiceKind.BUILDER: "services.builder.main",
    ServiceKind.AGGREGATOR: "services.aggregator.main",
    ServiceKind.LEARNER: "services.learner.main",
    ServiceKind.SERVING: "services.serving.main",
}

TRACKING_PORT = PortSpec("http", 5000)
OBSERVER_PORT = PortSpec("http", 8090)
FLEET_PORT = PortSpec("fleet", 9092)
SERVING_PORT = PortSpec("http", 8080)


@dataclass(frozen=True)
class ProjectFacts:
    """What every service config of one project shares."""

    project_id: str
    customer: str
    sla: ProjectSLA
    mqtt: MqttSettings
    bind_host: str  # from the adapter's capabilities
    tracking_url: str = ""
    tracking_token: str | None = None
    tracking_ca_pem: str | None = None
    experiment_name: str = ""


def registered_model_name(project_id: str) -> str:
    return f"flops-{project_id[:8]}"


def sla_resources(sla: ProjectSLA) -> Resources:
    limits = sla.resource_constraints
    return Resources(memory_mb=limits.memory, vcpus=limits.vcpus, storage_mb=limits.storage)


def service_spec(
    name: str,
    kind: ServiceKind,
    config: BaseModel,
    *,
    image: str | None,
    python: str | None = None,
    workdir: str | None = None,
    resources: Resources | None = None,
    placement: Placement | None = None,
    ports: tuple[PortSpec, ...] = (),
    verbose: bool = False,
) -> ServiceSpec:
    """A spec that runs the kind's entry module; each adapter builds the command line (see ServiceSpec).

    ``verbose`` (the SLA's): the service logs at DEBUG.
    """
    environment = {"FLOPS_WORKDIR": workdir} if workdir else {}
    if verbose:
        environment[LOG_LEVEL_ENV] = "DEBUG"
    return ServiceSpec(
        name=name,
        kind=kind,
        config=config.model_dump(mode="json"),
        image=image,
        module=SERVICE_MODULES[kind],
        python=python,
        environment=environment,
        resources=resources or Resources(),
        placement=placement or Placement(),
        ports=ports,
    )


def environment_python(environment_dir: str | None) -> str | None:
    """The interpreter of a built environment (local builds), or None (the adapter's own)."""
    return str(Path(environment_dir) / "bin" / "python") if environment_dir else None


def resolve_repo_url(url: str, base_dir: Path) -> str:
    """A remote URL as is; a relative path from the manager's repository folder."""
    if "://" in url or url.startswith("git@") or Path(url).is_absolute():
        return url
    return str((base_dir / url).resolve())


def observer_config(
    facts: ProjectFacts,
    settings: LifecycleSettings,
    name: str,
    endpoint: Endpoint,
    work_dir: Path,
    tls: ServerCertificate | None,
) -> ObserverConfig:
    return ObserverConfig(
        project_id=facts.project_id,
        mqtt=facts.mqtt,
        instance_name=name,
        bind_host=facts.bind_host,
        port=endpoint.port,
        log_file=str(work_dir / "events.log"),
        access_token_sha256=settings.tracking_access.digests(facts.customer),
        # HTTPS from the same CA as the customer's MLflow server (mlflow_tls): tokens never cross in clear.
        tls=tls,
        tls_dir=str(work_dir / "tls"),
    )


def builder_config(facts: ProjectFacts, settings: LifecycleSettings, repo_url: str, *, images: bool) -> BuilderConfig:
    """The project's build: images for image-running orchestrators, else an environment on the host."""
    sla = facts.sla
    return BuilderConfig(
        project_id=facts.project_id,
        mqtt=facts.mqtt,
        instance_name="builder",
        repo_url=repo_url,
        repo_credentials=sla.repo_credentials,
        repo_ref=sla.repo_ref,
        repo_access=settings.repo_access.for_owner(facts.customer),
        flavor=sla.ml_model_flavor,
        cache_dir=str(settings.cache_dir),
        mode="oci" if images else "local",
        registry=settings.registry,
        platforms=list(sla.supported_platforms),
    )


def run_params(sla: ProjectSLA, build: BuildResult, orchestrator: str) -> dict[str, str]:
    """The MLflow run's parameters: the SLA's training settings and the build."""
    params = {f"sla.{key}": str(value) for key, value in sla.training_configuration.model_dump().items()}
    params.update(
        {
            "sla.ml_model_flavor": sla.ml_model_flavor,
            "sla.ml_repo_url": sla.ml_repo_url,
            "build.commit": build.commit,
            "build.digest": build.digest,
            "build.cached": str(build.cached),
            "build.seconds": f"{build.total_seconds:.2f}",
            "orchestrator": orchestrator,
        }
    )
    return params


@dataclass(frozen=True)
class AggregatorPlace:
    """Where one aggregator sits in the topology."""

    name: str
    role: str  # classic, root or cluster
    cluster: str | None = None
    expected_clusters: tuple[str, ...] = ()  # root: its clusters
    root_address: str | None = None  # cluster: where its root listens


def aggregator_config(
    facts: ProjectFacts,
    place: AggregatorPlace,
    endpoint: Endpoint,
    build: BuildResult,
    *,
    model_name: str,
    params: dict[str, str],
    work_dir: Path,
    flower_tls: FlowerTls | None,
) -> AggregatorConfig:
    return AggregatorConfig(
        project_id=facts.project_id,
        mqtt=facts.mqtt,
        instance_name=place.name,
        role=place.role,  # type: ignore[arg-type]
        cluster=place.cluster,
        training=sla_to_training_settings(facts.sla),
        flavor=facts.sla.ml_model_flavor,
        app_dir=build.app_dir or "/app",
        bind_host=facts.bind_host,
        port=endpoint.port,
        root_address=place.root_address,
        expected_clusters=list(place.expected_clusters),
        tracking_uri=facts.tracking_url,
        tracking_token=facts.tracking_token,
        tracking_ca_pem=facts.tracking_ca_pem,
        experiment_name=facts.experiment_name,
        registered_model_name=model_name,
        params=params,
        work_dir=str(work_dir),
        flower_tls=flower_tls,
    )


def learner_config(
    facts: ProjectFacts,
    name: str,
    node: str,
    cluster: str | None,
    build: BuildResult,
    *,
    aggregator_address: str,
    data_server: str,
    data_token: str | None,
    data_ca_pem: str | None,
    work_dir: Path,
    flower_tls: FlowerTls | None,
) -> LearnerConfig:
    return LearnerConfig(
        project_id=facts.project_id,
        mqtt=facts.mqtt,
        instance_name=name,
        node=node,
        cluster=cluster,
        app_dir=build.app_dir or "/app",
        aggregator_address=aggregator_address,
        data_server_address=data_server,
        data_tags=list(facts.sla.training_configuration.data_tags),
        data_token=data_token,
        data_ca_pem=data_ca_pem,
        work_dir=str(work_dir),
        flower_tls=flower_tls,
    )
