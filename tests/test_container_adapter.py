"""The container adapter against a real ``podman system service`` (runc) and the internal registry."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flops_utils.service_config import RegistrySettings
from orchestrator_adapters.base import (
    AdapterError,
    AppKind,
    AppRef,
    OrchestratorAdapter,
    Placement,
    Resources,
    ServiceInfo,
    ServiceKind,
    ServiceSpec,
    ServiceState,
)
from orchestrator_adapters.container import ContainerAdapter, container_name
from orchestrator_adapters.container_settings import ContainerSettings
from orchestrator_adapters.registry import create_adapter
from services.builder.oci import ContainerEngine, ImageStore
from services.builder.oci.naming import ImageName
from tests.adapter_contract import (
    FAILURE_EXIT_CODE,
    FAILURE_LINE,
    AdapterContract,
    Behaviour,
    SpecFactory,
    python_command,
)

if TYPE_CHECKING:
    from services.builder.oci import EnsuredImage

pytest_plugins = ("tests.oci_helpers",)  # session fixtures; not imported here (pytest loads it as a plugin)
Waiter = Callable[..., ServiceInfo]


def python_spec(
    name: str, image: str, script: str, kind: ServiceKind = ServiceKind.BUILDER, resources: Resources | None = None
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        kind=kind,
        config={"service": name},
        image=image,
        command=("python3", "-c", script),
        resources=resources or Resources(),
    )


def running(info: ServiceInfo) -> bool:
    return info.state is ServiceState.RUNNING


class TestContainerAdapterContract(AdapterContract):
    timeout_s = 120.0

    @pytest.fixture
    def adapter(self, container_adapter: ContainerAdapter) -> OrchestratorAdapter:
        return container_adapter

    @pytest.fixture
    def make_spec(self, base_image: EnsuredImage) -> SpecFactory:
        def make(name: str, behaviour: Behaviour) -> ServiceSpec:
            kind = ServiceKind.OBSERVER if behaviour == "run" else ServiceKind.BUILDER
            return ServiceSpec(
                name=name,
                kind=kind,
                config={},
                image=base_image.reference,
                command=python_command(behaviour, "python3"),
            )

        return make


def test_crash_is_failed_with_exit_code_and_last_log_line(
    container_adapter: ContainerAdapter, adapter_app: AppRef, base_image: EnsuredImage, wait_service: Waiter
) -> None:
    script = f"import sys; print('working'); print({FAILURE_LINE!r}, file=sys.stderr); sys.exit({FAILURE_EXIT_CODE})"
    service = container_adapter.add_service(adapter_app, python_spec("crasher", base_image.reference, script))
    container_adapter.deploy_service(adapter_app, service)
    info = wait_service(container_adapter, adapter_app, service)
    assert info.state is ServiceState.FAILED
    assert info.detail == f"process exited with code {FAILURE_EXIT_CODE}: {FAILURE_LINE}"
    assert info.instances[0].exit_code == FAILURE_EXIT_CODE


def test_config_environment_resources_and_host_network(
    container_adapter: ContainerAdapter, adapter_app: AppRef, base_image: EnsuredImage, wait_service: Waiter
) -> None:
    nodes = {node.name: node for node in container_adapter.list_nodes()}
    assert nodes["n1"].data_server and nodes["n2"].data_server and nodes["edge"].data_server is None
    # The service reads its config, checks its memory limit and reaches node n1's data server on the host network.
    script = (
        "import json, os, socket, sys\n"
        "config = json.loads(os.environ['FLOPS_CONFIG'])\n"
        "host, port = config['data_server'].rsplit(':', 1)\n"
        "socket.create_connection((host, int(port)), timeout=10).close()\n"
        "v1 = '/sys/fs/cgroup/memory/memory.limit_in_bytes'\n"
        "limit = int(open(v1 if os.path.exists(v1) else '/sys/fs/cgroup/memory.max').read())\n"
        "print('limit', limit, 'index', os.environ['FLOPS_INSTANCE_INDEX'], 'extra', os.environ['EXTRA'])\n"
        "sys.exit(0 if limit == 700 * 1024 * 1024 and os.environ['EXTRA'] == 'yes' else 5)\n"
    )
    # An explicit command is the container's entrypoint, run with the image's own python.
    spec = ServiceSpec(
        name="probe",
        kind=ServiceKind.LEARNER,
        config={"data_server": nodes["n1"].data_server},
        image=base_image.reference,
        command=("python3", "-c", script),
        environment={"EXTRA": "yes", "FLOPS_WORKDIR": "/host/only/path"},
        resources=Resources(memory_mb=700, vcpus=0.5),
        placement=Placement(node="n1"),
    )
    service = container_adapter.add_service(adapter_app, spec)
    container_adapter.deploy_service(adapter_app, service)
    info = wait_service(container_adapter, adapter_app, service)
    assert info.state is ServiceState.SUCCEEDED, (info, container_adapter.logs(adapter_app, service))
    assert info.instances[0].node == "n1"
    assert "limit 734003200 index 0 extra yes" in container_adapter.logs(adapter_app, service)
    attributes = container_adapter.api.client.containers.get(container_name(adapter_app.app_id, service, 0)).attrs
    assert attributes["HostConfig"]["NanoCpus"] == 500_000_000
    assert attributes["HostConfig"]["NetworkMode"] == "host"


def test_memory_limits_have_a_floor_and_oom_is_reported(
    container_adapter: ContainerAdapter, adapter_app: AppRef, base_image: EnsuredImage, wait_service: Waiter
) -> None:
    hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n"
    spec = python_spec("hog", base_image.reference, hog, resources=Resources(memory_mb=100, vcpus=1))
    service = container_adapter.add_service(adapter_app, spec)
    container_adapter.deploy_service(adapter_app, service)
    info = wait_service(container_adapter, adapter_app, service)
    assert info.state is ServiceState.FAILED
    # The SLA's 100 MB is raised to the 512 MB floor; podman (cgroup v1) reports the OOM kill as SIGKILL.
    assert info.detail in (
        "container ran out of memory (limit 512 MB)",
        "process exited with code 137 (killed by SIGKILL), probably out of memory (limit 512 MB)",
    )


def test_long_lived_service_is_kept_running_across_deploys(
    container_adapter: ContainerAdapter, adapter_app: AppRef, base_image: EnsuredImage, wait_service: Waiter
) -> None:
    spec = python_spec(
        "server", base_image.reference, "import time\nwhile True: time.sleep(0.5)", kind=ServiceKind.OBSERVER
    )
    service = container_adapter.add_service(adapter_app, spec)
    container_adapter.deploy_service(adapter_app, service)
    wait_service(container_adapter, adapter_app, service, running)
    containers = container_adapter.api.client.containers
    first = containers.get(container_name(adapter_app.app_id, service, 0)).id
    container_adapter.deploy_service(adapter_app, service)  # already running: kept as is
    assert containers.get(container_name(adapter_app.app_id, service, 0)).id == first
    container_adapter.undeploy_service(adapter_app, service)
    info = wait_service(container_adapter, adapter_app, service)
    assert info.state is ServiceState.STOPPED and info.detail == "stopped on request"
    container_adapter.deploy_service(adapter_app, service)  # deploying again starts a fresh container
    wait_service(container_adapter, adapter_app, service, running)
    assert containers.get(container_name(adapter_app.app_id, service, 0)).id != first


def test_pulls_use_the_registry_credentials(
    container_adapter: ContainerAdapter,
    oci_registry: RegistrySettings,
    oci_engine: ContainerEngine,
    base_image: EnsuredImage,
    wait_service: Waiter,
    tmp_path: Path,
) -> None:
    # A tag no podman has pulled yet (podman does not ask the registry again for an image it holds).
    fresh = ImageName(base_image.name.repository, f"pull-{uuid.uuid4().hex[:12]}")
    ImageStore(oci_engine, oci_registry).push(base_image.name.local, fresh)
    reference = fresh.remote(oci_registry.address)

    wrong = oci_registry.model_copy(update={"password": "not-the-password"})
    other = ContainerAdapter(
        ContainerSettings(
            state_dir=str(tmp_path), registry=wrong, pull_policy="always", docker_host=container_adapter.api.base_url
        )
    )
    other.start()
    try:
        app = other.create_app("wrong-credentials", AppKind.PROJECT, "oci-tests")
        service = other.add_service(app, python_spec("denied", reference, "print('never')"))
        with pytest.raises(AdapterError, match=f"^cannot pull {reference}"):
            other.deploy_service(app, service)
        other.delete_app(app)
    finally:
        try:
            other.stop_everything(remove=True)  # its own data servers: close() leaves them for the next manager
        finally:
            other.close()

    app = container_adapter.create_app(f"pull-{uuid.uuid4().hex[:8]}", AppKind.PROJECT, "oci-tests")
    try:
        service = container_adapter.add_service(app, python_spec("allowed", reference, "print('pulled and ran')"))
        container_adapter.deploy_service(app, service)
        assert wait_service(container_adapter, app, service).state is ServiceState.SUCCEEDED
        # exit code 0 of the pulled image's python: the pull with the right credentials worked.
        # (Its output is not asserted: logs of a container this short-lived come back empty here.)
    finally:
        container_adapter.delete_app(app)


def test_adapter_registry_builds_the_container_adapter_from_plain_settings(tmp_path: Path) -> None:
    adapter = create_adapter("container", {"state_dir": str(tmp_path), "pull_policy": "missing"})
    assert isinstance(adapter, ContainerAdapter) and adapter.name == "container"
    app = adapter.create_app("x", AppKind.PROJECT, "c")
    with pytest.raises(AdapterError, match="neither an image nor a command"):
        adapter.add_service(app, ServiceSpec(name="nothing", kind=ServiceKind.BUILDER, config={}))
    assert list(json.loads((tmp_path / "state.json").read_text())["apps"]) == [app.app_id]


def test_services_without_an_image_run_as_host_processes(
    container_adapter: ContainerAdapter, adapter_app: AppRef, wait_service: Waiter, tmp_path: Path
) -> None:
    # The builder needs buildah on the host; observer and tracking server have no image unless configured.
    # A spec names its entry module: on the host it runs under the adapter's python (the manager's interpreter).
    script = "import json, os, sys; print('host', json.loads(os.environ['FLOPS_CONFIG'])['service'], sys.executable)"
    (tmp_path / "host_probe.py").write_text(script + "\n")
    spec = ServiceSpec(
        name="host-builder",
        kind=ServiceKind.BUILDER,
        config={"service": "host-builder"},
        module="host_probe",
        environment={"FLOPS_WORKDIR": str(tmp_path)},
    )
    service = container_adapter.add_service(adapter_app, spec)
    container_adapter.deploy_service(adapter_app, service)
    info = wait_service(container_adapter, adapter_app, service)
    assert info.state is ServiceState.SUCCEEDED, info
    written = container_adapter.host_processes.log_file(adapter_app, service).read_text().strip()
    assert written == f"host host-builder {container_adapter.settings.python}"
    labelled = {"label": [f"io.flops.app={adapter_app.app_id}", f"io.flops.service-id={service}"]}
    assert container_adapter.api.client.containers.list(all=True, filters=labelled) == []
    failing = ServiceSpec(
        name="host-crash",
        kind=ServiceKind.OBSERVER,
        config={},
        command=(sys.executable, "-c", f"import sys; sys.exit({FAILURE_EXIT_CODE})"),
    )
    container_adapter.deploy_service(adapter_app, container_adapter.add_service(adapter_app, failing))
    info = wait_service(container_adapter, adapter_app, "host-crash")
    assert info.state is ServiceState.FAILED and f"code {FAILURE_EXIT_CODE}" in info.detail


def test_k8s_file_logs_are_read_back_with_partial_lines_joined(tmp_path: Path) -> None:
    from orchestrator_adapters.container import log_file_lines

    log = tmp_path / "ctr.log"
    log.write_text(
        "2026-11-23T14:34:32.3+00:00 stdout F first\n"
        "2026-11-23T14:34:32.4+00:00 stderr P a long \n"
        "2026-11-23T14:34:32.5+00:00 stderr F line\n"
        "2026-11-23T14:34:32.6+00:00 stdout F \n"
    )
    assert log_file_lines(str(log)) == ["first", "a long line", ""]
    assert log_file_lines(str(tmp_path / "missing.log")) == []
