"""Settings of the container adapter (one Docker-compatible API on one host)."""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flops_utils.service_config import DataServerSecurity, RegistrySettings


class ContainerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field(description="state.json, the node data servers, the API service's socket and log")
    docker_host: str | None = Field(
        default=None,
        description="a Docker-compatible API (unix:///run/podman/podman.sock, unix:///var/run/docker.sock); "
        "None: start our own 'podman system service' on the FLOps container storage",
    )
    registry: RegistrySettings | None = Field(default=None, description="the internal registry images are pulled from")
    nodes_file: str | None = Field(default=None, description="node declarations, as for the local adapter")
    host: str = Field(default="127.0.0.1", description="address the host network's endpoints are reached at")
    pull_policy: Literal["always", "missing"] = Field(
        default="missing", description="'missing': images named by content digest are pulled once"
    )
    enforce_resources: bool = Field(default=True, description="memory and CPU limits from the spec's Resources")
    min_memory_mb: int = Field(
        default=512,
        ge=0,
        description="memory limits are never set below this: Python with the FL runtime needs a few hundred MB "
        "(the SLA's default of 100 MB would kill every learner)",
    )
    stop_grace_s: float = Field(
        default=5.0, ge=0, description="SIGTERM to SIGKILL when undeploying (containers, host processes, data servers)"
    )
    api_timeout_s: float = Field(default=300.0, gt=0, description="per API call (pulls of large images included)")
    containers_dir: str | None = Field(default=None, description="FLOps container storage root (own API service)")
    python: str = Field(
        default=sys.executable,
        description="interpreter that runs the nodes' data servers and the services without an image (host processes)",
    )
    data_server_timeout_s: float = Field(default=60.0, gt=0)
    data_server_max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    data_security: DataServerSecurity | None = Field(
        default=None, description="TLS and token key of the node data servers (the manager sets it)"
    )
