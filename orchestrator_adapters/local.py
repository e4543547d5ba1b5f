"""The embedded default orchestrator: every service is a supervised process on this machine.

"Nodes" and "clusters" come from a small JSON file (see ``local_nodes``), so placement
and per-node data servers work on one box. ``start()`` runs one data server per learner
node. Services run their entry module under the spec's interpreter (or ``python``; see
:func:`~orchestrator_adapters.base.host_command`) with ``FLOPS_CONFIG`` (the spec's config as JSON)
in their environment; their output goes to ``<state_dir>/apps/<app>/<service>-<i>.log``.
A crashed service is reported FAILED with its exit code and last log line even if it
never published anything. Everything is remembered in ``<state_dir>/state.json``, so a
restarted manager still inspects and stops what an earlier one started.

Stopping a service ends every process it started: its process group, the processes
below it that left the group, and, through the owner marker every process inherits
(``FLOPS_OWNER``), those that were re-parented to PID 1 (e.g. Flower's
``flwr-serverapp``); deleting an app also ends whatever still works in its folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from flops_utils.data_client import DataServerClient, DataServerError
from flops_utils.process_groups import planned_port, port_is_free, process_alive, start_ticks
from flops_utils.service_config import CONFIG_ENV, DataServerConfig, DataServerSecurity, ServerCertificate
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
)
from orchestrator_adapters.local_nodes import NAME_PATTERN, LocalNode, load_nodes
from orchestrator_adapters.local_process import (
    OWNER_ENV,
    describe_exit,
    last_log_line,
    read_exit_file,
    spawn,
    stop_groups,
    watch,
)
from orchestrator_adapters.local_state import (
    AppRecord,
    DataServerRecord,
    InstanceRecord,
    LocalState,
    ServiceRecord,
    StateFile,
    spec_to_data,
)

log = logging.getLogger("flops.adapters.local")

_DATA_SERVER_ATTEMPTS = 3


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "x"


def make_app_id(customer: str, name: str) -> str:
    digest = hashlib.sha256(f"{customer}\0{name}".encode()).hexdigest()[:8]
    return f"{_slug(customer)}--{_slug(name)}-{digest}"


def _endpoint_key(app: AppRef, service_name: str, port: PortSpec) -> str:
    return f"{app.app_id}/{service_name}/{port.name}"


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
        self._nodes: list[LocalNode] | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # pid -> processes this object started
        self._children_lock = threading.Lock()
        # Owner markers start with this adapter's own key: another adapter's app of the same name is not ours.
        self._owner_key = hashlib.sha256(os.path.abspath(self.state_dir).encode()).hexdigest()[:12]

    def _owner(self, *parts: str) -> str:
        """The owner-marker prefix of an app, a service or one instance (see ``OWNER_ENV``)."""
        return "/".join((self._owner_key, *parts, ""))

    # -- nodes and data servers -------------------------------------------------------
    def nodes(self) -> list[LocalNode]:
        if self._nodes is None:
            self._nodes = load_nodes(self.settings.nodes_file)
        return self._nodes

    def start(self) -> None:
        """Start (or reuse, when an earlier manager's are still answering) one data server per learner node."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pending = [node for node in self.nodes() if node.learner and not self._data_server_answers(node.name)]
        for attempt in range(1, _DATA_SERVER_ATTEMPTS + 1):
            started = {node.name: self._start_data_server(node) for node in pending}
            failed = self._await_data_servers(started)
            pending = [node for node in pending if node.name in failed]
            if not pending:
                return
            if attempt == _DATA_SERVER_ATTEMPTS:
                name, reason = next(iter(failed.items()))
                raise AdapterError(f"the data server of node {name} did not start: {reason}")
            log.warning("data servers of %s did not start (%s); retrying on new ports", sorted(failed), failed)

    def _data_server_answers(self, node: str) -> bool:
        record = self.state.read().data_servers.get(node)
        if record is None or not process_alive(record.pid, record.start_ticks):
            return False
        try:
            self._data_client(record.address).ping(timeout=10.0)
        except DataServerError:
            log.warning("data server of %s (pid %d) does not answer; replacing it", node, record.pid)
            stop_groups(
                [(record.pid, record.start_ticks)],
                self.settings.stop_grace_s,
                owners=[self._owner("data-server", node)],
            )
            return False
        log.info("reusing the data server of %s at %s (pid %d)", node, record.address, record.pid)
        return True

    def _start_data_server(self, node: LocalNode) -> DataServerRecord:
        node_dir = self.state_dir / "nodes" / node.name
        earlier = self.state.read().data_servers.get(node.name)
        if earlier is not None:  # what is left of its process group must not hold the port or the storage
            stop_groups(
                [(earlier.pid, earlier.start_ticks)],
                self.settings.stop_grace_s,
                owners=[self._owner("data-server", node.name)],
            )
        with self.state.update() as state:
            previous = state.data_servers.get(node.name)
            used = state.used_ports()
            if previous is not None and self._port_frees(previous.port):
                port = previous.port  # keep the node's address stable across restarts
            else:
                port = planned_port(self.settings.host, used)
            security = self.settings.data_security
            config = DataServerConfig(
                node=node.name,
                host=self.settings.host,
                port=port,
                storage_dir=str(node_dir / "data"),
                max_upload_bytes=self.settings.data_server_max_upload_bytes,
                tls=ServerCertificate(cert_pem=security.cert_pem, key_pem=security.key_pem) if security else None,
                token_public_key_pem=security.token_public_key_pem if security else None,
            )
            env = {
                **os.environ,
                CONFIG_ENV: config.model_dump_json(),
                "PYTHONUNBUFFERED": "1",
                OWNER_ENV: self._owner("data-server", node.name),
            }
            log_file, exit_file = node_dir / "data-server.log", node_dir / f"data-server-{time.time_ns()}.exit"
            if previous is not None:
                Path(previous.exit_file).unlink(missing_ok=True)
            process = self._spawn(
                [self.settings.python, "-m", "services.data_server.main"],
                env=env,
                cwd=str(self.state_dir),
                log_file=str(log_file),
                exit_file=str(exit_file),
            )
            record = DataServerRecord(
                node=node.name,
                host=self.settings.host,
                port=port,
                pid=process.pid,
                start_ticks=start_ticks(process.pid),
                log_file=str(log_file),
                exit_file=str(exit_file),
                started_at=time.time(),
            )
            state.data_servers[node.name] = record
        log.info("started the data server of %s at %s (pid %d)", node.name, record.address, record.pid)
        return record

    def _data_client(self, address: str) -> DataServerClient:
        security = self.settings.data_security
        return DataServerClient(address, ca_pem=security.ca_pem if security else None)

    def _port_frees(self, port: int, timeout: float = 5.0) -> bool:
        """Whether ``port`` is (or within ``timeout`` becomes) free: a killed server's socket may linger briefly."""
        deadline = time.monotonic() + timeout
        while not port_is_free(self.settings.host, port):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _await_data_servers(self, records: dict[str, DataServerRecord]) -> dict[str, str]:
        """Wait until every data server answers; returns node -> reason for those that did not."""
        deadline = time.monotonic() + self.settings.data_server_timeout_s
        waiting, failed = dict(records), {}
        while waiting:
            for node, record in list(waiting.items()):
                try:
                    self._data_client(record.address).ping(timeout=1.0)
                    del waiting[node]
                    continue
                except DataServerError:
                    pass
                if not process_alive(record.pid, record.start_ticks):
                    failed[node] = describe_exit(
                        self._exit_code(record.pid, record.exit_file), last_log_line(record.log_file)
                    )
                    del waiting[node]
            if waiting and time.monotonic() > deadline:
                for node, record in waiting.items():
                    failed[node] = f"no answer at {record.address} within {self.settings.data_server_timeout_s:g}s"
                    stop_groups(
                        [(record.pid, record.start_ticks)],
                        self.settings.stop_grace_s,
                        owners=[self._owner("data-server", node)],
                    )
                break
            if waiting:
                time.sleep(0.1)
        return failed

    def list_nodes(self) -> list[NodeInfo]:
        servers = self.state.read().data_servers
        return [
            NodeInfo(
                name=node.name,
                cluster=node.cluster,
                labels=dict(node.labels),
                learner=node.learner,
                data_server=servers[node.name].address if node.learner and node.name in servers else None,
            )
            for node in self.nodes()
        ]

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
            owners=[self._owner(app.app_id)],
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

    def _check_placement(self, placement: Placement) -> None:
        names = {node.name for node in self.nodes()}
        clusters = {node.cluster for node in self.nodes() if node.cluster}
        if placement.node is not None and placement.node not in names:
            raise AdapterError(f"unknown node {placement.node!r}; nodes: {', '.join(sorted(names))}")
        if placement.cluster is not None and placement.cluster not in clusters:
            raise AdapterError(f"unknown cluster {placement.cluster!r}; clusters: {', '.join(sorted(clusters))}")

    def _node_for(self, placement: Placement) -> str | None:
        if placement.node is not None:
            return placement.node
        candidates = [
            node
            for node in self.nodes()
            if (placement.cluster is None or node.cluster == placement.cluster)
            and all(node.labels.get(key) == value for key, value in placement.node_labels.items())
        ]
        return candidates[0].name if candidates and (placement.cluster or placement.node_labels) else None

    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        if not re.fullmatch(NAME_PATTERN, spec.name):
            raise AdapterError(f"invalid service name {spec.name!r}: use up to 63 letters, digits, '.', '_' or '-'")
        if not host_command(spec, self.settings.python):
            raise AdapterError(
                f"service {spec.name!r} has no command; the local orchestrator runs commands, not images"
            )
        self._check_placement(spec.placement)
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
        env[OWNER_ENV] = self._owner(app.app_id, spec.name, str(index))
        env[CONFIG_ENV] = json.dumps(spec.config)
        env["FLOPS_INSTANCE_INDEX"] = str(index)
        env.pop("FLOPS_CONFIG_FILE", None)
        return env

    def _spawn(
        self,
        command: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        log_file: str,
        exit_file: str,
        memory_limit_mb: int | None = None,
    ) -> subprocess.Popen[bytes]:
        try:
            process = spawn(
                command, env=env, cwd=cwd, log_file=log_file, exit_file=exit_file, memory_limit_mb=memory_limit_mb
            )
        except OSError as error:
            raise AdapterError(f"cannot start {command[0]}: {error.strerror or error}") from error
        with self._children_lock:
            self._children[process.pid] = process
        watch(process, exit_file, on_exit=lambda: self._forget(process))
        return process

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        """The watcher reaped ``process`` and its exit code is on disk: nothing more to keep."""
        with self._children_lock:
            if self._children.get(process.pid) is process:
                del self._children[process.pid]

    def _alive(self, pid: int, ticks: int | None) -> bool:
        # Not Popen.poll(): the watcher thread blocks in wait() holding Popen's lock, so poll()
        # would answer "running" forever. An ended, unreaped child is a zombie: not alive.
        return process_alive(pid, ticks)

    def _exit_code(self, pid: int, exit_file: str) -> int | None:
        code = read_exit_file(exit_file)
        if code is None:
            with self._children_lock:
                process = self._children.get(pid)
            if process is not None:  # the wrapper itself was killed: the watcher records how
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = process.wait(timeout=2.0)
        return code

    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None:
        """Make ``instances`` instances run: live ones are kept, ended ones started again, extra ones stopped."""
        if instances < 1:
            raise AdapterError(f"cannot deploy {service_id!r} with {instances} instances; use undeploy to stop it")
        app_dir = self.state_dir / "apps" / app.app_id
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
                process = self._spawn(
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
                        node=self._node_for(spec.placement),
                        pid=process.pid,
                        start_ticks=start_ticks(process.pid),
                        log_file=str(log_file),
                        exit_file=str(exit_file),
                        started_at=time.time(),
                    )
                )
                log.info("started %s/%s-%d (pid %d)", app.app_id, service_id, index, process.pid)
            surplus_owners = [self._owner(app.app_id, service_id, str(extra.index)) for extra in by_index.values()]
            for extra in by_index.values():
                if self._alive(extra.pid, extra.start_ticks):
                    surplus.append((extra.pid, extra.start_ticks))
            record.instances = kept
        if surplus_owners:
            stop_groups(surplus, self.settings.stop_grace_s, owners=surplus_owners)

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
        stop_groups(targets, self.settings.stop_grace_s, owners=[self._owner(app.app_id, service_id)])

    def _instance_info(self, service_id: str, instance: InstanceRecord, spec: ServiceSpec) -> InstanceInfo:
        instance_id = f"{service_id}-{instance.index}"
        if self._alive(instance.pid, instance.start_ticks):
            return InstanceInfo(instance_id, instance.node, ServiceState.RUNNING)
        code = self._exit_code(instance.pid, instance.exit_file)
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

    # -- local extras --------------------------------------------------------------------
    def log_file(self, app: AppRef, service_id: str, index: int = 0) -> Path:
        return self.state_dir / "apps" / app.app_id / f"{service_id}-{index}.log"

    def stop_everything(self) -> None:
        """Stop every service of every app and every data server (suite shutdown, test teardown).

        Data server records stay, so the next ``start()`` brings each node back on its old port.
        """
        state = self.state.read()
        targets = [
            (instance.pid, instance.start_ticks)
            for app in state.apps.values()
            for service in app.services.values()
            for instance in service.instances
        ]
        targets += [(record.pid, record.start_ticks) for record in state.data_servers.values()]
        with self.state.update() as current:
            for app in current.apps.values():
                for service in app.services.values():
                    for instance in service.instances:
                        if self._alive(instance.pid, instance.start_ticks):
                            instance.stop_requested = True
        stop_groups(targets, self.settings.stop_grace_s, owners=[self._owner()])
