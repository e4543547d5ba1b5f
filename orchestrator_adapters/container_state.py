"""What the container adapter remembers in ``<state_dir>/state.json``.

Containers themselves carry labels (app, service, instance index), so the engine is
the truth about what runs; the file keeps what the engine cannot: apps without
containers, registered service specs, whether an undeploy was requested (so a
container stopped on request reads STOPPED, not FAILED) and planned ports.
Every change is a locked read-modify-write (temp file + rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from orchestrator_adapters.base import AppKind, AppRef, ServiceSpec
from orchestrator_adapters.local_state import spec_from_data
from orchestrator_adapters.state_file import JsonStateFile


class ContainerServiceRecord(BaseModel):
    service_id: str
    spec: dict[str, Any]
    instances: int = 0  # how many were last deployed
    stop_requested: bool = False
    host_process: bool = False  # no image: runs as a supervised host process (the local adapter's way)

    def service_spec(self) -> ServiceSpec:
        return spec_from_data(self.spec)


class ContainerAppRecord(BaseModel):
    app_id: str
    name: str
    kind: AppKind
    customer: str
    project_id: str | None = None
    services: dict[str, ContainerServiceRecord] = Field(default_factory=dict)

    def ref(self) -> AppRef:
        return AppRef(
            app_id=self.app_id, name=self.name, kind=self.kind, customer=self.customer, project_id=self.project_id
        )


class ContainerState(BaseModel):
    apps: dict[str, ContainerAppRecord] = Field(default_factory=dict)
    endpoints: dict[str, int] = Field(default_factory=dict, description="'app/service/port' -> planned host port")


class ContainerStateFile(JsonStateFile[ContainerState]):
    """Locked access to ``state.json``; no I/O until the first read or update."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, ContainerState)
