"""Services as containers on one host, through the Docker-compatible API (Docker or ``podman system service``).

Behaves like the local adapter, with images instead of commands:

* every instance is a container named ``flops-<app id>-<service>-<index>`` on the host
  network, labelled with its app, service and index, with memory and CPU limits from
  the spec's :class:`Resources` (never below ``min_memory_mb``);
* images come from the internal registry, pulled with its credentials;
* one-shot kinds run to completion (SUCCEEDED on exit 0); a container that ends
  otherwise is FAILED with its exit code and last log line (or "out of memory");
  undeploying stops and keeps it, so it reads STOPPED; undeploy and delete_app are
  idempotent;
* nodes come from the same node file as the local adapter, through the same
  :class:`~orchestrator_adapters.node_fleet.NodeFleet`, which starts one data server per
  learner node on this host (the containers share the host network);
* ``plan_endpoint`` hands out a free host port per (app, service, port), stable across calls.

A spec without an image (the lifecycle's builder, observer and tracking server when no
manager image is configured) runs as a supervised host process through
:class:`~orchestrator_adapters.host_processes.HostProcesses`, as the local adapter runs every
service: the OCI builder needs buildah on the host anyway. The fleet and the host processes keep their state in
``<state_dir>/nodes/state.json``.

A spec's entry module runs as ``python -m MODULE`` with the image's ``python`` (an explicit
``spec.command`` overrides the image's entrypoint as given); a host process runs it under the
``python`` setting (see :func:`~orchestrator_adapters.base.host_command`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from flops_utils.process_groups import planned_port
from flops_utils.service_config import CONFIG_ENV
from orchestrator_adapters.base import (
    AdapterCapabilities,
    AdapterError,
    AppKind,
    AppRef,
    ConfigDelivery,
    Endpoint,
    InstanceInfo,
    NodeInfo,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    ServiceInfo,
    ServiceSpec,
    ServiceState,
    host_command,
    image_command,
)
from orchestrator_adapters.container_api import ContainerApi
from orchestrator_adapters.container_settings import ContainerSettings
from orchestrator_adapters.container_state import ContainerAppRecord, ContainerServiceRecord, ContainerStateFile
from orchestrator_adapters.host_processes import host_pieces, make_app_id
from orchestrator_adapters.local_nodes import NAME_PATTERN
from orchestrator_adapters.local_process import describe_exit
from orchestrator_adapters.local_state import StateFile, spec_to_data

log = logging.getLogger("flops.adapters.container")

LABEL_MANAGED = "io.flops.managed"
LABEL_APP = "io.flops.app"
LABEL_SERVICE = "io.flops.service-id"
LABEL_INDEX = "io.flops.index"
LABEL_NODE = "io.flops.node"
_RUNNING = ("running", "restarting", "paused")
_NOT_STARTED = ("created", "configured", "initialized")
_API_ERRORS = (docker.errors.DockerException, requests.RequestException)
_LOG_ATTEMPTS = 10


def _api_error(action: str, error: Exception) -> AdapterError:
    text = getattr(error, "explanation", None) or str(error)
    return AdapterError(f"{action}: {' '.join(str(text).split())[:300]}")


def container_name(app_id: str, service_id: str, index: int) -> str:
    return f"flops-{app_id}-{service_id}-{index}"


def log_file_lines(path: str) -> list[str]:
    """Lines of a k8s-file container log (``<time> <stream> <F|P> <text>``), partial lines joined."""
    try:
        raw = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    lines, pending = [], ""
    for entry in raw:
        parts = entry.split(" ", 3)
        if len(parts) < 3:
            continue
        text = parts[3] if len(parts) == 4 else ""
        if parts[2] == "P":
            pending += text
            continue
        lines.append(pending + text)
        pending = ""
    return lines + ([pending] if pending else [])


def _read_logs(container: Any, tail: int) -> str:
    """The last ``tail`` lines an instance wrote.

    The engine's own log file is read first when it is on this host (a local engine): Podman's
    compat log stream sometimes answers with nothing for a container that has just ended, or
    drops the first bytes of a frame. The API answers for remote engines; both are asked again
    briefly while neither has anything.
    """
    text = ""
    log_path = str(container.attrs.get("LogPath") or "")
    for attempt in range(_LOG_ATTEMPTS):
        if log_path and Path(log_path).is_file():
            text = "\n".join(log_file_lines(log_path)[-tail:])
        if not text.strip():
            text = str(container.logs(tail=tail).decode("utf-8", errors="replace"))
        if text.strip() or attempt == _LOG_ATTEMPTS - 1:
            break
        time.sleep(0.3)
        container.reload()
    return text


def _last_log_line(container: Any, limit: int = 300) -> str:
    try:
        tail = _read_logs(container, 20)
    except _API_ERRORS:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 3] + "..."


class ContainerAdapter(OrchestratorAdapter):
    name = "container"
    capabilities = AdapterCapabilities(
        runs_images=True,
        host_processes=True,
        bind_host="0.0.0.0",
        config_delivery=ConfigDelivery.ENVIRONMENT,
        private_configs=True,
        runs_data_servers=True,
    )

    def __init__(self, settings: ContainerSettings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.state = ContainerStateFile(self.state_dir)
        self.api = ContainerApi(settings)
        # The pieces shared with the local adapter: node file and data servers, host processes.
        host_dir = self.state_dir / "nodes"
        self.fleet, self.host_processes = host_pieces(
            settings, host_dir, StateFile(host_dir), enforce_memory_limits=False
        )

    # -- lifecycle of the adapter ----------------------------------------------------------
    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.api.start()
        self.fleet.start()

    def close(self) -> None:
        self.api.close()

    def stop_everything(self, remove: bool = False) -> None:
        """Stop (or remove) every container of this adapter's apps and every node data server (tests, shutdown)."""
        for app_id in self.state.read().apps:
            for container in self._containers({LABEL_APP: app_id}):
                if remove:
                    self._remove(container)
                else:
                    self._stop(container)
        self.host_processes.stop_all(also=self.fleet.processes())

    # -- nodes -------------------------------------------------------------------------------
    def list_nodes(self) -> list[NodeInfo]:
        return self.fleet.list_nodes()

    def revive_data_servers(self) -> list[str]:
        return self.fleet.revive()

    # -- apps --------------------------------------------------------------------------------
    def create_app(self, name: str, kind: AppKind, customer: str, project_id: str | None = None) -> AppRef:
        app_id = make_app_id(customer, name)
        with self.state.update() as state:
            record = state.apps.get(app_id)
            if record is None:
                record = ContainerAppRecord(
                    app_id=app_id, name=name, kind=kind, customer=customer, project_id=project_id
                )
                state.apps[app_id] = record
        self.host_processes.create_app(name, kind, customer, project_id)  # same app id: for host services
        return record.ref()

    def find_app(self, name: str, customer: str) -> AppRef | None:
        record = self.state.read().apps.get(make_app_id(customer, name))
        return record.ref() if record is not None else None

    def delete_app(self, app: AppRef) -> None:
        record = self.state.read().apps.get(app.app_id)
        if record is None:
            return
        # Every service at once: each container gets its stop grace period in parallel, not one after another.
        services = list(record.services)
        if services:
            with ThreadPoolExecutor(max_workers=min(8, len(services)), thread_name_prefix="stop") as pool:
                list(pool.map(lambda service_id: self.undeploy_service(app, service_id), services))
        for container in self._containers({LABEL_APP: app.app_id}):
            self._remove(container)
        self.host_processes.delete_app(app)
        with self.state.update() as state:
            state.apps.pop(app.app_id, None)
            prefix = f"{app.app_id}/"
            state.endpoints = {key: port for key, port in state.endpoints.items() if not key.startswith(prefix)}

    def plan_endpoint(self, app: AppRef, service_name: str, port: PortSpec, placement: Placement) -> Endpoint:
        key = f"{app.app_id}/{service_name}/{port.name}"
        with self.state.update() as state:
            if key not in state.endpoints:
                used = set(state.endpoints.values()) | {
                    int(node.data_server.rsplit(":", 1)[1]) for node in self.list_nodes() if node.data_server
                }
                state.endpoints[key] = planned_port(self.settings.host, used)
            return Endpoint(self.settings.host, state.endpoints[key])

    # -- services ------------------------------------------------------------------------------
    def _service_record(self, app: AppRef, service_id: str) -> ContainerServiceRecord:
        app_record = self.state.read().apps.get(app.app_id)
        if app_record is None:
            raise AdapterError(f"no app {app.name!r} (id {app.app_id}) on the container orchestrator")
        record = app_record.services.get(service_id)
        if record is None:
            raise AdapterError(f"no service {service_id!r} in app {app.name!r}")
        return record

    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        if not re.fullmatch(NAME_PATTERN, spec.name):
            raise AdapterError(f"invalid service name {spec.name!r}: use up to 63 letters, digits, '.', '_' or '-'")
        self.fleet.check_placement(spec.placement)
        data = spec_to_data(spec)
        existing = self.state.read().apps.get(app.app_id)
        if existing is None:
            raise AdapterError(f"no app {app.name!r} (id {app.app_id}) on the container orchestrator")
        host_process = not spec.image
        previous = existing.services.get(spec.name)
        if previous is not None and previous.spec != data:
            self.undeploy_service(app, spec.name)  # a new spec under a running name: the new one wins
            for container in self._service_containers(app, spec.name):
                self._remove(container)
        if host_process:
            if not host_command(spec, self.settings.python):
                raise AdapterError(f"service {spec.name!r} has neither an image nor a command")
            self.host_processes.add_service(app, spec)  # its python setting is this adapter's
        with self.state.update() as state:
            services = state.apps[app.app_id].services
            if spec.name not in services or services[spec.name].spec != data:
                services[spec.name] = ContainerServiceRecord(service_id=spec.name, spec=data, host_process=host_process)
        return spec.name

    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None:
        """Make ``instances`` containers run: live ones are kept, ended ones replaced, extra ones removed."""
        if instances < 1:
            raise AdapterError(f"cannot deploy {service_id!r} with {instances} instances; use undeploy to stop it")
        record = self._service_record(app, service_id)
        if record.host_process:
            self.host_processes.deploy_service(app, service_id, instances)
            return
        spec = record.service_spec()
        assert spec.image is not None  # add_service checked it
        self._ensure_image(spec.image)
        with self.state.update() as state:
            stored = state.apps[app.app_id].services[service_id]
            stored.instances, stored.stop_requested = instances, False
        existing = {
            int(container.labels.get(LABEL_INDEX, "-1")): container
            for container in self._service_containers(app, service_id)
        }
        for index in range(instances):
            current = existing.pop(index, None)
            if current is not None and current.status in _RUNNING:
                continue
            if current is not None:
                self._remove(current)
            self._run(app, spec, index)
        for extra in existing.values():
            self._remove(extra)

    def _ensure_image(self, image: str) -> None:
        client = self.api.client
        if self.settings.pull_policy == "missing":
            try:
                client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                pass
            except _API_ERRORS as error:
                raise _api_error(f"cannot inspect image {image}", error) from None
        repository, tag = self._split(image)
        registry = self.settings.registry
        auth = None
        if registry is not None and image.startswith(f"{registry.address}/") and registry.username:
            auth = {"username": registry.username, "password": registry.password or ""}
        try:
            client.images.pull(repository, tag=tag, auth_config=auth)
        except _API_ERRORS as error:
            raise _api_error(f"cannot pull {image}", error) from None

    @staticmethod
    def _split(image: str) -> tuple[str, str | None]:
        if "@" in image:
            repository, digest = image.split("@", 1)
            return repository, digest
        last = image.rsplit("/", 1)[-1]
        if ":" in last:
            repository, tag = image.rsplit(":", 1)
            return repository, tag
        return image, "latest"

    def _run(self, app: AppRef, spec: ServiceSpec, index: int) -> None:
        environment = {
            "PYTHONUNBUFFERED": "1",
            **spec.environment,
            CONFIG_ENV: json.dumps(spec.config),
            "FLOPS_INSTANCE_INDEX": str(index),
        }
        environment.pop("FLOPS_CONFIG_FILE", None)
        environment.pop("FLOPS_WORKDIR", None)  # a host path; the image has its own working directory
        node = self.fleet.node_for(spec.placement)
        labels = {
            LABEL_MANAGED: "true",
            LABEL_APP: app.app_id,
            LABEL_SERVICE: spec.name,
            LABEL_INDEX: str(index),
            LABEL_NODE: node or "",
            "io.flops.kind": spec.kind.value,
            "io.flops.project": app.project_id or "",
        }
        options: dict[str, Any] = {}
        if self.settings.enforce_resources:
            memory = max(spec.resources.memory_mb, self.settings.min_memory_mb)
            options["mem_limit"] = options["memswap_limit"] = f"{memory}m"  # no swap beyond the limit
            options["nano_cpus"] = int(spec.resources.vcpus * 1_000_000_000)
        entrypoint = image_command(spec)
        if entrypoint:
            options["entrypoint"], options["command"] = list(entrypoint), []
        name = container_name(app.app_id, spec.name, index)
        try:
            self.api.client.containers.run(
                spec.image,
                name=name,
                environment=environment,
                labels=labels,
                network_mode="host",
                detach=True,
                **options,
            )
        except _API_ERRORS as error:
            raise _api_error(f"cannot start {name}", error) from None
        log.info("started container %s from %s", name, spec.image)

    def undeploy_service(self, app: AppRef, service_id: str) -> None:
        with self.state.update() as state:
            app_record = state.apps.get(app.app_id)
            record = app_record.services.get(service_id) if app_record else None
            if record is not None:
                record.stop_requested = True
        if record is not None and record.host_process:
            self.host_processes.undeploy_service(app, service_id)
            return
        for container in self._service_containers(app, service_id):
            self._stop(container)

    def _stop(self, container: Any) -> None:
        try:
            container.reload()
            if container.status in _RUNNING or container.status in _NOT_STARTED:
                container.stop(timeout=max(1, int(self.settings.stop_grace_s)))
        except docker.errors.NotFound:
            return
        except _API_ERRORS as error:
            raise _api_error(f"cannot stop {container.name}", error) from None

    def _remove(self, container: Any) -> None:
        for attempt in range(3):
            try:
                container.remove(force=True)
                return
            except docker.errors.NotFound:
                return
            except _API_ERRORS as error:  # e.g. a container that is just exiting: try again shortly
                if attempt == 2:
                    raise _api_error(f"cannot remove {container.name}", error) from None
                log.warning("removing %s failed (%s); retrying", container.name, error)
                time.sleep(1.0)

    def _containers(self, labels: dict[str, str]) -> list[Any]:
        try:
            return list(
                self.api.client.containers.list(
                    all=True, filters={"label": [f"{key}={value}" for key, value in labels.items()]}
                )
            )
        except _API_ERRORS as error:
            raise _api_error("cannot list containers", error) from None

    def _service_containers(self, app: AppRef, service_id: str) -> list[Any]:
        return self._containers({LABEL_APP: app.app_id, LABEL_SERVICE: service_id})

    def _instance_info(self, container: Any, stop_requested: bool) -> InstanceInfo:
        index = container.labels.get(LABEL_INDEX, "0")
        instance_id = f"{container.labels.get(LABEL_SERVICE, '?')}-{index}"
        node = container.labels.get(LABEL_NODE) or None
        state = container.attrs.get("State", {})
        status = str(state.get("Status", container.status)).lower()
        if status in _RUNNING:
            return InstanceInfo(instance_id, node, ServiceState.RUNNING)
        if status in _NOT_STARTED:
            return InstanceInfo(instance_id, node, ServiceState.PENDING)
        code = state.get("ExitCode")
        code = int(code) if code is not None else None
        if stop_requested:
            return InstanceInfo(instance_id, node, ServiceState.STOPPED, code, "stopped on request")
        if code == 0:
            return InstanceInfo(instance_id, node, ServiceState.SUCCEEDED, 0)
        limit_mb = int(container.attrs.get("HostConfig", {}).get("Memory") or 0) // (1024 * 1024)
        if state.get("OOMKilled"):
            detail = f"container ran out of memory (limit {limit_mb} MB)"
            return InstanceInfo(instance_id, node, ServiceState.FAILED, code, detail)
        last_line = _last_log_line(container) or str(state.get("Error") or "").strip()
        detail = describe_exit(code, "")
        if code == 137 and limit_mb:
            # Not every engine reports OOM kills (podman with cgroup v1 does not); SIGKILL is the usual sign.
            detail += f", probably out of memory (limit {limit_mb} MB)"
        return InstanceInfo(
            instance_id, node, ServiceState.FAILED, code, f"{detail}: {last_line}" if last_line else detail
        )

    def inspect_service(self, app: AppRef, service_id: str) -> ServiceInfo:
        record = self._service_record(app, service_id)
        if record.host_process:
            return self.host_processes.inspect_service(app, service_id)
        containers = sorted(
            self._service_containers(app, service_id), key=lambda container: int(container.labels.get(LABEL_INDEX, "0"))
        )
        if record.instances == 0:
            return ServiceInfo(service_id, ServiceState.PENDING, (), "not deployed")
        instances = tuple(self._instance_info(container, record.stop_requested) for container in containers)
        if not instances:
            if record.stop_requested:
                return ServiceInfo(service_id, ServiceState.STOPPED, (), "stopped on request")
            return ServiceInfo(service_id, ServiceState.FAILED, (), "its containers were removed outside FLOps")
        states = [instance.state for instance in instances]
        failed = [instance for instance in instances if instance.state is ServiceState.FAILED]
        if failed:
            first = failed[0]
            detail = first.detail if len(instances) == 1 else f"instance {first.instance_id}: {first.detail}"
            return ServiceInfo(service_id, ServiceState.FAILED, instances, detail)
        if ServiceState.RUNNING in states:
            return ServiceInfo(service_id, ServiceState.RUNNING, instances)
        if ServiceState.PENDING in states:
            return ServiceInfo(service_id, ServiceState.PENDING, instances, "starting")
        if all(state is ServiceState.SUCCEEDED for state in states):
            return ServiceInfo(service_id, ServiceState.SUCCEEDED, instances)
        return ServiceInfo(service_id, ServiceState.STOPPED, instances, "stopped on request")

    # -- container extras ------------------------------------------------------------------------
    def logs(self, app: AppRef, service_id: str, index: int = 0, tail: int = 200) -> str:
        """The last ``tail`` lines an instance wrote (tests, diagnostics)."""
        for container in self._service_containers(app, service_id):
            if container.labels.get(LABEL_INDEX) == str(index):
                try:
                    return _read_logs(container, tail)
                except _API_ERRORS as error:
                    raise _api_error(f"cannot read the logs of {container.name}", error) from None
        return ""
