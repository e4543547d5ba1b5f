"""A running FLOps manager (real process) on top of the session's suite, for end-to-end tests.

``flops_stack`` starts ``flops-manager`` with the local orchestrator adapter (its
data servers and services are real processes) and pushes mock digits data once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flops_utils.process_groups import free_port, signal_group, stop_group
from manager.suite import SuiteEndpoints
from tests.helpers import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "admin-token-for-tests"
CUSTOMER_TOKENS = {"alice-token-123": "alice", "bob-token-4567": "bob"}
FINISHED = {"COMPLETED", "FAILED", "STOPPED"}


def sla(repo: str, tags: list[str], **training: Any) -> dict[str, Any]:
    """An SLA for an example repo (path relative to the repository root)."""
    flavor = {"sklearn": "sklearn", "pytorch": "pytorch", "keras": "keras"}[Path(repo).name.split("_")[0]]
    return {
        "customerID": "Admin",
        "ml_repo_url": repo,
        "ml_model_flavor": flavor,
        "training_configuration": {"data_tags": tags, **training},
    }


def mlflow_client(tracking_url: str, token: str = ADMIN_TOKEN, ca_file: Path | None = None):  # type: ignore[no-untyped-def]
    """A client of the project's tracking server (also as model registry; MLflow 3 defaults to a local file).

    The server lets in the customer's (or the admin's) API token only and speaks HTTPS with a certificate from the
    manager's CA; MLflow's client reads both from the environment.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_TRACKING_TOKEN"] = token
    if ca_file is not None:
        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(ca_file)
    mlflow.set_tracking_uri(tracking_url)
    mlflow.set_registry_uri(tracking_url)
    return MlflowClient(tracking_uri=tracking_url, registry_uri=tracking_url)


class FlopsStack:
    def __init__(
        self, url: str, state_dir: Path, process: subprocess.Popen[bytes], log_path: Path, config_path: Path
    ) -> None:
        self.url = url
        self.config_path = config_path
        self.state_dir = state_dir
        self.process = process
        self.log_path = log_path

    def restart_manager(self, kill: bool = False, while_down: Callable[[], None] | None = None) -> None:
        """SIGTERM (``kill``: SIGKILL) the manager and start a new one on the same config (projects keep running);
        ``while_down`` runs in between."""
        if kill and self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
        stop_manager(self.process)
        if while_down is not None:
            while_down()
        self.process = start_manager(self.config_path, self.log_path)
        wait_healthy(self.url, self.process, self.log_path)

    @property
    def tracking_ca_file(self) -> Path:
        """The manager's MLflow CA (``GET /tracking`` hands it out as ``ca_pem`` too)."""
        return self.state_dir / "pki" / "ca.pem"

    def mlflow_client(self, tracking_url: str, token: str = ADMIN_TOKEN):  # type: ignore[no-untyped-def]
        assert tracking_url.startswith("https://"), f"the tracking server speaks plain HTTP: {tracking_url}"
        return mlflow_client(tracking_url, token, self.tracking_ca_file)

    def api(self, method: str, path: str, token: str = ADMIN_TOKEN, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)

    def submit(self, request: dict[str, Any], token: str = ADMIN_TOKEN) -> str:
        answer = self.api("POST", "/api/flops/projects", token=token, json=request)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["project_id"])

    def project(self, project_id: str, token: str = ADMIN_TOKEN) -> dict[str, Any]:
        answer = self.api("GET", f"/api/flops/projects/{project_id}", token=token)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait(self, project_id: str, timeout: float = 600) -> dict[str, Any]:
        """Wait until the project finishes; return its record."""
        project = wait_until(lambda: self._finished(project_id), timeout, interval=1.0)
        assert project, f"project {project_id} still running after {timeout}s: {self.project(project_id)}"
        return project

    def _finished(self, project_id: str) -> dict[str, Any] | None:
        project = self.project(project_id)
        return project if project["status"] in FINISHED else None

    def events(self, project_id: str) -> list[str]:
        answer = self.api("GET", f"/api/flops/projects/{project_id}/events")
        return [event["text"] for event in answer.json()["events"]]

    def push_mocks(self, tag: str, partitions: int, **extra: Any) -> dict[str, Any]:
        body = {"mock_data_configuration": {"data_tag": tag, "number_of_partitions": partitions, **extra}}
        answer = self.api("POST", "/api/flops/mocks", json=body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def manager_config(suite: SuiteEndpoints, state_dir: Path, cache_dir: Path, port: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "admin_token": ADMIN_TOKEN,
        "customer_tokens": CUSTOMER_TOKENS,
        "mqtt": suite.mqtt.model_dump(),
        "mongo_uri": suite.mongo_uri,
        "database": f"e2e_{uuid.uuid4().hex[:8]}",
        "state_dir": str(state_dir),
        "cache_dir": str(cache_dir),
        "repo_base_dir": str(REPO_ROOT),
        "lifecycle": {"training_timeout_s": 420, "build_timeout_s": 600},
    }


def manager_environment() -> dict[str, str]:
    """This process's environment without MLflow's: tests point MLflow at their projects' servers
    (``mlflow.set_registry_uri`` exports MLFLOW_REGISTRY_URI), which a manager must not inherit."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    return {**clean, "PYTHONUNBUFFERED": "1"}


def start_manager(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("flops-manager")), "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
            env=manager_environment(),
        )


def wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 90) -> None:
    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"flops-manager exited: {log_path.read_text()[-2000:]}")
        return requests.get(f"{url}/health", timeout=2).status_code == 200

    assert wait_until(healthy, timeout, interval=0.5), f"manager not healthy: {log_path.read_text()[-2000:]}"


def stop_manager(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        stop_group(process.pid, 60, reap=process.poll)
        process.wait()


def stop_local_services(state_dir: Path) -> None:
    from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings

    LocalAdapter(LocalAdapterSettings(state_dir=str(state_dir / "local-adapter"))).stop_everything()


@contextlib.contextmanager
def running_stack(suite: SuiteEndpoints, root: Path, **overrides: Any) -> Iterator[FlopsStack]:
    """A manager on ``suite`` with state under ``root``; ``overrides`` replace top-level config keys."""
    state_dir, cache_dir = root / "state", root / "cache"
    port = free_port()
    config_path = root / "manager.json"
    config_path.write_text(json.dumps({**manager_config(suite, state_dir, cache_dir, port), **overrides}))
    log_path = root / "manager.log"
    process = start_manager(config_path, log_path)
    stack = FlopsStack(f"http://127.0.0.1:{port}", state_dir, process, log_path, config_path)
    try:
        wait_healthy(stack.url, process, log_path)
        yield stack
    finally:
        stop_manager(stack.process)


@pytest.fixture(scope="session")
def flops_stack(suite: SuiteEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlopsStack]:
    root = tmp_path_factory.mktemp("stack")
    try:
        with running_stack(suite, root) as stack:
            yield stack
    finally:
        stop_local_services(root / "state")
        time.sleep(0.5)
