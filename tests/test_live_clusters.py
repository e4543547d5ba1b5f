"""Opt-in tests against real clusters (deselected by default: run with ``pytest -m live``).

Kubernetes (``pytest -m live -k kubernetes``):
  ``KUBECONFIG``                 kubeconfig of the cluster (context: ``FLOPS_LIVE_K8S_CONTEXT``)
Oakestra (``pytest -m live -k oakestra``):
  ``OAKESTRA_URL``, ``OAKESTRA_USERNAME``, ``OAKESTRA_PASSWORD`` of the root orchestrator
  (``OAKESTRA_VERIFY_TLS=false`` for a self-signed certificate)
Both run the shared adapter contract with ``FLOPS_LIVE_PYTHON_IMAGE`` (default
``python:3.11-slim``; any image with ``python`` on its PATH). The example project runs too
when a manager configured for that orchestrator is reachable:
  ``FLOPS_LIVE_MANAGER_URL``, ``FLOPS_LIVE_ADMIN_TOKEN``, optionally ``FLOPS_LIVE_SLA``
  (an SLA file; default ``examples/slas/classic_sklearn.json`` with ``FLOPS_LIVE_REPO_URL``
  as its ``ml_repo_url``, which must be reachable from the cluster).
A target whose variables are missing fails with what to set: select targets with ``-k``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator_adapters.base import OrchestratorAdapter, ServiceKind, ServiceSpec
from orchestrator_adapters.kubernetes import KubernetesAdapter, KubernetesSettings
from orchestrator_adapters.oakestra import OakestraAdapter, OakestraSettings
from tests.adapter_contract import AdapterContract, Behaviour, SpecFactory, python_command

pytestmark = [pytest.mark.live, pytest.mark.timeout(1800)]

REPO_ROOT = Path(__file__).resolve().parent.parent
FINISHED = {"COMPLETED", "FAILED", "STOPPED"}


def required(*names: str) -> dict[str, str]:
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        pytest.fail(f"this live test needs {', '.join(missing)} (see the module docstring and docs/)")
    return {name: os.environ[name] for name in names}


def live_spec_factory() -> SpecFactory:
    image = os.environ.get("FLOPS_LIVE_PYTHON_IMAGE", "python:3.11-slim")

    def make(name: str, behaviour: Behaviour) -> ServiceSpec:
        kind = ServiceKind.OBSERVER if behaviour == "run" else ServiceKind.BUILDER
        return ServiceSpec(name=name, kind=kind, config={}, image=image, command=python_command(behaviour, "python"))

    return make


def kubernetes_adapter() -> KubernetesAdapter:
    env = required("KUBECONFIG")
    settings = KubernetesSettings(
        kubeconfig=env["KUBECONFIG"],
        context=os.environ.get("FLOPS_LIVE_K8S_CONTEXT") or None,
        namespace_prefix="flops-live",
    )
    return KubernetesAdapter(settings)


def oakestra_adapter() -> OakestraAdapter:
    env = required("OAKESTRA_URL", "OAKESTRA_USERNAME", "OAKESTRA_PASSWORD")
    settings = OakestraSettings(
        url=env["OAKESTRA_URL"],
        username=env["OAKESTRA_USERNAME"],
        password=env["OAKESTRA_PASSWORD"],
        verify_tls=os.environ.get("OAKESTRA_VERIFY_TLS", "true").lower() != "false",
    )
    return OakestraAdapter(settings)


class TestLiveKubernetesContract(AdapterContract):
    timeout_s = 300.0

    @pytest.fixture
    def adapter(self) -> Iterator[OrchestratorAdapter]:
        adapter = kubernetes_adapter()
        try:
            yield adapter
        finally:
            adapter.close()

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        return live_spec_factory()


class TestLiveOakestraContract(AdapterContract):
    timeout_s = 600.0

    @pytest.fixture
    def adapter(self) -> Iterator[OrchestratorAdapter]:
        adapter = oakestra_adapter()
        try:
            yield adapter
        finally:
            adapter.close()

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        return live_spec_factory()


def run_example_project(orchestrator: str) -> dict[str, Any]:
    """Push mock data and train the example project through a manager configured for ``orchestrator``."""
    env = required("FLOPS_LIVE_MANAGER_URL", "FLOPS_LIVE_ADMIN_TOKEN")
    url, headers = (
        env["FLOPS_LIVE_MANAGER_URL"].rstrip("/"),
        {"Authorization": f"Bearer {env['FLOPS_LIVE_ADMIN_TOKEN']}"},
    )
    if os.environ.get("FLOPS_LIVE_SLA"):
        sla = json.loads(Path(os.environ["FLOPS_LIVE_SLA"]).read_text())
    else:
        sla = json.loads((REPO_ROOT / "examples" / "slas" / "classic_sklearn.json").read_text())
        sla["ml_repo_url"] = required("FLOPS_LIVE_REPO_URL")["FLOPS_LIVE_REPO_URL"]
    sla["orchestrator"] = orchestrator
    tag = f"live-{uuid.uuid4().hex[:6]}"
    sla["training_configuration"]["data_tags"] = [tag]
    partitions = int(sla["training_configuration"].get("min_available_clients", 1))
    mocks = {"mock_data_configuration": {"data_tag": tag, "number_of_partitions": partitions}}
    pushed = requests.post(f"{url}/api/flops/mocks", json=mocks, headers=headers, timeout=300)
    assert pushed.status_code == 200, pushed.text
    started = requests.post(f"{url}/api/flops/projects", json=sla, headers=headers, timeout=60)
    assert started.status_code == 201, started.text
    project_id = started.json()["project_id"]
    deadline = time.monotonic() + 1500
    while True:
        project = requests.get(f"{url}/api/flops/projects/{project_id}", headers=headers, timeout=60).json()
        if project["status"] in FINISHED or time.monotonic() > deadline:
            return dict(project)
        time.sleep(5)


def test_kubernetes_example_project_trains() -> None:
    adapter = kubernetes_adapter()
    assert any(node.learner for node in adapter.list_nodes()), "label learner nodes: flops.io/learner=true"
    project = run_example_project("kubernetes")
    assert project["status"] == "COMPLETED", project.get("error")
    assert project["progress"]["round"] == project["progress"]["total_rounds"]


def test_oakestra_example_project_trains() -> None:
    adapter = oakestra_adapter()
    assert adapter.list_clusters(), "the root orchestrator reports no active cluster"
    project = run_example_project("oakestra")
    assert project["status"] == "COMPLETED", project.get("error")
    assert project["progress"]["round"] == project["progress"]["total_rounds"]
