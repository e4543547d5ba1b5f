"""linux/arm64 images built on this amd64 machine and run under qemu-user-static emulation.

Needs the arm64 binfmt handler with the F flag (``make install`` registers it:
``scripts/enable_emulation.sh``). One multi-platform build of the sklearn example
(amd64 + arm64, manifest lists in the session's registry); the arm64 learner image
then runs the user's code under emulation against a real data server, and a trained
model gets a multi-platform inference image. The arm64 images stay in the local image
cache, so later runs only push them again.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from flops_utils.data_client import DataServerClient, from_numpy
from flops_utils.mqtt_catalogue import BuildResult, BuildStep, FlopsMessage
from flops_utils.service_config import BuilderConfig, RegistrySettings
from services.builder.oci import (
    ContainerEngine,
    OciBuildResult,
    OciSettings,
    RegistryClient,
    build_images,
    build_model_image,
    build_oci,
)
from services.builder.oci.model_image import RUN_TAG
from services.builder.oci.platforms import check_platforms
from tests.test_data_server import RunningServer, start_server

if TYPE_CHECKING:
    from services.builder.oci import EnsuredImage

pytest_plugins = ("tests.oci_helpers",)  # session fixtures; not imported here (pytest loads it as a plugin)
pytestmark = pytest.mark.timeout(2400)

BOTH = ["linux/amd64", "linux/arm64"]
DATA_TAG = "digits-arm64"

_LEARNER_RUN = """
import platform
assert platform.machine() == "aarch64", platform.machine()
import services.learner.main  # the learner's entry module imports on arm64
import model_manager  # the user's repository, at /app
manager = model_manager.ModelManager()
manager.set_model_data()  # load_dataset(): FLOPS_DATA_SERVER / FLOPS_DATA_TAGS, over Arrow Flight
trained = manager.fit_model()
loss, accuracy, tested = manager.evaluate_model()
print(f"arm64 learner: machine={platform.machine()} trained={trained} tested={tested} accuracy={accuracy:.3f}")
"""


def _podman(engine: ContainerEngine, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=engine.environment(), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def multi_build(
    oci_engine: ContainerEngine,
    oci_registry: RegistrySettings,
    sklearn_repo: Path,
    base_image: EnsuredImage,
    make_builder_config: Callable[..., BuilderConfig],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[OciBuildResult, BuilderConfig]:
    """The sklearn example for linux/amd64 and linux/arm64 (arm64 built under emulation on a cold machine)."""
    check_platforms(BOTH)  # fails with one line when the arm64 handler is missing: run `make install`
    config = make_builder_config(sklearn_repo, oci_registry, tmp_path_factory.mktemp("arm64-cache"), platforms=BOTH)
    result = build_images(config, settings=OciSettings(registry=oci_registry), engine=oci_engine)
    return result, config


@pytest.fixture()
def data_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "storage", tmp_path / "server.log")
    try:
        digits = load_digits()
        features, client = (digits.data / 16.0).astype(np.float32), DataServerClient(running.address)
        rows = sum(
            client.put(DATA_TAG, from_numpy(features[start : start + 300], digits.target[start : start + 300]))
            for start in range(0, len(features), 300)
        )  # fragments under the test server's upload limit
        assert rows == len(digits.target)
        yield running
    finally:
        running.stop()


def test_both_platforms_are_built_and_pushed_as_manifest_lists(
    multi_build: tuple[OciBuildResult, BuilderConfig], oci_registry: RegistrySettings, oci_engine: ContainerEngine
) -> None:
    result, config = multi_build
    client = RegistryClient(oci_registry)
    for kind, image in (("learner", result.learner), ("aggregator", result.aggregator)):
        listed = client.manifest(f"flops/sklearn-digits-{kind}", image.name.tag)
        assert listed is not None and sorted(listed.platforms) == BOTH, listed
        digests = result.platform_digests[kind]
        assert sorted(digests) == BOTH and len(set(digests.values())) == 2, digests
        for platform, digest in digests.items():  # each platform's image is in the registry by its digest
            member = client.manifest(f"flops/sklearn-digits-{kind}", digest)
            assert member is not None and member.digest == digest, (platform, digest)
    arm64 = result.platform_images["learner"]["linux/arm64"].name.local
    architecture = _podman(oci_engine, "image", "inspect", "--format", "{{.Architecture}}", arm64, timeout=60)
    assert architecture.stdout.strip() == "arm64", architecture.stderr

    # The builder service's answer (a second build: everything is in the registry) carries both digests.
    messages: list[FlopsMessage] = []
    answer = build_oci(config, messages.append, settings=OciSettings(registry=oci_registry), engine=ContainerEngine())
    assert isinstance(answer, BuildResult) and answer.cached
    assert answer.learner_image == result.learner.reference
    assert answer.platform_digests == result.platform_digests
    steps = [message.step for message in messages if isinstance(message, BuildStep)]
    assert "deps-image linux/arm64" in steps and "learner-image linux/arm64" in steps, steps


def test_arm64_learner_image_runs_the_users_code_under_emulation(
    multi_build: tuple[OciBuildResult, BuilderConfig], data_server: RunningServer, oci_engine: ContainerEngine
) -> None:
    result, _ = multi_build
    image = result.platform_images["learner"]["linux/arm64"].name.local
    run = _podman(
        oci_engine,
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        "--network",
        "host",
        "-e",
        f"FLOPS_DATA_SERVER={data_server.address}",
        "-e",
        f"FLOPS_DATA_TAGS={DATA_TAG}",
        "--entrypoint",
        "python",
        image,
        "-c",
        _LEARNER_RUN,
    )
    assert run.returncode == 0, (run.stdout[-800:], run.stderr[-2000:])
    line = next(line for line in run.stdout.splitlines() if line.startswith("arm64 learner:"))
    assert "machine=aarch64 trained=1437 tested=360" in line, line  # 1,797 digits, 20 % held out
    accuracy = float(line.rsplit("accuracy=", 1)[1])
    assert accuracy > 0.8, line  # ten lbfgs iterations from zeros already separate the digits


def test_trained_model_image_is_a_manifest_list_tagged_on_the_run(
    multi_build: tuple[OciBuildResult, BuilderConfig],
    oci_registry: RegistrySettings,
    oci_engine: ContainerEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, _ = multi_build
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking = (tmp_path / "mlruns").as_uri()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    try:
        mlflow.set_experiment("oci-arm64")
        digits = load_digits()
        model = LogisticRegression(max_iter=500).fit(digits.data[:600], digits.target[:600])
        with mlflow.start_run() as run:
            logged = mlflow.sklearn.log_model(
                model, name="model", pip_requirements=mlflow.sklearn.get_default_pip_requirements()
            )
        built = build_model_image(
            logged.model_uri,
            tracking,
            oci_registry,
            image="sklearn-digits-model-multi",
            base_image=result.aggregator.reference,
            engine=oci_engine,
            platforms=BOTH,
        )
    finally:
        mlflow.set_tracking_uri(previous)
    listed = RegistryClient(oci_registry).manifest("flops/sklearn-digits-model-multi", built.image.name.tag)
    assert listed is not None and sorted(listed.platforms) == BOTH and listed.digest == built.digest
    assert sorted(built.platform_digests) == BOTH
    tags = MlflowClient(tracking).get_run(run.info.run_id).data.tags
    assert tags[RUN_TAG] == built.pinned
    assert {platform: tags[f"{RUN_TAG}.{platform}"] for platform in BOTH} == built.platform_digests
