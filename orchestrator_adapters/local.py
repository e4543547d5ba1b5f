"""The embedded default orchestrator: every service is a supervised process on this machine.

Composed of two pieces it shares with the container adapter: the :class:`NodeFleet` ("nodes" and
"clusters" from a small JSON file, see ``local_nodes``, and one data server per learner node,
started by ``start()``), so placement and per-node data servers work on one box; and
:class:`HostProcesses`, which runs each service's entry module as a supervised process group
with ``FLOPS_CONFIG`` in its environment (output in ``<state_dir>/apps/<app>/<service>-<i>.log``).
Everything is remembered in ``<state_dir>/state.json``, so a restarted manager still inspects
and stops what an earlier one started.

Stopping a service ends every process it started: its process group, the processes
below it that left the group, and, through the owner marker every process inherits
(``FLOPS_OWNER``), those that were re-parented to PID 1 (e.g. Flower's
``flwr-serverapp``); deleting an app also ends whatever still works in its folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from flops_utils.service_config import DataServerSecurity
from orchestrator_adapters.base import (
    AdapterCapabilities,
    AppKind,
    AppRef,
    ConfigDelivery,
    Endpoint,
    NodeInfo,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    ServiceInfo,
    ServiceSpec,
)
from orchestrator_adapters.host_processes import host_pieces
from orchestrator_adapters.local_state import StateFile


class LocalAdapterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field(description="state.json, logs, data server storage")
    nodes_file: str | None = Field(default=None, description="JSON node declarations; default: 2 clusters x 2 learners")
    python: str = Field(
        default=sys.executable,
        description="interpreter that runs the data servers and the "
        "services whose spec names no interpreter of its own",
    )
    host: str = "127.0.0.1"
    enforce_memory_limits: bool = Field(
        default=False,
        description="apply resources.memory_mb as an address-space limit (off by default: Python and torch "
        "reserve much more virtual memory than they use)",
    )
    stop_grace_s: float = Field(default=5.0, ge=0, description="SIGTERM to SIGKILL")
    data_server_timeout_s: float = Field(default=60.0, gt=0)
    data_server_max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    data_security: DataServerSecurity | None = Field(
        default=None,
        description="TLS certificate and token key of the data servers (the manager sets it); "
        "None: open data servers (development only)",
    )


class LocalAdapter(OrchestratorAdapter):
    name = "local"
    capabilities = AdapterCapabilities(
        runs_images=False,
        host_processes=True,
        bind_host="127.0.0.1",
        config_delivery=ConfigDelivery.ENVIRONMENT,
        private_configs=True,
        runs_data_servers=True,
    )

    def __init__(self, settings: LocalAdapterSettings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.state = StateFile(self.state_dir)
        self.fleet, self.processes = host_pieces(
            settings, self.state_dir, self.state, enforce_memory_limits=settings.enforce_memory_limits
        )

    # -- nodes and data servers -------------------------------------------------------
    def start(self) -> None:
        """Start (or reuse, when an earlier manager's are still answering) one data server per learner node."""
        self.fleet.start()

    def list_nodes(self) -> list[NodeInfo]:
        return self.fleet.list_nodes()

    def revive_data_servers(self) -> list[str]:
        return self.fleet.revive()

    # -- apps and services -----------------------------------------------------------------
    def create_app(self, name: str, kind: AppKind, customer: str, project_id: str | None = None) -> AppRef:
        return self.processes.create_app(name, kind, customer, project_id)

    def find_app(self, name: str, customer: str) -> AppRef | None:
        return self.processes.find_app(name, customer)

    def delete_app(self, app: AppRef) -> None:
        self.processes.delete_app(app)

    def plan_endpoint(self, app: AppRef, service_name: str, port: PortSpec, placement: Placement) -> Endpoint:
        return self.processes.plan_endpoint(app, service_name, port, placement)

    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        return self.processes.add_service(app, spec)

    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None:
        """Make ``instances`` instances run: live ones are kept, ended ones started again, extra ones stopped."""
        self.processes.deploy_service(app, service_id, instances)

    def undeploy_service(self, app: AppRef, service_id: str) -> None:
        self.processes.undeploy_service(app, service_id)

    def inspect_service(self, app: AppRef, service_id: str) -> ServiceInfo:
        return self.processes.inspect_service(app, service_id)

    # -- local extras --------------------------------------------------------------------
    def log_file(self, app: AppRef, service_id: str, index: int = 0) -> Path:
        return self.processes.log_file(app, service_id, index)

    def stop_everything(self) -> None:
        """Stop every service of every app and every data server (suite shutdown, test teardown).

        Data server records stay, so the next ``start()`` brings each node back on its old port.
        """
        self.processes.stop_all(also=self.fleet.processes())
