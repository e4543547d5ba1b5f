"""ServiceSpecs for every FLOps service: pure functions from settings and typed configs."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from flops_utils.service_config import LOG_LEVEL_ENV
from manager.sla import ProjectSLA
from orchestrator_adapters.base import OrchestratorAdapter, Placement, PortSpec, Resources, ServiceKind, ServiceSpec

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


def sla_resources(sla: ProjectSLA) -> Resources:
    limits = sla.resource_constraints
    return Resources(memory_mb=limits.memory, vcpus=limits.vcpus, storage_mb=limits.storage)


def service_spec(
    name: str,
    kind: ServiceKind,
    config: BaseModel,
    *,
    python: str,
    image: str | None,
    workdir: str | None = None,
    resources: Resources | None = None,
    placement: Placement | None = None,
    ports: tuple[PortSpec, ...] = (),
    verbose: bool = False,
) -> ServiceSpec:
    """A spec that runs ``python -m <module of kind>`` (locally) or ``image`` (containers).

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
        command=(python, "-m", SERVICE_MODULES[kind]),
        environment=environment,
        resources=resources or Resources(),
        placement=placement or Placement(),
        ports=ports,
    )


def environment_python(environment_dir: str | None, fallback: str) -> str:
    """The interpreter of a built environment (local mode), or ``fallback``."""
    if not environment_dir:
        return fallback
    return str(Path(environment_dir) / "bin" / "python")


def bind_host_for(adapter: OrchestratorAdapter) -> str:
    """Local processes share the host: bind loopback. Containers and pods must listen on all interfaces."""
    return "127.0.0.1" if adapter.name == "local" else "0.0.0.0"
