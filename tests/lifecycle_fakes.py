"""What the fast lifecycle tests run a project with, all in this process.

- :class:`FastClock`: the clock the run measures its waits with, running ``speed`` times faster
  (a 2 s inspection interval or a 3 s grace period take a fraction of a second).
- :class:`MemoryBroker` / :class:`MemoryLink`: the MQTT broker and the manager's link to it, in memory
  (topics, filters, retained results and JSON payloads as over MQTT).
- :class:`FakeFederation`: the programs the fake adapter (``tests/fake_adapter.py``) runs per service
  kind: a builder that reports its BuildResult, aggregators that report rounds and a result (classic,
  root and cluster), learners, an observer, and HTTP answers where the lifecycle calls one (the MLflow
  server's ``/health``, the serving endpoint's ``/ping``). Tests make services crash, hold or resume.
- :func:`start_data_servers`: real data servers (Arrow Flight, in-process) holding rows for a tag,
  which placement asks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from flops_utils.data_client import DataServerClient, from_numpy
from flops_utils.mqtt_catalogue import (
    RETAINED_KINDS,
    BuildResult,
    FlopsMessage,
    ModelImageBuilt,
    ReportedState,
    ServiceStatus,
    TrainingProgress,
    TrainingResult,
    parse_message,
    topic,
)
from flops_utils.mqtt_link import BrokerUnavailable
from flops_utils.service_config import DataServerConfig
from orchestrator_adapters.base import NodeInfo
from services.data_server.main import DataFlightServer
from services.data_server.revocations import Revocations
from services.data_server.storage import Namespaces
from tests.fake_adapter import FakeService, Program, ServiceCrashed

Handler = Callable[[str, FlopsMessage], None]


class FastClock:
    def __init__(self, speed: float = 20.0) -> None:
        self.speed = speed
        self._start = time.monotonic()

    def monotonic(self) -> float:
        return self._start + (time.monotonic() - self._start) * self.speed

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.speed)


# -- the broker -----------------------------------------------------------------------------------


class MemoryBroker:
    """Delivers each message (through its JSON payload, as MQTT would) to every matching subscription;
    keeps the last message of the retained kinds per topic for later subscribers."""

    def __init__(self) -> None:
        self.published: list[FlopsMessage] = []
        self.retained: dict[str, FlopsMessage] = {}
        self._subscriptions: list[tuple[str, Handler]] = []
        self._lock = threading.RLock()

    def publish(self, message: FlopsMessage) -> None:
        with self._lock:
            self.published.append(message)
            if message.kind in RETAINED_KINDS:
                self.retained[message.topic()] = message
            handlers = [h for f, h in self._subscriptions if mqtt.topic_matches_sub(f, message.topic())]
        for handler in handlers:
            handler(message.topic(), parse_message(message.to_payload()))

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        with self._lock:
            self._subscriptions.append((topic_filter, handler))
            retained = [m for name, m in self.retained.items() if mqtt.topic_matches_sub(topic_filter, name)]
        for message in retained:
            handler(message.topic(), parse_message(message.to_payload()))

    def unsubscribe(self, handler: Handler) -> None:
        with self._lock:
            self._subscriptions = [(f, h) for f, h in self._subscriptions if h is not handler]

    def clear_retained(self, name: str) -> None:
        with self._lock:
            self.retained.pop(name, None)


class MemoryLink:
    """The manager's side (``manager.lifecycle.inbox.ReportLink``) of a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._connected = False
        self._handlers: dict[str, Handler] = {}

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self, timeout: float = 10.0) -> MemoryLink:
        self._connected = True
        for topic_filter, handler in self._handlers.items():
            self.broker.subscribe(topic_filter, handler)
        return self

    def close(self) -> None:
        self._connected = False
        for handler in self._handlers.values():
            self.broker.unsubscribe(handler)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self._handlers[topic_filter] = handler
        if self._connected:
            self.broker.subscribe(topic_filter, handler)

    def publish(self, message: FlopsMessage) -> None:
        if not self._connected:
            raise BrokerUnavailable("MQTT link is not connected")
        self.broker.publish(message)

    def clear_retained(self, project_id: str) -> None:
        for kind in RETAINED_KINDS:
            self.broker.clear_retained(topic(project_id, kind))


# -- the services ---------------------------------------------------------------------------------


def _serve_http(service: FakeService, answers: dict[str, tuple[int, dict[str, object]]]) -> None:
    """Answer GETs by path (anything else: 404) on the service's configured host and port until stopped."""

    class Answers(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, body = answers.get(
                self.path.split("?", 1)[0],
                (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not in the fake"}),
            )
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            return

    environment = service.spec.environment  # an inference image's server takes these instead of a config
    host = str(service.config.get("bind_host") or environment.get("UVICORN_HOST") or "127.0.0.1")
    port = int(str(service.config.get("port") or environment["UVICORN_PORT"]))
    server = ThreadingHTTPServer((host, port), Answers)
    threading.Thread(target=server.serve_forever, daemon=True, name=f"http-{service.name}").start()
    service.ready.set()
    try:
        service.wait_stopped()
    finally:
        server.shutdown()
        server.server_close()


def _http_program(answers: dict[str, tuple[int, dict[str, object]]]) -> Program:
    def program(service: FakeService) -> None:
        _serve_http(service, answers)

    program.announces_ready = True  # type: ignore[attr-defined]
    return program


@dataclass
class FakeFederation:
    """The programs, and the knobs tests turn: who crashes or fails, where a builder or aggregator holds.

    A crash is silent (the process died: only the orchestrator sees it); a failure is the service's own
    ServiceStatus report before it exits 1.
    """

    crashes: dict[str, list[str]] = field(default_factory=dict)  # service name -> details of its next crashes
    always_crash: dict[str, str] = field(default_factory=dict)  # service name -> detail of every deploy's crash
    crash_after: dict[tuple[str, int], str] = field(default_factory=dict)  # (aggregator, round) -> once
    failures: dict[str, str] = field(default_factory=dict)  # service name -> the failure it reports
    holds: dict[tuple[str, int], threading.Event] = field(default_factory=dict)  # (service, round) -> go on
    checkpoints: dict[str, int] = field(default_factory=dict)  # aggregator -> last round it reported
    cycles_done: dict[tuple[str, str, int], threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, service: str, after_round: int = 0) -> threading.Event:
        """The aggregator stops after reporting ``after_round`` (a builder: before its result) until the
        returned event is set."""
        return self.holds.setdefault((service, after_round), threading.Event())

    def _held(self, service: FakeService, after_round: int) -> None:
        held = self.holds.get((service.name, after_round))
        while held is not None and not held.wait(0.05):
            if service.stopping.is_set():
                return

    def programs(self) -> dict[str, Program]:
        return {
            "tracking": _http_program({"/health": (200, {"status": "OK"})}),
            "serving": _http_program({"/ping": (200, {})}),
            "observer": lambda service: service.wait_stopped() and None,
            "builder": self.builder,
            "aggregator": self.aggregator,
            "learner": self.learner,
        }

    def _maybe_crash(self, service: FakeService, kind: str) -> None:
        with self._lock:
            pending = self.crashes.get(service.name)
            detail = pending.pop(0) if pending else self.always_crash.get(service.name)
        if detail is not None:
            raise ServiceCrashed(detail)
        failure = self.failures.get(service.name)
        if failure is not None:
            status = ServiceStatus(
                project_id=service.project_id,
                sender=service.name,
                service=kind,
                state=ReportedState.FAILED,
                detail=failure,
            )
            service.report(status)
            raise ServiceCrashed(failure)

    def builder(self, service: FakeService) -> None:
        self._maybe_crash(service, "builder")
        self._held(service, 0)
        if service.stopping.is_set():
            return
        if service.config.get("task") == "model_image":
            image = f"{service.config['registry']['address']}/flops/model-{service.project_id[:8]}"  # type: ignore[index]
            service.report(
                ModelImageBuilt(
                    project_id=service.project_id,
                    sender=service.name,
                    image=f"{image}:1",
                    pinned=f"{image}@sha256:{'1' * 64}",
                    digest=f"sha256:{'1' * 64}",
                    model_uri=str(service.config["model_uri"]),
                    total_seconds=0.1,
                )
            )
            return
        service.report(
            BuildResult(
                project_id=service.project_id,
                sender=service.name,
                digest="sha256:fake",
                commit="0" * 40,
                cached=False,
                app_dir="/fake/app",
                total_seconds=0.1,
            )
        )

    def learner(self, service: FakeService) -> None:
        self._maybe_crash(service, "learner")
        service.wait_stopped()

    def aggregator(self, service: FakeService) -> None:
        self._maybe_crash(service, "aggregator")
        config = service.config
        training = dict(config["training"])  # type: ignore[call-overload]
        rounds, role = int(training["training_rounds"]), str(config["role"])
        cycles = 1 if role == "classic" else int(training.get("training_cycles", 1))
        if role == "cluster":
            self._cluster_rounds(service, rounds, cycles)
        elif role == "root":
            self._root_cycles(service, rounds, cycles)
        else:
            self._classic_rounds(service, rounds)

    def _progress(
        self, service: FakeService, number: int, total: int, cycle: int = 1, cycles: int = 1, cluster: str | None = None
    ) -> None:
        """Report a round (accuracy 0.4 + 0.1 per round); crash or hold there if a test asked."""
        accuracy = round(0.4 + 0.1 * number, 3)
        progress = TrainingProgress(
            project_id=service.project_id,
            sender=service.name,
            cluster=cluster,
            cycle=cycle,
            total_cycles=cycles,
            round=number,
            total_rounds=total,
            loss=round(1 - accuracy, 3),
            accuracy=accuracy,
            participants=2,
            num_examples=40,
            round_seconds=0.01,
        )
        service.report(progress)
        step = (cycle - 1) * total + number
        self.checkpoints[service.name] = step
        crash = self.crash_after.pop((service.name, step), None)
        if crash is not None:
            raise ServiceCrashed(crash)
        self._held(service, step)

    def _result(self, service: FakeService, rounds: int, cycles: int = 1) -> None:
        accuracy = round(0.4 + 0.1 * rounds, 3)
        result = TrainingResult(
            project_id=service.project_id,
            sender=service.name,
            rounds_completed=rounds,
            cycles_completed=cycles,
            loss=round(1 - accuracy, 3),
            accuracy=accuracy,
            model_uri="runs:/fake-run/model",
        )
        service.report(result)

    def _classic_rounds(self, service: FakeService, rounds: int) -> None:
        for number in range(self.checkpoints.get(service.name, 0) + 1, rounds + 1):  # a restart resumes
            if service.stopping.is_set():
                return
            self._progress(service, number, rounds)
        if not service.stopping.is_set():
            self._result(service, rounds)

    def _cycle_done(self, project_id: str, cluster: str, cycle: int) -> threading.Event:
        with self._lock:
            return self.cycles_done.setdefault((project_id, cluster, cycle), threading.Event())

    def _cluster_rounds(self, service: FakeService, rounds: int, cycles: int) -> None:
        cluster = str(service.config["cluster"])
        for cycle in range(1, cycles + 1):
            for number in range(1, rounds + 1):
                if service.stopping.is_set():
                    return
                self._progress(service, number, rounds, cycle, cycles, cluster)
            self._cycle_done(service.project_id, cluster, cycle).set()
        service.wait_stopped()  # a cluster aggregator serves until the project ends

    def _root_cycles(self, service: FakeService, rounds: int, cycles: int) -> None:
        clusters = [str(name) for name in service.config["expected_clusters"]]  # type: ignore[attr-defined]
        for cycle in range(1, cycles + 1):
            for cluster in clusters:
                while not self._cycle_done(service.project_id, cluster, cycle).wait(0.05):
                    if service.stopping.is_set():
                        return
            self._progress(service, rounds, rounds, cycle, cycles)
        self._result(service, rounds * cycles, cycles)


# -- the data -------------------------------------------------------------------------------------


@contextmanager
def start_data_servers(
    root: Path, nodes: Mapping[str, str | None], tag: str = "digits", rows: int = 20, width: int = 4
) -> Iterator[list[NodeInfo]]:
    """One open (development mode) data server per node, holding ``rows`` rows of ``tag``."""
    servers: list[DataFlightServer] = []
    found: list[NodeInfo] = []
    try:
        for node, cluster in nodes.items():
            storage = root / node
            config = DataServerConfig(node=node, port=0, storage_dir=str(storage))
            namespaces = Namespaces(storage, config.max_upload_bytes)
            namespaces.prepare()
            server = DataFlightServer(config, namespaces, Revocations(storage / ".revoked"))
            servers.append(server)
            address = f"127.0.0.1:{server.port}"
            with DataServerClient(address) as client:
                client.put(tag, from_numpy(np.ones((rows, width)), np.zeros(rows)))
            found.append(NodeInfo(node, cluster, data_server=address))
        yield found
    finally:
        for server in servers:
            server.shutdown()
