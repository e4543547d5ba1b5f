"""The one small interface every orchestrator adapter implements.

In the spirit of NVIDIA FLARE's job launcher: the lifecycle only ever asks to
create/delete an app, add/deploy/undeploy/inspect a service and list nodes. Local
processes, containers, Kubernetes and Oakestra all answer the same calls, and the
contract tests in ``tests/adapter_contract.py`` run against each of them.

Domain objects here are plain dataclasses; constructors of adapters do no I/O
(``start()`` does, where an adapter needs it).
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar


class ServiceKind(StrEnum):
    TRACKING = "tracking"  # MLflow server (observatory)
    OBSERVER = "observer"  # project observer (observatory)
    BUILDER = "builder"
    AGGREGATOR = "aggregator"
    LEARNER = "learner"
    SERVING = "serving"  # trained-model inference endpoint
    DATA_SERVER = "data_server"


ONE_SHOT_KINDS = frozenset({ServiceKind.BUILDER, ServiceKind.AGGREGATOR, ServiceKind.LEARNER})


class AppKind(StrEnum):
    OBSERVATORY = "observatory"  # one per customer
    PROJECT = "project"  # one per project


@dataclass(frozen=True)
class Resources:
    memory_mb: int = 100
    vcpus: float = 1
    storage_mb: int = 0


@dataclass(frozen=True)
class Placement:
    node: str | None = None  # pin to one node (learners: the node whose data server holds the data)
    cluster: str | None = None  # hierarchical mode: a cluster aggregator's cluster
    node_labels: dict[str, str] = field(default_factory=dict)
    data_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortSpec:
    name: str
    port: int  # the port the service binds (container port)
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServiceSpec:
    """What to run. ``config`` is the service's typed configuration document (as JSON data).

    A FLOps service names its entry ``module``; each adapter builds the command line that runs it
    (``python -m MODULE`` with the host interpreter ``python`` for host processes, the image's
    ``python`` in containers). ``command`` is an explicit argv instead (tests, foreign services).
    """

    name: str  # unique within the app, DNS-label safe
    kind: ServiceKind
    config: dict[str, object]
    image: str | None = None  # container adapters
    command: tuple[str, ...] = ()  # explicit argv (host processes) or entrypoint override (images)
    module: str | None = None  # the service's entry module, run as ``python -m MODULE``
    python: str | None = None  # host processes: the interpreter (a build's environment); None: the adapter's
    environment: dict[str, str] = field(default_factory=dict)
    resources: Resources = Resources()
    placement: Placement = Placement()
    ports: tuple[PortSpec, ...] = ()

    @property
    def one_shot(self) -> bool:
        """One-shot services run to completion (Jobs); the rest are long-lived (Deployments)."""
        return self.kind in ONE_SHOT_KINDS


def host_command(spec: ServiceSpec, default_python: str) -> tuple[str, ...]:
    """The argv that runs ``spec`` as a process on the host: its module under its (or the default) interpreter."""
    if spec.module:
        return (spec.python or default_python, "-m", spec.module)
    return spec.command


def image_command(spec: ServiceSpec) -> tuple[str, ...]:
    """The entrypoint override that runs ``spec`` in its image (empty: the image's own entrypoint)."""
    if spec.module:
        return ("python", "-m", spec.module)  # the image's interpreter, found on its PATH
    return spec.command


@dataclass(frozen=True)
class AppRef:
    app_id: str  # the orchestrator's id for the app
    name: str
    kind: AppKind
    customer: str
    project_id: str | None = None


class ServiceState(StrEnum):
    """What the orchestrator sees of a service (what the service reports about itself over MQTT is
    ``flops_utils.mqtt_catalogue.ReportedState``)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


def killing_signal(exit_code: int) -> str | None:
    """The signal that ended a process (``SIGKILL``), from its exit code as Python (-9) or a shell (137)
    reports it; None for a plain exit."""
    number = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
    try:
        return signal.Signals(number).name if number else None
    except ValueError:
        return None


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    node: str | None
    state: ServiceState
    exit_code: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    state: ServiceState
    instances: tuple[InstanceInfo, ...] = ()
    detail: str = ""
    # False when deploying the service again cannot help (the orchestrator cannot place it as
    # asked): the lifecycle then fails at once with ``detail`` instead of restarting it.
    redeployable: bool = True


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    cluster: str | None
    labels: dict[str, str] = field(default_factory=dict)
    data_server: str | None = None  # host:port of the node's data server, where it has one
    learner: bool = True


class ConfigDelivery(StrEnum):
    """How an adapter hands a service its configuration document natively."""

    ENVIRONMENT = "environment"  # an environment variable of the process or container
    SECRET = "secret"  # an orchestrator secret object mounted into the pod


@dataclass(frozen=True)
class AdapterCapabilities:
    """What an orchestrator can do; the lifecycle asks this, never the adapter's name."""

    runs_images: bool  # services run from container images (the builder then builds images)
    host_processes: bool  # a spec without an image runs as a process on the manager's host
    bind_host: str  # the interface services listen on: loopback on a shared host, all interfaces elsewhere
    config_delivery: ConfigDelivery
    private_configs: bool  # native delivery keeps configs (passwords, keys) from whoever can read the orchestrator
    runs_data_servers: bool  # the adapter runs the nodes' data servers (it gets their certificate and token key)


class AdapterError(RuntimeError):
    """An orchestrator refused or failed a request; the message is short and user-facing."""


class OrchestratorAdapter(ABC):
    """Create apps and services on some orchestrator. All methods may do I/O; __init__ must not."""

    name: str = "abstract"
    # Every adapter declares its own; this default describes a plain host-process orchestrator.
    capabilities: ClassVar[AdapterCapabilities] = AdapterCapabilities(
        runs_images=False,
        host_processes=True,
        bind_host="127.0.0.1",
        config_delivery=ConfigDelivery.ENVIRONMENT,
        private_configs=True,
        runs_data_servers=False,
    )

    def start(self) -> None:  # noqa: B027 - optional hook
        """Connect / start what the adapter itself needs (e.g. the local adapter's data servers)."""

    def revive_data_servers(self) -> list[str]:
        """Start again the nodes' data servers this adapter runs that ended unasked; one line per server handled.

        Adapters that run none (the operator's, or the orchestrator restarts them) have nothing to do."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; running services keep running."""

    @abstractmethod
    def create_app(self, name: str, kind: AppKind, customer: str, project_id: str | None = None) -> AppRef: ...

    @abstractmethod
    def find_app(self, name: str, customer: str) -> AppRef | None: ...

    @abstractmethod
    def delete_app(self, app: AppRef) -> None:
        """Undeploy every service of the app and remove it; deleting twice is not an error."""

    @abstractmethod
    def plan_endpoint(self, app: AppRef, service_name: str, port: PortSpec, placement: Placement) -> Endpoint:
        """The address a service's port will be reachable at, known before it is deployed.

        Lets the lifecycle write the aggregator's address into learner configs up front.
        Calling it again with the same arguments returns the same endpoint.
        """

    @abstractmethod
    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        """Register a service in the app; returns its service id. Does not start it."""

    @abstractmethod
    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None: ...

    @abstractmethod
    def undeploy_service(self, app: AppRef, service_id: str) -> None:
        """Stop every instance; undeploying a stopped or unknown service is not an error."""

    def remove_service(self, app: AppRef, service_id: str) -> None:
        """Stop the service and take it out of its app for good; removing it twice is not an error.

        For services of an app that outlives them (a project's observer in the customer's
        observatory). Adapters whose undeployed services leave nothing behind need not override it.
        """
        self.undeploy_service(app, service_id)

    @abstractmethod
    def inspect_service(self, app: AppRef, service_id: str) -> ServiceInfo: ...

    @abstractmethod
    def list_nodes(self) -> list[NodeInfo]: ...

    def list_clusters(self) -> list[str]:
        return sorted({node.cluster for node in self.list_nodes() if node.cluster})
