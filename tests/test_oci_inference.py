"""A trained model's inference image: built from MLflow, pushed, deployed as a container, answering /invocations."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from flops_utils.service_config import RegistrySettings
from flops_utils.token_access import serving_guard_environment, token_digest
from orchestrator_adapters.base import AppKind, Placement, PortSpec, Resources, ServiceInfo, ServiceKind, ServiceSpec
from orchestrator_adapters.base import ServiceState as State
from services.builder.oci import ContainerEngine, RegistryClient, build_model_image
from services.builder.oci.model_image import RUN_TAG, serving_requirements

if TYPE_CHECKING:
    from orchestrator_adapters.container import ContainerAdapter
    from tests.oci_helpers import SklearnBuild

pytest_plugins = ("tests.oci_helpers",)  # session fixtures; not imported here (pytest loads it as a plugin)
SERVE_TIMEOUT_S = 180.0
TOKEN = "customer-token-for-serving"


@pytest.fixture()
def file_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An MLflow file store for this test (allowed explicitly: MLflow 3 deprecates it for servers, not for tests)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    previous = mlflow.get_tracking_uri()
    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("oci-inference")  # not an experiment id an earlier test made active in another store
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)


def _wait_until_serving(adapter: ContainerAdapter, app: object, service: str, url: str) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        info: ServiceInfo = adapter.inspect_service(app, service)  # type: ignore[arg-type]
        if info.state in (State.FAILED, State.SUCCEEDED, State.STOPPED):
            pytest.fail(f"serving ended: {info.state.value} {info.detail}")
        try:
            if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /ping answer within {SERVE_TIMEOUT_S:g} s; logs: {adapter.logs(app, service)[-800:]}")  # type: ignore[arg-type]


def test_serving_requirements_swap_mlflow_for_the_skinny_package() -> None:
    assert serving_requirements(["mlflow==3.17.2", "scikit-learn==1.9.1", "# note", "cloudpickle==3.1.1"]) == [
        "mlflow-skinny==3.17.2",
        "scikit-learn==1.9.1",
        "cloudpickle==3.1.1",
        "pandas",
        "uvicorn",
    ]
    assert serving_requirements(["mlflow[extras]==3.17.2", "pandas==3.1.1"])[:2] == [
        "mlflow-skinny==3.17.2",
        "pandas==3.1.1",
    ]


def test_trained_model_image_answers_invocations_with_correct_digits(
    sklearn_build: SklearnBuild,
    oci_registry: RegistrySettings,
    oci_engine: ContainerEngine,
    container_adapter: ContainerAdapter,
    wait_service: Callable[..., ServiceInfo],
    file_tracking: str,
) -> None:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.data, digits.target, test_size=0.25, random_state=0)
    model = LogisticRegression(max_iter=3000).fit(x_train, y_train)
    with mlflow.start_run() as run:
        # As the FLOps aggregator logs models: the flavor's requirements, not MLflow's inference from
        # whatever this process has imported (which would drag torch and pytest into the image).
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=x_train[:2],
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(),
        )

    # Build on the project's aggregator image: its /opt/venv already has sklearn and MLflow.
    built = build_model_image(
        logged.model_uri,
        file_tracking,
        oci_registry,
        image="sklearn-digits-model",
        base_image=sklearn_build.result.aggregator.reference,
        engine=oci_engine,
    )
    assert built.digest.startswith("sha256:") and not built.cached
    manifest = RegistryClient(oci_registry).manifest("flops/sklearn-digits-model", built.image.name.tag)
    assert manifest is not None and manifest.digest == built.digest
    assert built.run_id == run.info.run_id and built.run_tagged
    assert MlflowClient(file_tracking).get_run(run.info.run_id).data.tags[RUN_TAG] == built.pinned

    # Deploy it through the container adapter, as deploy_trained_model_image does, and ask for predictions.
    app = container_adapter.create_app(f"serving-{run.info.run_id[:8]}", AppKind.PROJECT, "oci-tests", "p-serve")
    try:
        endpoint = container_adapter.plan_endpoint(app, "serving", PortSpec("http", 8080), Placement())
        spec = ServiceSpec(
            name="serving",
            kind=ServiceKind.SERVING,
            config={},
            image=built.reference,
            environment={
                "UVICORN_HOST": endpoint.host,
                "UVICORN_PORT": str(endpoint.port),
                **serving_guard_environment([token_digest(TOKEN)]),
            },
            resources=Resources(memory_mb=1024, vcpus=1),
            ports=(PortSpec("http", endpoint.port),),
        )
        service = container_adapter.add_service(app, spec)
        container_adapter.deploy_service(app, service)
        _wait_until_serving(container_adapter, app, service, endpoint.url)
        rows = {"inputs": x_test[:120].tolist()}
        refused = requests.post(f"{endpoint.url}/invocations", json=rows, timeout=60)
        assert refused.status_code == 401, refused.text[:500]  # the image's own guard, not only the manager's
        response = requests.post(
            f"{endpoint.url}/invocations", json=rows, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200, response.text[:500]
        predictions = np.asarray(response.json()["predictions"])
        assert predictions.tolist() == model.predict(x_test[:120]).tolist()
        assert float(np.mean(predictions == y_test[:120])) > 0.9
        assert container_adapter.inspect_service(app, service).state is State.RUNNING

        # Pulled and run by hand without a guard setting, the image refuses to serve and says why.
        bare = container_adapter.add_service(
            app,
            ServiceSpec(
                name="bare",
                kind=ServiceKind.SERVING,
                config={},
                image=built.reference,
                environment={"UVICORN_PORT": "1"},
                resources=Resources(memory_mb=512, vcpus=1),
            ),
        )
        container_adapter.deploy_service(app, bare)
        ended = wait_service(container_adapter, app, bare)
        assert ended.state is State.FAILED, ended
        assert "refusing to serve the model to anyone" in container_adapter.logs(app, bare), ended
    finally:
        container_adapter.delete_app(app)

    # The same model again: found in the registry, nothing built.
    engine = ContainerEngine()
    again = build_model_image(
        logged.model_uri,
        file_tracking,
        oci_registry,
        image="sklearn-digits-model",
        base_image=sklearn_build.result.aggregator.reference,
        engine=engine,
    )
    assert again.cached and again.digest == built.digest
    assert [command for command in engine.history if command[0] == "buildah"] == []
