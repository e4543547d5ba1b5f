"""Session fixtures shared by the OCI tests: registry, container engine, base image, sklearn build, container adapter.

Test modules load this file as a plugin (``pytest_plugins = ("tests.oci_helpers",)``),
so each session fixture exists once per test session, whichever OCI module asks first.

The engine uses the default FLOps container storage (``~/.cache/flops/containers``):
images built by an earlier run stay there, so a re-run only pushes them to this
session's fresh registry instead of building them again. A cold machine builds the
debootstrap base (about a minute) and the sklearn example's dependency image once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flops_utils.mqtt_catalogue import FlopsMessage
from flops_utils.service_config import BuilderConfig, MqttSettings, RegistrySettings
from manager.suite import SuiteError, start_suite, stop_suite
from orchestrator_adapters.base import AppKind, AppRef, ServiceInfo, ServiceState
from orchestrator_adapters.container import ContainerAdapter
from orchestrator_adapters.container_settings import ContainerSettings
from services.builder.oci import ContainerEngine, EnsuredImage, ImageStore, OciBuildResult, OciSettings, build_images
from services.builder.oci.base_image import BaseSettings, ensure_base
from services.builder.oci.platforms import check_platforms
from services.builder.oci.steps import StepRecord
from tests.example_repos import example_repo

ADAPTER_NODES = {
    "nodes": [
        {"name": "n1", "cluster": "c1", "labels": {"zone": "x"}},
        {"name": "n2", "cluster": "c2"},
        {"name": "edge", "learner": False},
    ]
}
WAIT_S = 180.0


def _stop_quietly(state_dir: Path) -> None:
    with contextlib.suppress(SuiteError, OSError):
        stop_suite(state_dir)


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistrySettings]:
    """A private suite with the htpasswd-protected registry (the shared suite stays registry-free)."""
    state_dir = tmp_path_factory.mktemp("oci-suite")
    atexit.register(_stop_quietly, state_dir)
    endpoints = start_suite(state_dir, registry=True)
    assert endpoints.registry is not None
    try:
        yield endpoints.registry.settings()
    finally:
        stop_suite(state_dir)


@pytest.fixture(scope="session")
def oci_engine() -> ContainerEngine:
    return ContainerEngine()


@pytest.fixture(scope="session")
def base_image(oci_engine: ContainerEngine, oci_registry: RegistrySettings) -> EnsuredImage:
    """flops/base-python in this session's registry (built from debootstrap once per machine)."""
    store = ImageStore(oci_engine, oci_registry)
    base = ensure_base(oci_engine, store, BaseSettings(), check_platforms([])[0], StepRecord("base-image"))
    assert base.image is not None
    return base.image


@pytest.fixture(scope="session")
def sklearn_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sklearn example as a git repository (fixed identity and dates: a stable commit)."""
    return Path(example_repo("sklearn_digits", tmp_path_factory.mktemp("repos")))


def builder_config(repo: Path, registry: RegistrySettings, cache_dir: Path, **extra: object) -> BuilderConfig:
    return BuilderConfig.model_validate(
        {
            "project_id": "oci-test",
            "mqtt": MqttSettings().model_dump(),
            "repo_url": str(repo),
            "flavor": "sklearn",
            "cache_dir": str(cache_dir),
            "mode": "oci",
            "registry": registry.model_dump(),
            **extra,
        }
    )


@pytest.fixture(scope="session")
def make_builder_config() -> Callable[..., BuilderConfig]:
    """:func:`builder_config` for test modules (which must not import this plugin module themselves)."""
    return builder_config


@dataclass(frozen=True)
class SklearnBuild:
    result: OciBuildResult
    messages: tuple[FlopsMessage, ...]
    config: BuilderConfig


@pytest.fixture(scope="session")
def sklearn_build(
    oci_engine: ContainerEngine,
    oci_registry: RegistrySettings,
    sklearn_repo: Path,
    base_image: EnsuredImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> SklearnBuild:
    """The sklearn example's images, built (or found in the local image cache) and pushed once per session."""
    config = builder_config(sklearn_repo, oci_registry, tmp_path_factory.mktemp("builder-cache"))
    messages: list[FlopsMessage] = []
    result = build_images(config, messages.append, settings=OciSettings(registry=oci_registry), engine=oci_engine)
    return SklearnBuild(result, tuple(messages), config)


@pytest.fixture(scope="session")
def container_adapter(
    tmp_path_factory: pytest.TempPathFactory, oci_registry: RegistrySettings
) -> Iterator[ContainerAdapter]:
    """A started container adapter with its own podman API service; pulls always (credentials exercised)."""
    state_dir = tmp_path_factory.mktemp("container-adapter")
    nodes_file = state_dir / "nodes.json"
    nodes_file.write_text(json.dumps(ADAPTER_NODES))
    adapter = ContainerAdapter(
        ContainerSettings(
            state_dir=str(state_dir),
            registry=oci_registry,
            nodes_file=str(nodes_file),
            pull_policy="always",
            stop_grace_s=2,
        )
    )
    adapter.start()
    try:
        yield adapter
    finally:
        try:
            adapter.stop_everything(remove=True)
        finally:
            adapter.close()


@pytest.fixture()
def adapter_app(container_adapter: ContainerAdapter) -> Iterator[AppRef]:
    app = container_adapter.create_app(f"t-{uuid.uuid4().hex[:8]}", AppKind.PROJECT, "oci-tests", "p-oci")
    try:
        yield app
    finally:
        container_adapter.delete_app(app)


def ended(info: ServiceInfo) -> bool:
    return info.state in (ServiceState.SUCCEEDED, ServiceState.FAILED, ServiceState.STOPPED)


def wait_for(
    adapter: ContainerAdapter,
    app: AppRef,
    service_id: str,
    done: Callable[[ServiceInfo], bool] = ended,
    timeout: float = WAIT_S,
) -> ServiceInfo:
    """Inspect until ``done(info)`` (default: the service ended); fail with its state and log tail."""
    deadline = time.monotonic() + timeout
    info = adapter.inspect_service(app, service_id)
    while not done(info):
        if time.monotonic() > deadline:
            pytest.fail(
                f"{service_id} stayed {info.state.value} ({info.detail!r}) for {timeout:g} s; "
                f"logs: {adapter.logs(app, service_id)[-600:]!r}"
            )
        time.sleep(0.2)
        info = adapter.inspect_service(app, service_id)
    return info


@pytest.fixture(scope="session")
def wait_service() -> Callable[..., ServiceInfo]:
    """:func:`wait_for` for test modules (which must not import this plugin module themselves)."""
    return wait_for
