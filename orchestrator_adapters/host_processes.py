"""Services as supervised host processes: the app and service part of the local adapter.

Each instance runs its entry module under the spec's interpreter (or the ``python`` setting; see
:func:`~orchestrator_adapters.base.host_command`) with ``FLOPS_CONFIG`` (the spec's config as JSON)
in its environment; its output goes to ``<state_dir>/apps/<app>/<service>-<i>.log``. A crashed
service is reported FAILED with its exit code and last log line even if it never published
anything. Apps, specs and instance pids live in the ``apps`` section of ``state.json``, planned
ports in ``endpoints``. The local adapter runs every service this way; the container adapter
runs the services without an image this way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flops_utils.process_groups import planned_port, process_alive, start_ticks
from flops_utils.service_config import CONFIG_ENV, DataServerSecurity
from orchestrator_adapters.base import (
    AdapterError,
    AppKind,
    AppRef,
    Endpoint,
    InstanceInfo,
    Placement,
    PortSpec,
    ServiceInfo,
    ServiceSpec,
    ServiceState,
    host_command,
)
from orchestrator_adapters.local_nodes import NAME_PATTERN
from orchestrator_adapters.local_process import OWNER_ENV, Spawner, describe_exit, last_log_line, stop_groups
from orchestrator_adapters.local_state import (
    AppRecord,
    InstanceRecord,
    LocalState,
    ServiceRecord,
    StateFile,
    spec_to_data,
)
from orchestrator_adapters.node_fleet import FleetSettings, NodeFleet

log = logging.getLogger("flops.adapters.local")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "x"


def make_app_id(customer: str, name: str) -> str:
    digest = hashlib.sha256(f"{customer}\0{name}".encode()).hexdigest()[:8]
    return f"{_slug(customer)}--{_slug(name)}-{digest}"


def _endpoint_key(app: AppRef, service_name: str, port: PortSpec) -> str:
    return f"{app.app_id}/{service_name}/{port.name}"


@dataclass(frozen=True)
class HostProcessSettings:
    python: str  # the interpreter of specs that name none
    host: str  # address planned endpoints are reached at
    stop_grace_s: float  # SIGTERM to SIGKILL
    enforce_memory_limits: bool  # resources.memory_mb as an address-space limit


class HostProcesses:
    """Apps and their services as supervised process groups on this host; placement checked against the fleet."""

    def __init__(
        self, settings: HostProcessSettings, state_dir: Path, state: StateFile, spawner: Spawner, fleet: NodeFleet
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.state = state
        self.spawner = spawner
        self.fleet = fleet

    # -- apps --------------------------------------------------------------------------
    def create_app(self, name: str, kind: AppKind, customer: str, project_id: str | None = None) -> AppRef:
        app_id = make_app_id(customer, name)
        with self.state.update() as state:
            record = state.apps.get(app_id)
            if record is None:
                record = AppRecord(app_id=app_id, name=name, kind=kind, customer=customer, project_id=project_id)
                state.apps[app_id] = record
        (self.state_dir / "apps" / app_id).mkdir(parents=True, exist_ok=True)
        return record.ref()

    def find_app(self, name: str, customer: str) -> AppRef | None:
        record = self.state.read().apps.get(make_app_id(customer, name))
        return record.ref() if record is not None else None

    def delete_app(self, app: AppRef) -> None:
        record = self.state.read().apps.get(app.app_id)
        if record is None:
            return
        targets: list[tuple[int, int | None]] = []
        with self.state.update() as state:
            app_record = state.apps.get(app.app_id)
            for service in app_record.services.values() if app_record else []:
                for instance in service.instances:
                    if self._alive(instance.pid, instance.start_ticks):
                        instance.stop_requested = True
                        targets.append((instance.pid, instance.start_ticks))
        # Every service at once (one grace period, not one per service), with whatever is left of the app:
        # its services' children and processes working in its folder.
        stop_groups(
            targets,
            self.settings.stop_grace_s,
            owners=[self.spawner.owner(app.app_id)],
            folders=[self.state_dir / "apps" / app.app_id],
        )
        with self.state.update() as state:
            state.apps.pop(app.app_id, None)
            prefix = f"{app.app_id}/"
            state.endpoints = {key: port for key, port in state.endpoints.items() if not key.startswith(prefix)}

    def plan_endpoint(self, app: AppRef, service_name: str, port: PortSpec, placement: Placement) -> Endpoint:
        key = _endpoint_key(app, service_name, port)
        with self.state.update() as state:
            if key not in state.endpoints:
                state.endpoints[key] = planned_port(self.settings.host, state.used_ports())
            return Endpoint(self.settings.host, state.endpoints[key])

    # -- services ----------------------------------------------------------------------
    def _app_record(self, state: LocalState, app: AppRef) -> AppRecord:
        record = state.apps.get(app.app_id)
        if record is None:
            raise AdapterError(f"no app {app.name!r} (id {app.app_id}) on the local orchestrator")
        return record

    def _service_record(self, state: LocalState, app: AppRef, service_id: str) -> ServiceRecord:
        record = self._app_record(state, app).services.get(service_id)
        if record is None:
            raise AdapterError(f"no service {service_id!r} in app {app.name!r}")
        return record

    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        if not re.fullmatch(NAME_PATTERN, spec.name):
            raise AdapterError(f"invalid service name {spec.name!r}: use up to 63 letters, digits, '.', '_' or '-'")
        if not host_command(spec, self.settings.python):
            raise AdapterError(
                f"service {spec.name!r} has no command; the local orchestrator runs commands, not images"
            )
        self.fleet.check_placement(spec.placement)
        data = spec_to_data(spec)
        with self.state.update() as state:
            existing = self._app_record(state, app).services.get(spec.name)
            replaced = existing is not None and existing.spec != data
        if replaced:
            self.undeploy_service(app, spec.name)  # a new spec under a running name: the new one wins
        with self.state.update() as state:
            services = self._app_record(state, app).services
            if spec.name not in services or services[spec.name].spec != data:
                previous = services.get(spec.name)
                services[spec.name] = ServiceRecord(
                    service_id=spec.name, spec=data, instances=previous.instances if previous else []
                )
        return spec.name

    def _environment(self, app: AppRef, spec: ServiceSpec, index: int) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.environment}
        env[OWNER_ENV] = self.spawner.owner(app.app_id, spec.name, str(index))
        env[CONFIG_ENV] = json.dumps(spec.config)
        env["FLOPS_INSTANCE_INDEX"] = str(index)
        env.pop("FLOPS_CONFIG_FILE", None)
        return env

    def _alive(self, pid: int, ticks: int | None) -> bool:
        # Not Popen.poll(): the watcher thread blocks in wait() holding Popen's lock, so poll()
        # would answer "running" forever. An ended, unreaped child is a zombie: not alive.
        return process_alive(pid, ticks)

    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None:
        """Make ``instances`` instances run: live ones are kept, ended ones started again, extra ones stopped."""
        if instances < 1:
            raise AdapterError(f"cannot deploy {service_id!r} with {instances} instances; use undeploy to stop it")
        app_dir = self.state_dir / "apps" / app.app_id
        self._stop_leftovers(app, service_id, instances)
        surplus: list[tuple[int, int | None]] = []
        surplus_owners: list[str] = []
        with self.state.update() as state:
            record = self._service_record(state, app, service_id)
            spec = record.service_spec()
            cwd = spec.environment.get("FLOPS_WORKDIR") or str(app_dir)
            if not Path(cwd).is_dir():
                raise AdapterError(f"cannot start {service_id!r}: its working directory {cwd} does not exist")
            memory = spec.resources.memory_mb if self.settings.enforce_memory_limits else None
            by_index = {instance.index: instance for instance in record.instances}
            kept: list[InstanceRecord] = []
            for index in range(instances):
                current = by_index.pop(index, None)
                if current is not None and not current.stop_requested and self._alive(current.pid, current.start_ticks):
                    kept.append(current)
                    continue
                if current is not None:
                    Path(current.exit_file).unlink(missing_ok=True)
                log_file = app_dir / f"{service_id}-{index}.log"
                exit_file = app_dir / f"{service_id}-{index}-{time.time_ns()}.exit"
                command = list(host_command(spec, self.settings.python))
                process = self.spawner.spawn(
                    command,
                    env=self._environment(app, spec, index),
                    cwd=cwd,
                    log_file=str(log_file),
                    exit_file=str(exit_file),
                    memory_limit_mb=memory,
                )
                kept.append(
                    InstanceRecord(
                        index=index,
                        node=self.fleet.node_for(spec.placement),
                        pid=process.pid,
                        start_ticks=start_ticks(process.pid),
                        log_file=str(log_file),
                        exit_file=str(exit_file),
                        started_at=time.time(),
                    )
                )
                log.info("started %s/%s-%d (pid %d)", app.app_id, service_id, index, process.pid)
            surplus_owners = [
                self.spawner.owner(app.app_id, service_id, str(extra.index)) for extra in by_index.values()
            ]
            for extra in by_index.values():
                if self._alive(extra.pid, extra.start_ticks):
                    surplus.append((extra.pid, extra.start_ticks))
            record.instances = kept
        if surplus_owners:
            stop_groups(surplus, self.settings.stop_grace_s, owners=surplus_owners)

    def _stop_leftovers(self, app: AppRef, service_id: str, instances: int) -> None:
        """What ended instances started may still run (a killed builder's pip, git or uv, in sessions of their
        own): it is stopped before the instance starts again, so two never work in the same place."""
        record = self._service_record(self.state.read(), app, service_id)
        ended = [
            instance.index
            for instance in record.instances
            if instance.index < instances and not self._alive(instance.pid, instance.start_ticks)
        ]
        if ended:
            owners = [self.spawner.owner(app.app_id, service_id, str(index)) for index in ended]
            stop_groups([], self.settings.stop_grace_s, owners=owners)

    def undeploy_service(self, app: AppRef, service_id: str) -> None:
        targets: list[tuple[int, int | None]] = []
        with self.state.update() as state:
            app_record = state.apps.get(app.app_id)
            record = app_record.services.get(service_id) if app_record else None
            for instance in record.instances if record else []:
                if self._alive(instance.pid, instance.start_ticks):
                    instance.stop_requested = True
                    targets.append((instance.pid, instance.start_ticks))
        if targets:
            log.info("stopping %s/%s (pids %s)", app.app_id, service_id, [pid for pid, _ in targets])
        # Also when every instance has ended: what they started may still run on its own.
        stop_groups(targets, self.settings.stop_grace_s, owners=[self.spawner.owner(app.app_id, service_id)])

    def _instance_info(self, service_id: str, instance: InstanceRecord, spec: ServiceSpec) -> InstanceInfo:
        instance_id = f"{service_id}-{instance.index}"
        if self._alive(instance.pid, instance.start_ticks):
            return InstanceInfo(instance_id, instance.node, ServiceState.RUNNING)
        code = self.spawner.exit_code(instance.pid, instance.exit_file)
        if instance.stop_requested:
            return InstanceInfo(instance_id, instance.node, ServiceState.STOPPED, code, "stopped on request")
        if code == 0:
            return InstanceInfo(instance_id, instance.node, ServiceState.SUCCEEDED, 0)
        detail = describe_exit(code, last_log_line(instance.log_file))
        return InstanceInfo(instance_id, instance.node, ServiceState.FAILED, code, detail)

    def inspect_service(self, app: AppRef, service_id: str) -> ServiceInfo:
        record = self._service_record(self.state.read(), app, service_id)
        spec = record.service_spec()
        instances = tuple(self._instance_info(service_id, instance, spec) for instance in record.instances)
        states = [instance.state for instance in instances]
        failed = [instance for instance in instances if instance.state is ServiceState.FAILED]
        if not instances:
            return ServiceInfo(service_id, ServiceState.PENDING, instances, "not deployed")
        if failed:
            first = failed[0]
            detail = first.detail if len(instances) == 1 else f"instance {first.instance_id}: {first.detail}"
            return ServiceInfo(service_id, ServiceState.FAILED, instances, detail)
        if ServiceState.RUNNING in states:
            return ServiceInfo(service_id, ServiceState.RUNNING, instances)
        if all(state is ServiceState.SUCCEEDED for state in states):
            return ServiceInfo(service_id, ServiceState.SUCCEEDED, instances)
        return ServiceInfo(service_id, ServiceState.STOPPED, instances, "stopped on request")

    def log_file(self, app: AppRef, service_id: str, index: int = 0) -> Path:
        return self.state_dir / "apps" / app.app_id / f"{service_id}-{index}.log"

    def stop_all(self, also: list[tuple[int, int | None]]) -> None:
        """Stop every instance of every app, ``also`` those processes, and whatever else carries this
        state directory's owner marker, in one grace period."""
        state = self.state.read()
        targets = [
            (instance.pid, instance.start_ticks)
            for app in state.apps.values()
            for service in app.services.values()
            for instance in service.instances
        ]
        with self.state.update() as current:
            for app in current.apps.values():
                for service in app.services.values():
                    for instance in service.instances:
                        if self._alive(instance.pid, instance.start_ticks):
                            instance.stop_requested = True
        stop_groups(targets + also, self.settings.stop_grace_s, owners=[self.spawner.owner()])


class HostSettings(Protocol):
    """What the local and the container adapter's settings both say about the host's nodes and processes."""

    @property
    def nodes_file(self) -> str | None: ...
    @property
    def python(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def stop_grace_s(self) -> float: ...
    @property
    def data_server_timeout_s(self) -> float: ...
    @property
    def data_server_max_upload_bytes(self) -> int: ...
    @property
    def data_security(self) -> DataServerSecurity | None: ...


def host_pieces(
    settings: HostSettings, directory: Path, state: StateFile, *, enforce_memory_limits: bool
) -> tuple[NodeFleet, HostProcesses]:
    """The node fleet (inventory and data servers) and the host processes, sharing ``state`` and one spawner
    under ``directory``: what the local adapter is, and what the container adapter runs image-less services on."""
    spawner = Spawner(directory)
    fleet = NodeFleet(
        FleetSettings(
            nodes_file=settings.nodes_file,
            python=settings.python,
            host=settings.host,
            stop_grace_s=settings.stop_grace_s,
            timeout_s=settings.data_server_timeout_s,
            max_upload_bytes=settings.data_server_max_upload_bytes,
            security=settings.data_security,
        ),
        directory,
        state,
        spawner,
    )
    processes = HostProcesses(
        HostProcessSettings(
            python=settings.python,
            host=settings.host,
            stop_grace_s=settings.stop_grace_s,
            enforce_memory_limits=enforce_memory_limits,
        ),
        directory,
        state,
        spawner,
        fleet,
    )
    return fleet, processes
