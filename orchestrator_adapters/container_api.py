"""The Docker-compatible API the container adapter talks to.

Either a given endpoint (Docker's or Podman's socket), or our own
``podman system service`` started on the FLOps container storage (the same storage
the OCI builder uses) with runc, raised ulimits, and the internal registry's own CA
trusted (or the registry marked insecure when it has no TLS). The service runs in its own process group and is stopped
by :meth:`ContainerApi.close`; containers keep running without it (conmon supervises them).
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors
import requests

from flops_utils.container_storage import (
    ContainerStorage,
    ContainerToolMissing,
    StorageSettings,
    default_root,
    find_tool,
    install_registry_ca,
)
from orchestrator_adapters.base import AdapterError
from orchestrator_adapters.container_settings import ContainerSettings
from orchestrator_adapters.local_process import last_log_line

API_VERSION = "1.41"
SERVICE_START_TIMEOUT_S = 120.0


def _socket_path(state_dir: Path) -> Path:
    """A short socket path (unix sockets are limited to ~107 bytes) unique to the state dir."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"flops-podman-{tag}.sock"


class ContainerApi:
    """A docker SDK client for the configured endpoint; no I/O until :meth:`start`."""

    def __init__(self, settings: ContainerSettings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.log_file = self.state_dir / "podman-service.log"
        self._client: docker.DockerClient | None = None
        self._service: subprocess.Popen[bytes] | None = None
        self.base_url = settings.docker_host or f"unix://{_socket_path(self.state_dir)}"

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise AdapterError("the container adapter is not started (call start())")
        return self._client

    def start(self) -> None:
        if self._client is not None:
            return
        base_url = self.base_url
        if self.settings.docker_host is None and not self._answers(base_url):
            self._start_service(_socket_path(self.state_dir))
        timeout = int(self.settings.api_timeout_s)
        self._client = docker.DockerClient(base_url=base_url, version=API_VERSION, timeout=timeout)
        try:
            self._client.ping()
        except (docker.errors.DockerException, requests.RequestException) as error:
            self.close()
            raise AdapterError(f"the container API at {base_url} does not answer: {error}") from None

    @staticmethod
    def _answers(base_url: str) -> bool:
        probe: docker.DockerClient | None = None
        try:
            probe = docker.DockerClient(base_url=base_url, version=API_VERSION, timeout=5)
            return bool(probe.ping())
        except (docker.errors.DockerException, requests.RequestException, OSError):
            return False
        finally:
            if probe is not None:
                probe.close()

    def engine(self) -> ContainerStorage:
        """The FLOps container storage (the OCI builder's too), whose configuration the service runs with."""
        root = Path(self.settings.containers_dir).expanduser() if self.settings.containers_dir else default_root()
        return ContainerStorage(StorageSettings(root=root))

    def _start_service(self, socket: Path) -> None:
        registry = self.settings.registry
        insecure = [registry.address] if registry is not None and not registry.verifies_tls else []
        try:
            engine = self.engine()
            env = engine.environment(insecure)
            if registry is not None and install_registry_ca(engine.root, registry) is not None:
                env["HOME"] = str(engine.home)  # podman reads a registry's own CA only from $HOME's certs.d
            podman = find_tool("podman")
        except ContainerToolMissing as error:
            raise AdapterError(str(error)) from None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        socket.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self._service = subprocess.Popen(
                [podman, "system", "service", "--time=0", f"unix://{socket}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=self.state_dir,
            )
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while not self._answers(f"unix://{socket}"):
            if self._service.poll() is not None:
                detail = last_log_line(str(self.log_file)) or f"exit code {self._service.returncode}"
                self._service = None
                raise AdapterError(f"podman system service exited at start: {detail}")
            if time.monotonic() > deadline:
                self._stop_service()
                raise AdapterError(f"podman system service did not answer within {SERVICE_START_TIMEOUT_S:g} s")
            time.sleep(0.1)

    def _stop_service(self) -> None:
        service, self._service = self._service, None
        if service is None or service.poll() is not None:
            return
        # Only the service itself: the conmon processes it started supervise running containers.
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._stop_service()
