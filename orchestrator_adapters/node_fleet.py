"""The nodes of a one-host orchestrator and their data servers: the piece the local and container adapters share.

Nodes and clusters come from the nodes file (see ``local_nodes``). ``start()`` runs one
Arrow Flight data server per learner node as a supervised host process (the containers of
the container adapter share the host network, so they reach them too), or reuses the one an
earlier manager started when it still answers. Each server is remembered in the
``data_servers`` section of the adapter's ``state.json``; a replaced server gets its old port
back when the port frees, so a node's address stays stable across restarts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flops_utils.data_client import DataServerClient, DataServerError
from flops_utils.process_groups import planned_port, port_is_free, process_alive, start_ticks
from flops_utils.service_config import CONFIG_ENV, DataServerConfig, DataServerSecurity, ServerCertificate
from orchestrator_adapters.base import AdapterError, NodeInfo, Placement
from orchestrator_adapters.local_nodes import LocalNode, load_nodes
from orchestrator_adapters.local_process import OWNER_ENV, Spawner, describe_exit, last_log_line, stop_groups
from orchestrator_adapters.local_state import DataServerRecord, StateFile

log = logging.getLogger("flops.adapters.nodes")

_DATA_SERVER_ATTEMPTS = 3
MAX_DATA_SERVER_RESTARTS = 3  # per node and adapter life: a server that keeps dying is left down, and said so


@dataclass(frozen=True)
class FleetSettings:
    nodes_file: str | None  # None: the default two clusters of two learners
    python: str  # the interpreter that runs the data servers
    host: str  # address the data servers listen on and are reached at
    stop_grace_s: float
    timeout_s: float  # until a started data server must answer
    max_upload_bytes: int
    security: DataServerSecurity | None  # None: open data servers (development only)


class NodeFleet:
    """The node inventory from the nodes file, and one supervised data server per learner node."""

    def __init__(self, settings: FleetSettings, state_dir: Path, state: StateFile, spawner: Spawner) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.state = state
        self.spawner = spawner
        self._nodes: list[LocalNode] | None = None
        self._restarts: dict[str, int] = {}  # node -> data server restarts by revive()
        self._reviving = threading.Lock()  # project runs call revive() from their own threads

    # -- inventory ---------------------------------------------------------------------------
    def nodes(self) -> list[LocalNode]:
        if self._nodes is None:
            self._nodes = load_nodes(self.settings.nodes_file)
        return self._nodes

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

    def check_placement(self, placement: Placement) -> None:
        names = {node.name for node in self.nodes()}
        clusters = {node.cluster for node in self.nodes() if node.cluster}
        if placement.node is not None and placement.node not in names:
            raise AdapterError(f"unknown node {placement.node!r}; nodes: {', '.join(sorted(names))}")
        if placement.cluster is not None and placement.cluster not in clusters:
            raise AdapterError(f"unknown cluster {placement.cluster!r}; clusters: {', '.join(sorted(clusters))}")

    def node_for(self, placement: Placement) -> str | None:
        """The node a placement names, or the first one matching its cluster and labels (None: no constraint)."""
        if placement.node is not None:
            return placement.node
        if placement.cluster is None and not placement.node_labels:
            return None
        for node in self.nodes():
            if (placement.cluster is None or node.cluster == placement.cluster) and all(
                node.labels.get(key) == value for key, value in placement.node_labels.items()
            ):
                return node.name
        return None

    # -- data servers ------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or reuse, when an earlier manager's are still answering) one data server per learner node."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pending = [node for node in self.nodes() if node.learner and not self._answers(node.name)]
        for attempt in range(1, _DATA_SERVER_ATTEMPTS + 1):
            started = {node.name: self._start(node) for node in pending}
            failed = self._await(started)
            pending = [node for node in pending if node.name in failed]
            if not pending:
                return
            if attempt == _DATA_SERVER_ATTEMPTS:
                name, reason = next(iter(failed.items()))
                raise AdapterError(f"the data server of node {name} did not start: {reason}")
            log.warning("data servers of %s did not start (%s); retrying on new ports", sorted(failed), failed)

    def revive(self) -> list[str]:
        """Start again the data servers that ended unasked (killed, crashed), on the same port with the same
        certificate and storage, so learners find their node's data where it was. One line per server handled."""
        with self._reviving:
            servers = self.state.read().data_servers
            lost = {
                node.name: servers[node.name]
                for node in self.nodes()
                if node.learner
                and node.name in servers
                and not process_alive(servers[node.name].pid, servers[node.name].start_ticks)
                and self._restarts.get(node.name, 0) <= MAX_DATA_SERVER_RESTARTS
            }
            notes = []
            for name, record in lost.items():
                why = describe_exit(self.spawner.exit_code(record.pid, record.exit_file), "")
                restarts = self._restarts[name] = self._restarts.get(name, 0) + 1
                if restarts > MAX_DATA_SERVER_RESTARTS:
                    notes.append(f"data server of node {name} lost for good ({why}) after {restarts - 1} restarts")
                    continue
                node = next(node for node in self.nodes() if node.name == name)
                failed = self._await({name: self._start(node)})
                address = self.state.read().data_servers[name].address
                if failed:
                    notes.append(f"data server of node {name} lost ({why}); its restart failed: {failed[name]}")
                else:
                    notes.append(
                        f"data server of node {name} lost ({why}); restarted at {address} with its data, "
                        f"restart {restarts} of {MAX_DATA_SERVER_RESTARTS}"
                    )
            for note in notes:
                log.warning(note)
            return notes

    def processes(self) -> list[tuple[int, int | None]]:
        """(pid, start ticks) of every recorded data server, for stopping them with everything else."""
        return [(record.pid, record.start_ticks) for record in self.state.read().data_servers.values()]

    def _stop(self, node: str, record: DataServerRecord) -> None:
        stop_groups(
            [(record.pid, record.start_ticks)],
            self.settings.stop_grace_s,
            owners=[self.spawner.owner("data-server", node)],
        )

    def _answers(self, node: str) -> bool:
        record = self.state.read().data_servers.get(node)
        if record is None or not process_alive(record.pid, record.start_ticks):
            return False
        try:
            self._client(record.address).ping(timeout=10.0)
        except DataServerError:
            log.warning("data server of %s (pid %d) does not answer; replacing it", node, record.pid)
            self._stop(node, record)
            return False
        log.info("reusing the data server of %s at %s (pid %d)", node, record.address, record.pid)
        return True

    def _start(self, node: LocalNode) -> DataServerRecord:
        node_dir = self.state_dir / "nodes" / node.name
        earlier = self.state.read().data_servers.get(node.name)
        if earlier is not None:  # what is left of its process group must not hold the port or the storage
            self._stop(node.name, earlier)
        with self.state.update() as state:
            previous = state.data_servers.get(node.name)
            if previous is not None and self._port_frees(previous.port):
                port = previous.port  # keep the node's address stable across restarts
            else:
                port = planned_port(self.settings.host, state.used_ports())
            security = self.settings.security
            config = DataServerConfig(
                node=node.name,
                host=self.settings.host,
                port=port,
                storage_dir=str(node_dir / "data"),
                max_upload_bytes=self.settings.max_upload_bytes,
                tls=ServerCertificate(cert_pem=security.cert_pem, key_pem=security.key_pem) if security else None,
                token_public_key_pem=security.token_public_key_pem if security else None,
            )
            env = {
                **os.environ,
                CONFIG_ENV: config.model_dump_json(),
                "PYTHONUNBUFFERED": "1",
                OWNER_ENV: self.spawner.owner("data-server", node.name),
            }
            log_file, exit_file = node_dir / "data-server.log", node_dir / f"data-server-{time.time_ns()}.exit"
            if previous is not None:
                Path(previous.exit_file).unlink(missing_ok=True)
            process = self.spawner.spawn(
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

    def _client(self, address: str) -> DataServerClient:
        security = self.settings.security
        return DataServerClient(address, ca_pem=security.ca_pem if security else None)

    def _port_frees(self, port: int, timeout: float = 5.0) -> bool:
        """Whether ``port`` is (or within ``timeout`` becomes) free: a killed server's socket may linger briefly."""
        deadline = time.monotonic() + timeout
        while not port_is_free(self.settings.host, port):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _await(self, records: dict[str, DataServerRecord]) -> dict[str, str]:
        """Wait until every data server answers; returns node -> reason for those that did not."""
        deadline = time.monotonic() + self.settings.timeout_s
        waiting, failed = dict(records), {}
        while waiting:
            for node, record in list(waiting.items()):
                try:
                    self._client(record.address).ping(timeout=1.0)
                    del waiting[node]
                    continue
                except DataServerError:
                    pass
                if not process_alive(record.pid, record.start_ticks):
                    failed[node] = describe_exit(
                        self.spawner.exit_code(record.pid, record.exit_file), last_log_line(record.log_file)
                    )
                    del waiting[node]
            if waiting and time.monotonic() > deadline:
                for node, record in waiting.items():
                    failed[node] = f"no answer at {record.address} within {self.settings.timeout_s:g}s"
                    self._stop(node, record)
                break
            if waiting:
                time.sleep(0.1)
        return failed
