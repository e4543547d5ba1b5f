"""What a running suite looks like on disk: ``endpoints.json`` (mode 0600) in its state dir."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from flops_utils.service_config import MqttSettings, RegistrySettings
from manager.suite.processes import ProcessRecord

ENDPOINTS_FILE = "endpoints.json"
LOCK_FILE = "suite.lock"
HOST = "127.0.0.1"

MOSQUITTO = "mosquitto"
SECANTUSDB = "secantusdb"
REGISTRY = "registry"


@dataclass
class RegistryEndpoint:
    address: str
    username: str
    password: str
    ca_pem: str | None = None  # the suite's CA when the registry speaks TLS

    def settings(self) -> RegistrySettings:
        """What a builder or an adapter needs to push to and pull from this registry."""
        return RegistrySettings(
            address=self.address, username=self.username, password=self.password, ca_pem=self.ca_pem
        )


@dataclass
class SuiteEndpoints:
    state_dir: str
    mqtt: MqttSettings
    mongo_uri: str
    registry: RegistryEndpoint | None


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(_Record):
    username: str
    password: str = Field(repr=False)


class ComponentState(_Record):
    port: int
    pid: int = 0
    start_ticks: int = 0
    credentials: Credentials | None = None
    ca_pem: str | None = None  # the suite's CA certificate when the component speaks TLS (not secret)

    @property
    def process(self) -> ProcessRecord:
        return ProcessRecord(pid=self.pid, start_ticks=self.start_ticks)

    def started_as(self, process: ProcessRecord) -> None:
        self.pid, self.start_ticks = process.pid, process.start_ticks


class SuiteState(_Record):
    """Everything needed to find, reach and stop a suite again."""

    state_dir: str
    components: dict[str, ComponentState] = Field(default_factory=dict)

    def endpoints(self) -> SuiteEndpoints:
        broker = self.components[MOSQUITTO]
        if broker.credentials is None:
            raise ValueError("the broker record has no credentials")
        registry = self.components.get(REGISTRY)
        return SuiteEndpoints(
            state_dir=self.state_dir,
            mqtt=MqttSettings(
                host=HOST,
                port=broker.port,
                username=broker.credentials.username,
                password=broker.credentials.password,
                ca_pem=broker.ca_pem,
            ),
            mongo_uri=f"mongodb://{HOST}:{self.components[SECANTUSDB].port}",
            registry=(
                RegistryEndpoint(
                    address=f"{HOST}:{registry.port}",
                    username=registry.credentials.username,
                    password=registry.credentials.password,
                    ca_pem=registry.ca_pem,
                )
                if registry is not None and registry.credentials is not None
                else None
            ),
        )


def read_state(state_dir: Path) -> SuiteState | None:
    path = state_dir / ENDPOINTS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return SuiteState.model_validate_json(text)
    except ValueError:
        return None


def write_state(state_dir: Path, state: SuiteState) -> None:
    """Replace endpoints.json atomically; it holds passwords, so only the owner may read it."""
    path = state_dir / ENDPOINTS_FILE
    scratch = path.with_name(f".{ENDPOINTS_FILE}.{os.getpid()}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(state.model_dump(mode="json"), handle, indent=2)
        handle.write("\n")
    os.chmod(scratch, 0o600)
    os.replace(scratch, path)


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialise start/stop of one suite across processes."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(state_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
