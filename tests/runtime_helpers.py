"""Helpers for the federated-runtime tests: a tiny sklearn app, real services as processes.

Everything here starts real processes (data servers, MLflow, aggregators, learners) in
their own sessions and stops them as groups; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from flops_utils.data_client import DataServerClient, from_numpy
from flops_utils.mqtt_catalogue import FlopsMessage, project_filter
from flops_utils.mqtt_link import MqttLink
from flops_utils.process_groups import signal_group
from flops_utils.service_config import (
    DataServerConfig,
    LearnerConfig,
    MqttSettings,
)
from orchestrator_adapters.local_process import descendant_pids
from services.fl_runtime.flower_app import flower_app_pyproject

MODEL_MANAGER = '''
"""A small digits classifier (sklearn logistic regression) for the runtime tests."""
import os
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from flops_utils.data_client import load_dataset, to_numpy
from flops_utils.ml_interfaces import ModelManager as BaseModelManager

CLASSES = np.arange(10)
FEATURES = 64


class ModelManager(BaseModelManager):
    def __init__(self) -> None:
        self.model = LogisticRegression(max_iter=20, warm_start=True)
        self.set_model_parameters([np.zeros((len(CLASSES), FEATURES)), np.zeros(len(CLASSES))])

    def set_model_data(self) -> None:
        x, y = to_numpy(load_dataset())
        x = x / 16.0
        cut = int(len(x) * 0.8)
        self.x_train, self.y_train, self.x_test, self.y_test = x[:cut], y[:cut], x[cut:], y[cut:]

    def get_model(self):
        return self.model

    def get_model_parameters(self):
        return [self.model.coef_.copy(), self.model.intercept_.copy()]

    def set_model_parameters(self, parameters) -> None:
        coef, intercept = parameters
        self.model.coef_ = np.asarray(coef, dtype=np.float64)
        self.model.intercept_ = np.asarray(intercept, dtype=np.float64)
        self.model.classes_ = CLASSES

    def fit_model(self) -> int:
        time.sleep(float(os.environ.get("FLOPS_TEST_FIT_DELAY", "0")))
        self.model.fit(self.x_train, self.y_train)
        return len(self.x_train)

    def evaluate_model(self):
        probabilities = self.model.predict_proba(self.x_test)
        loss = log_loss(self.y_test, probabilities, labels=CLASSES)
        accuracy = float((self.model.predict(self.x_test) == self.y_test).mean())
        return float(loss), accuracy, len(self.x_test)
'''


def write_app_dir(path: Path, project_id: str) -> Path:
    """A user repo (model_manager.py) plus the generated Flower app pyproject.toml."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_manager.py").write_text(MODEL_MANAGER)
    (path / "pyproject.toml").write_text(flower_app_pyproject(project_id))
    return path


def digits_partitions(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Digits split into ``count`` shuffled partitions, each with every class."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(7).permutation(len(y))
    x, y = x[order], y[order]
    return [(x[index::count], y[index::count]) for index in range(count)]


# -- processes ------------------------------------------------------------------------
@dataclass
class Service:
    """A process started in its own session; stopped by killing its group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        signal_group(self.process.pid, sig)

    def crash(self) -> None:
        """SIGKILL the service and every process it started (as if its machine died)."""
        for pid in [self.process.pid, *descendant_pids(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def start_service(name: str, module: str, config: BaseModel, log_dir: Path, cwd: Path | None = None) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, "FLOPS_CONFIG": config.model_dump_json(), "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, process, log_path)


@dataclass
class Services:
    """Every process a test started, stopped in reverse order at teardown."""

    log_dir: Path
    running: list[Service] = field(default_factory=list)

    def start(self, name: str, module: str, config: BaseModel, cwd: Path | None = None) -> Service:
        service = start_service(name, module, config, self.log_dir, cwd)
        self.running.append(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.running):
            service.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {s.name}\n{s.log()[-3000:]}" for s in self.running)


_LISTENING = re.compile(r"serving node \S+ on [\d.]+:(\d+)")


def start_data_servers(services: Services, nodes: list[str], root: Path) -> list[str]:
    """One data server per node, started together; their ``host:port`` addresses in order."""
    started = []
    for node in nodes:
        config = DataServerConfig(node=node, host="127.0.0.1", port=0, storage_dir=str(root / node))
        started.append(services.start(f"data-{node}", "services.data_server.main", config))
    return [_data_server_address(service) for service in started]


def _data_server_address(service: Service) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ports = _LISTENING.findall(service.log())
        if ports:
            address = f"127.0.0.1:{ports[-1]}"
            DataServerClient(address).wait_ready(timeout=30)
            return address
        if not service.alive():
            raise AssertionError(f"{service.name} exited: {service.log()}")
        time.sleep(0.1)
    raise AssertionError(f"{service.name} did not start: {service.log()}")


def push_digits(address: str, tag: str, x: np.ndarray, y: np.ndarray) -> None:
    with DataServerClient(address) as client:
        client.put(tag, from_numpy(x, y))


def learner_config(
    project_id: str,
    mqtt: MqttSettings,
    node: str,
    app_dir: Path,
    aggregator_port: int,
    data_server: str,
    tags: list[str],
    work_dir: Path,
    cluster: str | None = None,
) -> LearnerConfig:
    return LearnerConfig(
        project_id=project_id,
        mqtt=mqtt,
        instance_name=f"learner-{node}",
        node=node,
        cluster=cluster,
        app_dir=str(app_dir),
        aggregator_address=f"127.0.0.1:{aggregator_port}",
        data_server_address=data_server,
        data_tags=tags,
        work_dir=str(work_dir),
    )


# -- MQTT -----------------------------------------------------------------------------
class Inbox:
    """Every catalogue message of one project, in arrival order."""

    def __init__(self, mqtt: MqttSettings, project_id: str) -> None:
        self.messages: list[FlopsMessage] = []
        self._lock = threading.Lock()
        self._link = MqttLink(mqtt)
        self._link.subscribe(project_filter(project_id), self._on_message)
        self._link.connect()

    def _on_message(self, _topic: str, message: FlopsMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def of(self, kind: type[BaseModel]) -> list[FlopsMessage]:
        with self._lock:
            return [message for message in self.messages if isinstance(message, kind)]

    def wait_for(self, predicate: Callable[[FlopsMessage], bool], timeout: float) -> FlopsMessage | None:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                fresh = self.messages[seen:]
            for message in fresh:
                if predicate(message):
                    return message
            seen += len(fresh)
            time.sleep(0.1)
        return None

    def dump(self) -> str:
        with self._lock:
            return "\n".join(json.dumps(m.model_dump(mode="json")) for m in self.messages)

    def close(self) -> None:
        self._link.close()
