"""The real REST API served by waitress in a thread, with a small recording ProjectControl.

The lifecycle is tested elsewhere; here the control stores plain records and events in
the real MongoProjectStore, so the API, identity, storage and CLI are exercised for real.
A project whose ``ml_repo_url`` starts with ``https://example.org/simulate`` advances through its rounds in a
background thread (``fail`` in the URL makes it end FAILED), for watching clients: each round is reported the way
the lifecycle takes an aggregator's TrainingProgress (a stored round, an ETA from the real TrainingClock).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waitress import create_server, wasyncore

from flops_utils.mqtt_catalogue import TrainingProgress
from flops_utils.service_config import DataServerSecurity, MqttSettings
from manager.api import TokenAuth, create_api
from manager.control import (
    CachePruneRequest,
    CachePruneResult,
    ControlError,
    ImagePruneResult,
    MockRequest,
    MockResult,
)
from manager.data_models import DataToken, NodeList, NodeView, TagInfo
from manager.lifecycle.round_log import round_record
from manager.lifecycle.training_clock import TrainingClock
from manager.records import EventRecord, Progress, ProjectPhase, ProjectRecord, ProjectStatus
from manager.security.config_vault import ConfigRefused, ConfigVault
from manager.security.secret_box import KEY_FILE_NAME, SecretBox
from manager.settings import ManagerSettings
from manager.sla import ProjectSLA
from manager.storage import MongoProjectStore, ProjectStore

ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex
ALICE_TOKEN = "alice-token-" + uuid.uuid4().hex
BOB_TOKEN = "bob-token-" + uuid.uuid4().hex
TOKENS = {ALICE_TOKEN: "alice", BOB_TOKEN: "bob"}
SIMULATED_ROUND_S = 0.25
PRUNED_MANIFEST = "127.0.0.1:5000/flops/demo-learner@sha256:" + "ab" * 32  # what the fake prune reports
SIMULATE_PREFIX = "https://example.org/simulate"


class RecordingControl:
    """Implements manager.control.ProjectControl by writing records; remembers every call."""

    def __init__(self, store: ProjectStore) -> None:
        self.store = store
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self.vault = ConfigVault(store, SecretBox(Path(tempfile.mkdtemp(prefix="flops-harness-")) / KEY_FILE_NAME))

    def _record_call(self, name: str, argument: Any) -> None:
        with self._lock:
            self.calls.append((name, argument))

    def start_project(self, sla: ProjectSLA, customer: str) -> ProjectRecord:
        self._record_call("start_project", (sla, customer))
        training = sla.training_configuration
        record = ProjectRecord(
            project_id=uuid.uuid4().hex[:16],
            customer=customer,
            sla=sla.model_dump(mode="json", by_alias=True),
            orchestrator=sla.orchestrator or "local",
            progress=Progress(total_rounds=training.training_rounds, total_cycles=training.training_cycles),
        )
        self.store.insert_project(record)
        self.store.append_event(EventRecord(project_id=record.project_id, text="project accepted"))
        if sla.ml_repo_url.startswith(SIMULATE_PREFIX) and training.training_rounds <= 10:
            thread = threading.Thread(target=self._simulate, args=(record.project_id, sla), daemon=True)
            self._threads.append(thread)
            thread.start()
        return record

    def _simulate(self, project_id: str, sla: ProjectSLA) -> None:
        rounds = sla.training_configuration.training_rounds
        clock = TrainingClock(rounds, 1)
        self.store.update_project(
            project_id,
            status=ProjectStatus.RUNNING,
            phase=ProjectPhase.TRAINING,
            phase_started={"training": time.time()},
        )
        for number in range(1, rounds + 1):
            if self._closing.wait(SIMULATED_ROUND_S):
                return
            current = self.store.get_project(project_id)
            if current is None or current.status.finished:
                return
            accuracy = 0.5 + number / 100
            report = TrainingProgress(
                project_id=project_id,
                sender="aggregator",
                round=number,
                total_rounds=rounds,
                accuracy=accuracy,
                loss=1.0 - accuracy,
                participants=2,
                round_seconds=SIMULATED_ROUND_S,
            )
            now = time.time()
            self.store.save_round(round_record(project_id, report, now))
            progress = current.progress.model_copy(update={"round": number, "accuracy": accuracy})
            self.store.update_project(project_id, progress=progress, training_eta_at=clock.observe(report, now))
            done = EventRecord(project_id=project_id, source="aggregator", text=f"round {number} done")
            self.store.append_event(done)
        failed = "fail" in sla.ml_repo_url
        status = ProjectStatus.FAILED if failed else ProjectStatus.COMPLETED
        self.store.append_event(EventRecord(project_id=project_id, text=f"project {status.value}"))
        self.store.update_project(
            project_id,
            status=status,
            phase=ProjectPhase.DONE,
            finished_at=time.time(),
            error="simulated failure" if failed else None,
        )

    def stop_project(self, project_id: str) -> ProjectRecord:
        self._record_call("stop_project", project_id)
        current = self.store.get_project(project_id)
        if current is None:
            raise ControlError(f"no project {project_id}", 404)
        if current.status.finished:
            raise ControlError(f"project {project_id} is already {current.status.value}", 409)
        if current.status is ProjectStatus.STOPPING:
            return current
        stopping = self.store.update_project(project_id, status=ProjectStatus.STOPPING)

        def stopped() -> None:  # as the lifecycle does: the run stops in the background
            self.store.append_event(EventRecord(project_id=project_id, text="stopped by request"))
            self.store.update_project(
                project_id, status=ProjectStatus.STOPPED, phase=ProjectPhase.DONE, finished_at=time.time()
            )

        threading.Timer(0.2, stopped).start()
        return stopping

    def tracking_url(self, customer: str) -> str:
        self._record_call("tracking_url", customer)
        return f"http://127.0.0.1:5999/{customer}"

    def tracking_ca_pem(self) -> str | None:
        return None

    def push_mock_data(self, request: MockRequest) -> MockResult:
        self._record_call("push_mock_data", request)
        configuration = request.mock_data_configuration
        partitions = {f"node-{index}": 100 + index for index in range(configuration.number_of_partitions)}
        return MockResult(data_tag=configuration.data_tag, partitions=partitions)

    def list_nodes(self, customer: str) -> NodeList:
        self._record_call("list_nodes", customer)
        tags = [TagInfo(tag=f"{customer}-tag", rows=10, width=4)]
        node = NodeView(name="node-0", learner=True, data_server="127.0.0.1:9400", reachable=True, tags=tags)
        return NodeList(customer=customer, data_tls=True, ca_pem="PEM", nodes=[node])

    def data_write_token(self, customer: str, node: str) -> DataToken:
        self._record_call("data_write_token", (customer, node))
        if node != "node-0":
            raise ControlError(f"no learner node with a data server named {node!r}; such nodes: node-0", 404)
        return DataToken(customer=customer, node=node, data_server="127.0.0.1:9400", token=f"fd1.{customer}")

    def data_server_security(self) -> DataServerSecurity | None:
        return DataServerSecurity(ca_pem="CA", cert_pem="CERT", key_pem="KEY", token_public_key_pem="PUB")

    def service_config(self, config_id: str, token: str) -> str:
        try:
            return self.vault.withdraw(config_id, token)
        except ConfigRefused as refused:
            raise ControlError(str(refused), refused.status) from None

    def prune_cache(self, request: CachePruneRequest) -> CachePruneResult:
        self._record_call("prune_cache", request)
        return CachePruneResult(
            removed=[],
            freed_bytes=0,
            kept_in_use=0,
            kept_recent=0,
            kept_busy=0,
            dry_run=request.dry_run,
            images=ImagePruneResult(
                removed_from_registry=[PRUNED_MANIFEST], kept_recent=2, notes=["local images not pruned: no storage"]
            ),
        )

    def reset(self) -> None:
        self._record_call("reset", None)
        self.store.reset()

    def join(self, timeout: float = 10.0) -> None:
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout)


@dataclass
class RunningApi:
    url: str
    store: MongoProjectStore
    control: RecordingControl
    settings: ManagerSettings
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def running_api(mongo_uri: str, database: str, mqtt: MqttSettings) -> Iterator[RunningApi]:
    """The API on a free port of 127.0.0.1, backed by a fresh store; stopped and closed on exit."""
    settings = ManagerSettings(
        port=0, admin_token=ADMIN_TOKEN, customer_tokens=TOKENS, mqtt=mqtt, mongo_uri=mongo_uri, database=database
    )
    store = MongoProjectStore(mongo_uri, database, timeout_s=10.0)
    store.connect()
    control = RecordingControl(store)
    app = create_api(control, store, TokenAuth(TOKENS, ADMIN_TOKEN), settings)
    server = create_server(app, host="127.0.0.1", port=0, threads=4, ident="flops-test")
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    try:
        yield RunningApi(f"http://127.0.0.1:{server.effective_port}", store, control, settings)  # type: ignore[union-attr]
    finally:
        server.task_dispatcher.shutdown()  # type: ignore[union-attr]
        wasyncore.close_all(server._map)  # type: ignore[union-attr]  # empties the loop's map: run() returns
        thread.join(10)
        control.join()
        store.close()
