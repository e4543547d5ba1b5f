"""What the container adapter remembers in ``<state_dir>/state.json``.

Containers themselves carry labels (app, service, instance index), so the engine is
the truth about what runs; the file keeps what the engine cannot: apps without
containers, registered service specs, whether an undeploy was requested (so a
container stopped on request reads STOPPED, not FAILED) and planned ports.
Every change is a locked read-modify-write (temp file + rename).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from orchestrator_adapters.base import AppKind, AppRef, ServiceSpec
from orchestrator_adapters.local_state import spec_from_data


class ContainerServiceRecord(BaseModel):
    service_id: str
    spec: dict[str, Any]
    instances: int = 0  # how many were last deployed
    stop_requested: bool = False

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
        return AppRef(app_id=self.app_id, name=self.name, kind=self.kind, customer=self.customer,
                      project_id=self.project_id)


class ContainerState(BaseModel):
    apps: dict[str, ContainerAppRecord] = Field(default_factory=dict)
    endpoints: dict[str, int] = Field(default_factory=dict, description="'app/service/port' -> planned host port")


class ContainerStateFile:
    """Locked access to ``state.json``; no I/O until the first read or update."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "state.json"
        self._lock_path = directory / "state.lock"
        self._thread_lock = threading.RLock()
        self._depth = 0  # guarded by _thread_lock: nested use in one thread must not flock twice

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> ContainerState:
        if not self.path.exists():
            return ContainerState()
        return ContainerState.model_validate_json(self.path.read_text())

    def read(self) -> ContainerState:
        with self._locked():
            return self._load()

    @contextmanager
    def update(self) -> Iterator[ContainerState]:
        """Yield the current state; what the block changes is saved when it ends without error."""
        with self._locked():
            state = self._load()
            yield state
            temporary = self.path.with_suffix(".json.tmp")
            temporary.write_text(state.model_dump_json(indent=1))
            os.replace(temporary, self.path)
