"""What the local adapter (its node fleet and host processes) remembers in ``<state_dir>/state.json``.

Everything a restarted manager needs to find, inspect and stop what an earlier one
started: apps, service specs, instance pids (with their start times, so a reused
pid is not mistaken for ours), planned ports and the data servers. Every change is
a locked read-modify-write of the whole file (written to a temp file, then renamed),
so several adapter objects - or processes - on one state directory stay consistent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter

from orchestrator_adapters.base import AppKind, AppRef, ServiceSpec
from orchestrator_adapters.state_file import JsonStateFile

_SPEC_ADAPTER: TypeAdapter[ServiceSpec] = TypeAdapter(ServiceSpec)


def spec_to_data(spec: ServiceSpec) -> dict[str, Any]:
    return dict(_SPEC_ADAPTER.dump_python(spec, mode="json"))


def spec_from_data(data: dict[str, Any]) -> ServiceSpec:
    return _SPEC_ADAPTER.validate_python(data)


class ProcessRecord(BaseModel):
    """One supervised process, the leader of its own process group (the service, or its ``sh`` wrapper)."""

    pid: int
    start_ticks: int | None = None  # from /proc/<pid>/stat; guards against pid reuse
    log_file: str
    exit_file: str  # the command's exit code is written here (see local_process.spawn)
    started_at: float


class InstanceRecord(ProcessRecord):
    index: int
    node: str | None = None
    stop_requested: bool = False


class ServiceRecord(BaseModel):
    service_id: str
    spec: dict[str, Any]
    instances: list[InstanceRecord] = Field(default_factory=list)

    def service_spec(self) -> ServiceSpec:
        return spec_from_data(self.spec)


class AppRecord(BaseModel):
    app_id: str
    name: str
    kind: AppKind
    customer: str
    project_id: str | None = None
    services: dict[str, ServiceRecord] = Field(default_factory=dict)

    def ref(self) -> AppRef:
        return AppRef(
            app_id=self.app_id, name=self.name, kind=self.kind, customer=self.customer, project_id=self.project_id
        )


class DataServerRecord(ProcessRecord):
    node: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class LocalState(BaseModel):
    apps: dict[str, AppRecord] = Field(default_factory=dict)
    endpoints: dict[str, int] = Field(default_factory=dict, description="'app/service/port' -> planned port")
    data_servers: dict[str, DataServerRecord] = Field(default_factory=dict)

    def used_ports(self) -> set[int]:
        return set(self.endpoints.values()) | {record.port for record in self.data_servers.values()}


class StateFile(JsonStateFile[LocalState]):
    """Locked access to ``state.json``; no I/O until the first read or update."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, LocalState)
