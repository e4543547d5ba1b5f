"""A whole project on the container orchestrator: OCI build, training in containers, inference image, serving.

The manager runs with ``"orchestrator": "container"`` and the session's htpasswd-protected
registry. The builder builds the sklearn example's images with buildah (after
``test_oci_build`` in the same session they are found in the registry), the aggregator
and learners run as containers from those images, the post-training steps package the
registered model as an inference image and serve it from a container.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from flops_utils.service_config import RegistrySettings
from manager.suite import SuiteEndpoints
from orchestrator_adapters.container import ContainerAdapter
from orchestrator_adapters.container_settings import ContainerSettings
from services.builder.oci import RegistryClient
from tests.fixtures_stack import FlopsStack, running_stack, sla

pytest_plugins = ("tests.oci_helpers",)  # session fixtures; not imported here (pytest loads it as a plugin)
pytestmark = pytest.mark.timeout(1500)

NODES = {"nodes": [{"name": "box-1", "cluster": "c1"}, {"name": "box-2", "cluster": "c1"}]}


def _remove_containers(settings: ContainerSettings) -> None:
    adapter = ContainerAdapter(settings)
    adapter.start()
    try:
        adapter.stop_everything(remove=True)
    finally:
        adapter.close()


@pytest.fixture(scope="module")
def container_stack(
    suite: SuiteEndpoints, oci_registry: RegistrySettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlopsStack]:
    root = tmp_path_factory.mktemp("container-stack")
    nodes_file = root / "nodes.json"
    nodes_file.write_text(json.dumps(NODES))
    adapter = ContainerSettings(
        state_dir=str(root / "container-adapter"), registry=oci_registry, nodes_file=str(nodes_file), stop_grace_s=2
    )
    try:
        with running_stack(
            suite,
            root,
            orchestrator="container",
            registry=oci_registry.model_dump(),
            adapter_settings={"container": adapter.model_dump()},
            lifecycle={"training_timeout_s": 600, "build_timeout_s": 900},
        ) as stack:
            yield stack
    finally:
        _remove_containers(adapter)


def test_classic_project_trains_in_containers_and_serves_its_inference_image(
    container_stack: FlopsStack, sklearn_repo: Path, oci_registry: RegistrySettings
) -> None:
    pushed = container_stack.push_mocks("digits-oci", 2)
    assert sum(pushed["partitions"].values()) == 1797
    request = sla(
        "examples/sklearn_digits",
        ["digits-oci"],
        training_rounds=2,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
    )
    request["ml_repo_url"] = str(sklearn_repo)
    request["post_training_steps"] = ["build_image_for_trained_model", "deploy_trained_model_image"]
    project_id = container_stack.submit(request)
    project = container_stack.wait(project_id, timeout=1200)
    events = container_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-15:])
    assert project["progress"]["round"] == 2 and project["progress"]["accuracy"] > 0.5

    # Training ran from the registry's images, the learners and aggregator as containers.
    build = project["build"]
    assert build["learner_image"].startswith(f"{oci_registry.address}/flops/sklearn-digits-learner:")
    assert build["aggregator_image"].startswith(f"{oci_registry.address}/flops/sklearn-digits-aggregator:")
    log = container_stack.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    # The build result keeps each platform's digest, and the MLflow run names the images that trained it.
    learner_digest = build["platform_digests"]["learner"]["linux/amd64"]
    assert learner_digest.startswith("sha256:") and list(build["platform_digests"]) == ["learner", "aggregator"]
    tags = container_stack.mlflow_client(project["tracking_url"]).get_run(project["mlflow_run_id"]).data.tags
    assert tags["flops.image.learner"] == build["learner_image"]
    assert tags["flops.image.learner.linux/amd64"] == learner_digest
    assert tags["flops.image.aggregator.linux/amd64"] == build["platform_digests"]["aggregator"]["linux/amd64"]

    # The inference image is in the registry, pinned by digest, and linked to the MLflow run.
    image = project["model_image"]
    assert image and image.startswith(f"{oci_registry.address}/flops/sklearn-digits-model@sha256:"), image
    repository, digest = image.removeprefix(f"{oci_registry.address}/").split("@")
    manifest = RegistryClient(oci_registry).manifest(repository, digest)
    assert manifest is not None and manifest.digest == digest
    assert any(f"inference image {image}" in text and project["mlflow_run_id"] in text for text in events), events

    # It serves /invocations through the API with correct digits.
    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    answer = container_stack.api(
        "POST", f"/api/flops/projects/{project_id}/predict", json={"inputs": features[:40].tolist()}
    )
    assert answer.status_code == 200, answer.text
    predictions = [int(value) for value in answer.json()["predictions"]]
    assert sum(p == t for p, t in zip(predictions, digits.target[:40], strict=True)) >= 30, predictions

    stopped = container_stack.api("DELETE", f"/api/flops/projects/{project_id}")
    assert stopped.status_code == 200 and stopped.json()["serving_url"] is None
