"""A customer's MLflow server behind the customer's identity: a real ``mlflow server --app-name flops-token-gate``."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from flops_utils.process_groups import free_port
from flops_utils.service_config import TrackingConfig
from manager.lifecycle.tracking_access import TrackingAccess
from tests.helpers import wait_until
from tests.runtime_helpers import Services

CUSTOMER_A, CUSTOMER_B, ADMIN = "token-of-customer-a", "token-of-customer-b", "admin-token-0123"
ACCESS = TrackingAccess.from_tokens(True, ADMIN, {CUSTOMER_A: "alice", CUSTOMER_B: "bob"})
SEARCH = "/api/2.0/mlflow/experiments/search"


@pytest.fixture(scope="module")
def alice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("gated-mlflow")
    services = Services(tmp_path / "logs")
    port = free_port()
    config = TrackingConfig(
        customer="alice",
        backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts_destination=str(tmp_path / "artifacts"),
        port=port,
        access_token_sha256=ACCESS.digests("alice"),
    )
    service = services.start("tracking", "services.observer.tracking_server", config)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_until(lambda: _status(f"{url}/health") == 200 or service.process.poll() is not None, 120, 0.5)
        assert ready and service.process.poll() is None, services.logs()
        yield url
    finally:
        services.stop_all()


def _status(url: str, **headers: str) -> int:
    try:
        if url.endswith("/health"):
            return requests.get(url, headers=headers, timeout=10).status_code
        return requests.post(url, json={"max_results": 5}, headers=headers, timeout=10).status_code
    except requests.RequestException:
        return 0


def _basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()


def test_only_the_customer_the_admin_and_the_services_get_in(alice_server: str) -> None:
    url = alice_server + SEARCH
    assert _status(alice_server + "/health") == 200  # probes need no token and learn nothing
    assert _status(url) == 401
    answer = requests.post(url, json={}, timeout=10)
    assert "customer" in answer.json()["message"] and answer.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert _status(url, Authorization=f"Bearer {CUSTOMER_B}") == 401  # another customer's token
    assert _status(url, Authorization=_basic(CUSTOMER_B)) == 401
    assert _status(url, Authorization="Bearer ") == 401
    assert _status(url, Authorization="Basic !!not-base64!!") == 401
    ajax = alice_server + "/ajax-api/2.0/mlflow/experiments/search"  # the GUI's API
    assert _status(ajax, Authorization=f"Bearer {CUSTOMER_B}") == 401
    assert _status(url, Authorization=f"Bearer {CUSTOMER_A}") == 200
    assert _status(url, Authorization=_basic(CUSTOMER_A)) == 200  # what a browser sends after the prompt
    assert _status(url, Authorization=f"Bearer {ADMIN}") == 200
    service_token = ACCESS.service_token("alice")
    assert service_token is not None and service_token != ACCESS.service_token("bob")
    assert _status(url, Authorization=f"Bearer {service_token}") == 200
    assert _status(url, Authorization=f"Bearer {ACCESS.service_token('bob')}") == 401


def test_mlflow_clients_log_with_the_service_token_and_are_refused_without(alice_server: str) -> None:
    script = (
        "import mlflow, sys\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "with mlflow.start_run(experiment_id=mlflow.create_experiment('gated')) as run:\n"
        "    mlflow.log_metric('accuracy', 0.9, step=1)\n"
        "print(run.info.run_id)\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    refused = subprocess.run(
        [sys.executable, "-c", script, alice_server], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr, refused.stderr[-1500:]
    token = ACCESS.service_token("alice")
    assert token is not None
    logged = subprocess.run(
        [sys.executable, "-c", script, alice_server],
        env={**env, "MLFLOW_TRACKING_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert logged.returncode == 0, logged.stderr[-1500:]
    run_id = logged.stdout.strip().splitlines()[-1]
    answer = requests.get(
        f"{alice_server}/api/2.0/mlflow/metrics/get-history",
        timeout=10,
        params={"run_id": run_id, "metric_key": "accuracy"},
        headers={"Authorization": f"Bearer {CUSTOMER_A}"},
    )
    assert answer.status_code == 200 and answer.json()["metrics"][0]["value"] == 0.9
