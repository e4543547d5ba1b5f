"""What the REST API asks of the manager's core (implemented by the lifecycle service)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from flops_utils.service_config import DataServerSecurity
from manager.data_models import DataToken, NodeList
from manager.records import ProjectRecord
from manager.sla import ProjectSLA


class MockDataConfiguration(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_name: str = Field(default="digits", description="only 'digits' (scikit-learn, offline) is built in")
    number_of_partitions: int = Field(default=2, ge=1, le=256)  # scale runs put one on each of 100+ nodes
    data_tag: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    distribution: str = Field(default="iid", pattern="^(iid|dirichlet)$")
    dirichlet_alpha: float = Field(default=0.5, gt=0)
    seed: int = 0
    nodes: list[str] | None = Field(default=None, description="learner nodes to fill; default: the first N")


class MockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    customer_id: str = Field(default="Admin", alias="customerID")
    mock_data_configuration: MockDataConfiguration


class MockResult(BaseModel):
    data_tag: str
    partitions: dict[str, int] = Field(description="node -> rows pushed")


class CachePruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    older_than_days: float | None = Field(
        default=None,
        ge=0,
        le=36500,
        description="remove build-cache entries unused this long (default: the manager's cache_max_age_s)",
    )
    dry_run: bool = Field(default=False, description="only report what would be removed")


class ImagePruneResult(BaseModel):
    removed_from_registry: list[str] = Field(
        default_factory=list,
        description="manifests deleted (or that would be) as <registry>/<repository>@<digest>, their tags with "
        "them; the registry frees their blobs at its next garbage-collect (an offline job of the operator)",
    )
    removed_from_storage: list[str] = Field(
        default_factory=list, description="image names removed from the builders' container storage"
    )
    kept_in_use: int = Field(default=0, description="images a live project, serving endpoint or container uses")
    kept_recent: int = Field(default=0, description="images used more recently than the limit")
    kept_busy: int = Field(default=0, description="images kept because a build was running (or buildah refused)")
    notes: list[str] = Field(
        default_factory=list, description="one line per part not pruned: registry unreachable, no container storage"
    )


class CachePruneResult(BaseModel):
    removed: list[str] = Field(description="entries removed (or that would be): envs/<digest>, apps/<digest>, work/...")
    freed_bytes: int
    kept_in_use: int = Field(description="entries a live project or serving endpoint uses")
    kept_recent: int = Field(description="entries used more recently than the limit")
    kept_busy: int = Field(description="entries a builder holds right now")
    dry_run: bool
    images: ImagePruneResult = Field(
        default_factory=ImagePruneResult,
        description="FLOps' OCI images (flops/...) in the registry and the container storage, pruned by the same rules",
    )


class ControlError(Exception):
    """A request the core refuses; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ProjectControl(Protocol):
    def start_project(self, sla: ProjectSLA, customer: str) -> ProjectRecord:
        """Store the project and start its lifecycle in the background; return at once."""
        ...

    def stop_project(self, project_id: str) -> ProjectRecord: ...

    def tracking_url(self, customer: str) -> str:
        """The customer's MLflow GUI URL; creates the observatory on demand."""
        ...

    def tracking_ca_pem(self) -> str | None:
        """The CA tracking servers' certificates are signed by (None: they speak plain HTTP)."""
        ...

    def push_mock_data(self, request: MockRequest) -> MockResult: ...

    def list_nodes(self, customer: str) -> NodeList:
        """Nodes, their data servers and ``customer``'s tags on each."""
        ...

    def data_write_token(self, customer: str, node: str) -> DataToken:
        """A token that writes into ``customer``'s namespace on ``node``'s data server; ControlError 404 otherwise."""
        ...

    def data_server_security(self) -> DataServerSecurity | None:
        """Certificate, key, CA and token key for data servers FLOps does not start (None: data_auth off)."""
        ...

    def service_config(self, config_id: str, token: str) -> str:
        """A service's configuration document (JSON) kept by reference; ControlError 401/404 otherwise."""
        ...

    def prune_cache(self, request: CachePruneRequest) -> CachePruneResult:
        """Remove old build-cache entries no live project uses (admin only)."""
        ...

    def reset(self) -> None:
        """Stop everything and wipe the database (admin only)."""
        ...
