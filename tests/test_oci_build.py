"""OCI builds with the real buildah, registry and podman: the sklearn example's images, cache rules, platforms."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flops_utils.mqtt_catalogue import BuildResult, BuildStep
from flops_utils.service_config import BuilderConfig, RegistrySettings
from manager.security import pki
from services.builder.errors import BuildError
from services.builder.main import run_build
from services.builder.oci import (
    ContainerEngine,
    EngineError,
    EngineSettings,
    ImageStore,
    OciSettings,
    RegistryClient,
    build_images,
    build_oci,
)
from services.builder.oci import platforms as oci_platforms
from services.builder.oci.platforms import PlatformUnsupported, check_platforms, host_architecture
from services.builder.oci.registry import RegistryError
from tests.example_repos import commit_all, git

if TYPE_CHECKING:
    from tests.oci_helpers import SklearnBuild

pytest_plugins = ("tests.oci_helpers",)  # session fixtures; not imported here (pytest loads it as a plugin)
ConfigFactory = Callable[..., BuilderConfig]

IMAGE_STEPS = ("base-image", "deps-image", "aggregator-deps-image", "learner-image", "aggregator-image")
PROJECT_IMAGES = (
    "flops/sklearn-digits-deps",
    "flops/sklearn-digits-aggregator-deps",
    "flops/sklearn-digits-learner",
    "flops/sklearn-digits-aggregator",
)
LEARNER_SIZE_GOAL = 600_000_000  # the scikit-learn example's learner image, uncompressed (issue 19)
ARM64_LINE = "cannot build linux/arm64 on this host: no qemu-user-static binfmt handler"

_SMOKE = """
import glob, importlib.util, shutil, sys
import flwr.clientapp, pyarrow.flight, services.learner.main
import model_manager
model_manager.ModelManager()
assert sys.prefix == "/opt/venv", sys.prefix
assert importlib.util.find_spec("pip") is None, "pip left in the image"
assert shutil.which("gcc") is None and shutil.which("cc") is None, "a compiler in the image"
# Only what a learner runs: no MLflow, no Flower server stack, no package test suites.
present = [m for m in ("mlflow", "sqlalchemy", "alembic", "fastapi", "uvicorn", "pandas")
           if importlib.util.find_spec(m) is not None]
assert not present, f"not a learner's: {present}"
assert not glob.glob("/opt/venv/lib/python3*/site-packages/*/tests"), "package test suites left in the image"
print("smoke ok")
"""
_AGGREGATOR_SMOKE = """
import shutil
import mlflow.sklearn, mlflow.pyfunc.scoring_server, flwr.serverapp, services.aggregator.main, model_manager
assert shutil.which("uvicorn"), "uvicorn not on PATH"
print("aggregator ok")
"""


def _podman(engine: ContainerEngine, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=engine.environment(), capture_output=True, text=True, timeout=300, check=False
    )


def test_sklearn_example_images_are_built_and_pushed(
    sklearn_build: SklearnBuild, oci_registry: RegistrySettings, oci_engine: ContainerEngine
) -> None:
    result = sklearn_build.result
    client = RegistryClient(oci_registry)
    catalog = client.catalog()
    assert {"flops/base-python", *PROJECT_IMAGES} <= set(catalog), catalog
    assert result.learner.reference == f"{oci_registry.address}/flops/sklearn-digits-learner:{result.digest}"
    assert result.aggregator.reference == f"{oci_registry.address}/flops/sklearn-digits-aggregator:{result.digest}"
    assert result.learner.digest.startswith("sha256:")

    # Thin images: a dependency image's layers plus one small layer; the aggregator's adds MLflow's client.
    deps = client.manifest("flops/sklearn-digits-deps", result.deps[0].name.tag)
    upper = client.manifest("flops/sklearn-digits-aggregator-deps", result.aggregator_deps[0].name.tag)
    learner = client.manifest("flops/sklearn-digits-learner", result.digest)
    aggregator = client.manifest("flops/sklearn-digits-aggregator", result.digest)
    assert deps is not None and upper is not None and learner is not None and aggregator is not None
    assert learner.layers[:-1] == deps.layers and len(learner.layers) == len(deps.layers) + 1
    assert upper.layers[: len(deps.layers)] == deps.layers and len(upper.layers) == len(deps.layers) + 1
    assert aggregator.layers[:-1] == upper.layers and len(aggregator.layers) == len(upper.layers) + 1
    assert learner.compressed_bytes - deps.compressed_bytes < 5_000_000  # app + runtime code only
    assert result.platform_digests == {
        "learner": {"linux/amd64": result.learner.digest},
        "aggregator": {"linux/amd64": result.aggregator.digest},
    }

    # The learner image stays under the size goal (uncompressed, as podman reports it).
    learner_size = oci_engine.image_size(result.learner.name.local)
    assert learner_size is not None and learner_size <= LEARNER_SIZE_GOAL, learner_size

    # Each step went out as a BuildStep with its duration; image steps name the image and its size.
    steps = {message.step: message for message in sklearn_build.messages if isinstance(message, BuildStep)}
    assert set(IMAGE_STEPS) <= set(steps), list(steps)
    for name in IMAGE_STEPS:
        assert steps[name].outcome in ("done", "cached") and steps[name].duration_s >= 0
        assert "compressed" in steps[name].detail and "MB" in steps[name].detail, steps[name].detail
    assert all(record.compressed_bytes for record in result.steps if record.step in IMAGE_STEPS)

    # The learner image runs the learner entrypoint (which asks for its configuration) ...
    bare = _podman(oci_engine, "run", "--rm", "--network", "host", result.learner.name.local)
    assert bare.returncode != 0 and "FLOPS_CONFIG" in bare.stderr, bare.stderr[-800:]
    # ... and holds the user's code and the FL client runtime, without MLflow, pip, compilers or caches.
    smoke = _podman(
        oci_engine,
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "python",
        result.learner.name.local,
        "-c",
        _SMOKE,
    )
    assert smoke.returncode == 0 and "smoke ok" in smoke.stdout, smoke.stderr[-1500:]
    # The aggregator image adds MLflow's client (logging, registering, the scoring server).
    smoke = _podman(
        oci_engine,
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "python",
        result.aggregator.name.local,
        "-c",
        _AGGREGATOR_SMOKE,
    )
    assert smoke.returncode == 0 and "aggregator ok" in smoke.stdout, smoke.stderr[-1500:]


def test_second_build_of_the_same_commit_runs_no_buildah(
    sklearn_build: SklearnBuild, oci_registry: RegistrySettings
) -> None:
    engine = ContainerEngine()  # a fresh command history
    messages: list[object] = []
    result = build_oci(
        sklearn_build.config, messages.append, settings=OciSettings(registry=oci_registry), engine=engine
    )
    assert result.cached
    assert result.digest == sklearn_build.result.digest
    assert result.learner_image == sklearn_build.result.learner.reference
    assert result.aggregator_image == sklearn_build.result.aggregator.reference
    assert [command for command in engine.history if command[0] == "buildah"] == []
    outcomes = {message.step: message.outcome for message in messages if isinstance(message, BuildStep)}
    assert all(outcomes[name] == "cached" for name in IMAGE_STEPS), outcomes
    assert isinstance(messages[-1], BuildResult) and messages[-1].cached


def test_code_only_change_reuses_the_dependency_image(
    sklearn_build: SklearnBuild,
    sklearn_repo: Path,
    oci_registry: RegistrySettings,
    tmp_path: Path,
    make_builder_config: ConfigFactory,
) -> None:
    clone = tmp_path / "clone" / sklearn_repo.name  # same repository name, so the same image names
    clone.parent.mkdir()
    git(tmp_path, "clone", "-q", str(sklearn_repo), str(clone))
    model_file = clone / "model_manager.py"
    model_file.write_text(model_file.read_text() + "\n# a code-only change\n")
    commit_all(clone, "code-only change")

    engine = ContainerEngine()
    config = make_builder_config(clone, oci_registry, tmp_path / "cache")
    result = build_images(config, settings=OciSettings(registry=oci_registry), engine=engine)
    first = sklearn_build.result
    outcomes = {record.step: record.outcome for record in result.steps}
    assert outcomes["deps-image"] == "cached" and outcomes["base-image"] == "cached", outcomes
    assert outcomes["aggregator-deps-image"] == "cached", outcomes
    assert outcomes["learner-image"] == "done" and outcomes["aggregator-image"] == "done", outcomes
    assert result.deps[0].reference == first.deps[0].reference
    assert result.digest != first.digest and result.commit != first.commit
    commands = [" ".join(command) for command in engine.history]
    assert not any("pip install" in command for command in commands), commands

    client = RegistryClient(oci_registry)
    deps = client.manifest("flops/sklearn-digits-deps", first.deps[0].name.tag)
    learner = client.manifest("flops/sklearn-digits-learner", result.digest)
    assert deps is not None and learner is not None
    assert learner.layers[:-1] == deps.layers  # only the thin layer is new


def test_the_registry_is_verified_with_its_ca_and_refused_under_another(
    sklearn_build: SklearnBuild, oci_registry: RegistrySettings, tmp_path: Path
) -> None:
    assert oci_registry.ca_pem and oci_registry.verifies_tls  # the suite's registry speaks TLS by default
    RegistryClient(oci_registry, containers_root=tmp_path / "trusted").ping()

    other_ca, _ = pki.new_ca(pki.name("elsewhere", "another CA"), 1)
    untrusted = oci_registry.model_copy(update={"ca_pem": pki.cert_pem(other_ca).decode()})
    with pytest.raises(RegistryError, match=r"TLS error.*CERTIFICATE_VERIFY_FAILED"):
        RegistryClient(untrusted, containers_root=tmp_path / "untrusted").ping()

    # buildah, with its own storage, pulls the built deps image under the other CA: refused before any byte moves.
    engine = ContainerEngine(EngineSettings(root=tmp_path / "untrusted", driver="vfs"))
    deps = sklearn_build.result.deps[0].name
    with pytest.raises(EngineError, match=r"pulling .*(x509|certificate)"):
        ImageStore(engine, untrusted).pull_reference(deps.remote(oci_registry.address))


def test_arm64_without_a_binfmt_handler_fails_the_build_with_one_line(
    sklearn_repo: Path,
    oci_registry: RegistrySettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_builder_config: ConfigFactory,
) -> None:
    monkeypatch.setattr(oci_platforms, "BINFMT_DIR", tmp_path / "binfmt_misc")  # a host without qemu handlers
    config = make_builder_config(
        sklearn_repo, oci_registry, tmp_path / "cache", platforms=["linux/amd64", "linux/arm64"]
    )
    messages: list[object] = []
    with pytest.raises(BuildError) as caught:
        run_build(config, messages.append)  # the builder service's dispatch on mode="oci"
    assert str(caught.value) == ARM64_LINE
    assert len(messages) == 1 and isinstance(messages[0], BuildStep)
    assert (messages[0].step, messages[0].outcome, messages[0].detail) == ("platforms", "failed", ARM64_LINE)


def test_platforms_need_an_enabled_fix_binary_qemu_handler(tmp_path: Path) -> None:
    assert host_architecture() == "amd64"
    handler = tmp_path / "qemu-aarch64"
    handler.write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\n")
    chosen = check_platforms(["linux/arm64", "linux/amd64"], tmp_path)
    assert [platform.name for platform in chosen] == ["linux/amd64", "linux/arm64"]  # the host's first
    handler.write_text("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: \noffset 0\n")  # unusable in a chroot
    with pytest.raises(PlatformUnsupported, match="^cannot build linux/arm64 on this host"):
        check_platforms(["linux/amd64", "linux/arm64"], tmp_path)
    with pytest.raises(PlatformUnsupported, match="unsupported platform 'windows/amd64'"):
        check_platforms(["windows/amd64"], tmp_path)
    shutil.rmtree(tmp_path)
