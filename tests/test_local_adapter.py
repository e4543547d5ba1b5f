"""The local adapter: the shared contract plus what only supervised local processes do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flops_utils.data_client import DataServerClient, from_numpy
from flops_utils.process_groups import process_alive
from orchestrator_adapters.base import (
    AdapterError,
    AppKind,
    AppRef,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    Resources,
    ServiceKind,
    ServiceSpec,
    ServiceState,
)
from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings
from orchestrator_adapters.local_process import descendant_pids, read_exit_file, spawn
from orchestrator_adapters.registry import available_adapters, create_adapter
from tests.adapter_contract import ENDED, AdapterContract, Behaviour, SpecFactory, python_command, wait_for_state
from tests.fault_injection import kill_instance

NODES = {
    "nodes": [
        {"name": "n1", "cluster": "c1", "labels": {"zone": "x"}},
        {"name": "n2", "cluster": "c2"},
        {"name": "edge", "learner": False},
    ]
}
TIMEOUT = 30.0


def spec(name: str, script: str, kind: ServiceKind = ServiceKind.BUILDER, **extra: object) -> ServiceSpec:
    return ServiceSpec(name=name, kind=kind, config={"service": name}, command=(sys.executable, "-c", script), **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> LocalAdapterSettings:
    root = tmp_path_factory.mktemp("local-adapter")
    nodes_file = root / "nodes.json"
    nodes_file.write_text(json.dumps(NODES))
    return LocalAdapterSettings(state_dir=str(root / "state"), nodes_file=str(nodes_file), stop_grace_s=3.0)


@pytest.fixture(scope="module")
def local(settings: LocalAdapterSettings) -> Iterator[LocalAdapter]:
    adapter = LocalAdapter(settings)
    try:
        adapter.start()
        yield adapter
    finally:
        adapter.stop_everything()


@pytest.fixture
def project(local: LocalAdapter) -> Iterator[AppRef]:
    app = local.create_app(f"proj-{uuid.uuid4().hex[:6]}", AppKind.PROJECT, "acme", "p1")
    try:
        yield app
    finally:
        local.delete_app(app)


class TestLocalAdapterContract(AdapterContract):
    timeout_s = TIMEOUT

    @pytest.fixture
    def adapter(self, local: LocalAdapter) -> OrchestratorAdapter:
        return local

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        def make(name: str, behaviour: Behaviour) -> ServiceSpec:
            kind = ServiceKind.OBSERVER if behaviour == "run" else ServiceKind.BUILDER
            return ServiceSpec(name=name, kind=kind, config={}, command=python_command(behaviour, sys.executable))

        return make


def test_nodes_come_from_the_file_and_learners_have_data_servers(local: LocalAdapter) -> None:
    nodes = {node.name: node for node in local.list_nodes()}
    assert list(nodes) == ["n1", "n2", "edge"]
    assert nodes["n1"].cluster == "c1" and nodes["n1"].labels == {"zone": "x"}
    assert nodes["edge"].learner is False and nodes["edge"].data_server is None
    assert local.list_clusters() == ["c1", "c2"]
    for name in ("n1", "n2"):
        address = nodes[name].data_server
        assert address is not None
        client = DataServerClient(address)
        client.put(f"probe-{name}", from_numpy([[1.0, 2.0]], [1]))
        assert client.list_tags()[f"probe-{name}"] == 1


def test_default_nodes_are_two_clusters_of_two_learners(tmp_path: Path) -> None:
    adapter = LocalAdapter(LocalAdapterSettings(state_dir=str(tmp_path)))
    nodes = adapter.list_nodes()  # no start(): nothing runs, so no data server addresses yet
    assert [(node.name, node.cluster) for node in nodes] == [
        ("node-a1", "cluster-a"),
        ("node-a2", "cluster-a"),
        ("node-b1", "cluster-b"),
        ("node-b2", "cluster-b"),
    ]
    assert all(node.learner and node.data_server is None for node in nodes)


def test_bad_nodes_file_is_a_clear_error(tmp_path: Path) -> None:
    nodes_file = tmp_path / "nodes.json"
    nodes_file.write_text(json.dumps({"nodes": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(AdapterError, match="repeated: a"):
        LocalAdapter(LocalAdapterSettings(state_dir=str(tmp_path), nodes_file=str(nodes_file))).list_nodes()
    with pytest.raises(AdapterError, match="cannot read the local nodes file"):
        LocalAdapter(LocalAdapterSettings(state_dir=str(tmp_path), nodes_file=str(tmp_path / "no.json"))).start()


def test_service_gets_config_environment_workdir_and_log(local: LocalAdapter, project: AppRef, tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import json, os
        config = json.loads(os.environ["FLOPS_CONFIG"])
        print("config", config["service"], "extra", os.environ["EXTRA"], "cwd", os.getcwd())
    """)
    service = local.add_service(
        project,
        spec(
            "envcheck",
            script,
            environment={"EXTRA": "yes", "FLOPS_WORKDIR": str(tmp_path)},
            placement=Placement(cluster="c2"),
        ),
    )
    local.deploy_service(project, service)
    info = wait_for_state(local, project, service, ENDED, TIMEOUT)
    assert info.state is ServiceState.SUCCEEDED, info
    assert info.instances[0].node == "n2"
    log = local.log_file(project, service).read_text()
    assert f"config envcheck extra yes cwd {tmp_path}" in log


def test_crash_of_a_silent_process_is_reported_failed(local: LocalAdapter, project: AppRef) -> None:
    silent = local.add_service(project, spec("silent", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    exits = local.add_service(project, spec("exits", "raise SystemExit(2)"))
    local.deploy_service(project, silent)
    local.deploy_service(project, exits)
    info = wait_for_state(local, project, silent, ENDED, TIMEOUT)
    assert info.state is ServiceState.FAILED  # recorded by the adapter's watcher: nothing in the process can
    assert info.detail.startswith("process exited with code -9 (killed by SIGKILL)")
    info = wait_for_state(local, project, exits, ENDED, TIMEOUT)
    assert (info.state, info.detail, info.instances[0].exit_code) == (
        ServiceState.FAILED,
        "process exited with code 2",
        2,
    )


def test_failure_detail_has_the_last_log_line_trimmed(local: LocalAdapter, project: AppRef) -> None:
    script = "import sys\nprint('early line')\nprint('x' * 1000, file=sys.stderr)\nprint()\nsys.exit(5)"
    service = local.add_service(project, spec("loud", script))
    local.deploy_service(project, service)
    info = wait_for_state(local, project, service, ENDED, TIMEOUT)
    prefix = "process exited with code 5: "
    assert info.detail.startswith(prefix + "xxx")
    assert len(info.detail) == len(prefix) + 300 and info.detail.endswith("...")


def test_killed_instance_is_failed_and_redeploy_restarts_it(local: LocalAdapter, project: AppRef) -> None:
    service = local.add_service(
        project, spec("victim", "import time; print('up', flush=True); time.sleep(60)", kind=ServiceKind.AGGREGATOR)
    )
    local.deploy_service(project, service, instances=2)
    info = wait_for_state(local, project, service, (ServiceState.RUNNING,), TIMEOUT)
    assert len(info.instances) == 2
    kill_instance(local, project, service, 1)
    info = wait_for_state(local, project, service, (ServiceState.FAILED,), TIMEOUT)
    assert info.detail.startswith("instance victim-1: process exited with code -9 (killed by SIGKILL)")
    assert [instance.state for instance in info.instances] == [ServiceState.RUNNING, ServiceState.FAILED]
    first_pid = _pids(local, project, service)[0]
    local.deploy_service(project, service, instances=2)  # keeps the live instance, restarts the dead one
    info = wait_for_state(local, project, service, (ServiceState.RUNNING,), TIMEOUT)
    assert [instance.state for instance in info.instances] == [ServiceState.RUNNING, ServiceState.RUNNING]
    assert _pids(local, project, service)[0] == first_pid
    local.undeploy_service(project, service)
    assert all(not process_alive(pid, None) for pid in _pids(local, project, service))


def _spawned(tmp_path: Path, name: str, command: list[str]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    log, exit_file = tmp_path / f"{name}.log", tmp_path / f"{name}.exit"
    process = spawn(command, env=dict(os.environ), cwd=str(tmp_path), log_file=str(log), exit_file=str(exit_file))
    return process, log, exit_file


def _wait_for_line(log: Path, line: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while line not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in log.read_text()


def test_a_python_service_is_one_process_that_records_its_own_exit_code(tmp_path: Path) -> None:
    """No manager waits here (no watcher thread): what is on disk is what the process wrote itself,
    as a manager started later would find it."""
    script = "import sys, time; print('up', sys.argv[1:], flush=True); time.sleep(float(sys.argv[1])); sys.exit(3)"
    process, log, exit_file = _spawned(tmp_path, "py", [sys.executable, "-c", script, "0.5"])
    _wait_for_line(log, "up ['0.5']")
    assert descendant_pids(process.pid) == []  # no wrapper shell: the service itself leads its group
    assert os.getpgid(process.pid) == process.pid
    assert process.wait(TIMEOUT) == 3
    assert read_exit_file(str(exit_file)) == 3

    sleeper = "import time\nprint('up', flush=True)\ntime.sleep(60)"
    terminated, log, exit_file = _spawned(tmp_path, "term", [sys.executable, "-c", sleeper])
    _wait_for_line(log, "up")
    terminated.terminate()
    assert terminated.wait(TIMEOUT) == -15
    assert read_exit_file(str(exit_file)) == -15  # a fatal signal it left to the default action

    crash = "def f():\n    raise ValueError('bad')\nf()"
    crashing, log, exit_file = _spawned(tmp_path, "crash", [sys.executable, "-c", crash])
    assert crashing.wait(TIMEOUT) == 1
    assert read_exit_file(str(exit_file)) == 1
    trace = log.read_text()
    assert trace.splitlines()[-1] == "ValueError: bad" and "python_launcher" not in trace  # only the program's frames

    other, log, exit_file = _spawned(tmp_path, "sh", ["/bin/sh", "-c", "echo started; exit 6"])
    assert other.wait(TIMEOUT) == 6  # not Python: under the sh wrapper, which records it
    assert read_exit_file(str(exit_file)) == 6 and log.read_text() == "started\n"


def _pids(local: LocalAdapter, app: AppRef, service_id: str) -> list[int]:
    record = local.state.read().apps[app.app_id].services[service_id]
    return [instance.pid for instance in record.instances]


def test_unknown_placement_and_missing_command_are_refused(local: LocalAdapter, project: AppRef) -> None:
    with pytest.raises(AdapterError, match="unknown node 'nowhere'"):
        local.add_service(project, spec("misplaced", "pass", placement=Placement(node="nowhere")))
    with pytest.raises(AdapterError, match="unknown cluster 'c9'"):
        local.add_service(project, spec("misplaced", "pass", placement=Placement(cluster="c9")))
    with pytest.raises(AdapterError, match="no command"):
        local.add_service(project, ServiceSpec(name="image-only", kind=ServiceKind.LEARNER, config={}, image="x"))
    with pytest.raises(AdapterError, match="no service 'ghost'"):
        local.inspect_service(project, "ghost")


def test_a_restarted_manager_inspects_and_undeploys_what_an_earlier_one_started(
    local: LocalAdapter, settings: LocalAdapterSettings, project: AppRef
) -> None:
    """The earlier manager is a separate process that exits; its services keep running."""
    earlier = textwrap.dedent(f"""
        import json, sys
        from orchestrator_adapters.base import AppKind, Placement, PortSpec, ServiceKind, ServiceSpec
        from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings
        adapter = LocalAdapter(LocalAdapterSettings.model_validate_json(sys.argv[1]))
        app = adapter.create_app({project.name!r}, AppKind.PROJECT, "acme", "p1")
        def run(name, script, kind):
            spec = ServiceSpec(name=name, kind=kind, config={{}}, command=(sys.executable, "-c", script))
            adapter.deploy_service(app, adapter.add_service(app, spec))
        run("long", "import time; time.sleep(60)", ServiceKind.OBSERVER)
        run("late-failure", "import time, sys; time.sleep(1.5); print('gave up'); sys.exit(4)", ServiceKind.LEARNER)
        port = adapter.plan_endpoint(app, "agg", PortSpec("fleet", 1), Placement()).port
        print(json.dumps({{"port": port}}))
    """)
    result = subprocess.run(
        [sys.executable, "-c", earlier, settings.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    planned = json.loads(result.stdout.strip().splitlines()[-1])["port"]

    restarted = LocalAdapter(settings)
    restarted.start()  # reuses the running data servers
    assert restarted.plan_endpoint(project, "agg", PortSpec("fleet", 1), Placement()).port == planned
    assert restarted.inspect_service(project, "long").state is ServiceState.RUNNING
    info = wait_for_state(restarted, project, "late-failure", ENDED, TIMEOUT)
    assert (info.state, info.detail) == (ServiceState.FAILED, "process exited with code 4: gave up")
    long_pid = _pids(restarted, project, "long")[0]
    restarted.undeploy_service(project, "long")
    assert restarted.inspect_service(project, "long").state is ServiceState.STOPPED
    assert not process_alive(long_pid, None)


def test_data_servers_are_reused_and_replaced_on_their_old_port(
    local: LocalAdapter, settings: LocalAdapterSettings
) -> None:
    before = local.state.read().data_servers
    again = LocalAdapter(settings)
    again.start()
    after = again.state.read().data_servers
    assert {node: record.pid for node, record in after.items()} == {node: record.pid for node, record in before.items()}

    DataServerClient(before["n1"].address).put("kept", from_numpy([[0.5]], [0]))
    os.killpg(before["n1"].pid, 9)
    deadline = time.monotonic() + TIMEOUT
    while process_alive(before["n1"].pid, before["n1"].start_ticks) and time.monotonic() < deadline:
        time.sleep(0.05)
    again.start()
    replaced = again.state.read().data_servers["n1"]
    assert replaced.pid != before["n1"].pid and replaced.address == before["n1"].address
    assert DataServerClient(replaced.address).list_tags()["kept"] == 1  # fragments survive on disk
    assert {node.name: node.data_server for node in local.list_nodes()}["n1"] == replaced.address


def test_memory_limit_applies_only_when_enabled(tmp_path: Path) -> None:
    nodes_file = tmp_path / "nodes.json"
    nodes_file.write_text(json.dumps({"nodes": [{"name": "solo", "learner": False}]}))
    hungry = spec("hungry", "bytearray(600 * 1024 * 1024); print('allocated')", resources=Resources(memory_mb=300))
    outcomes = {}
    for enforce in (True, False):
        adapter = LocalAdapter(
            LocalAdapterSettings(
                state_dir=str(tmp_path / str(enforce)), nodes_file=str(nodes_file), enforce_memory_limits=enforce
            )
        )
        adapter.start()
        app = adapter.create_app("mem", AppKind.PROJECT, "acme")
        try:
            adapter.deploy_service(app, adapter.add_service(app, hungry))
            outcomes[enforce] = wait_for_state(adapter, app, "hungry", ENDED, TIMEOUT)
        finally:
            adapter.stop_everything()
    assert outcomes[True].state is ServiceState.FAILED and "MemoryError" in outcomes[True].detail
    assert outcomes[False].state is ServiceState.SUCCEEDED


def test_registry_builds_adapters_from_plain_settings(tmp_path: Path) -> None:
    adapter = create_adapter("local", {"state_dir": str(tmp_path), "stop_grace_s": 1})
    assert isinstance(adapter, LocalAdapter) and adapter.settings.stop_grace_s == 1.0
    assert "local" in available_adapters()
    with pytest.raises(AdapterError, match="unknown orchestrator 'swarm'; choose one of local, container"):
        create_adapter("swarm", {})
    with pytest.raises(AdapterError, match="invalid settings for the local orchestrator: state_dir: Field required"):
        create_adapter("local", {"nodes": "x"})


# A service that starts helpers the way real ones do (Flower's SuperLink starts flwr-serverapp): one in a
# session of its own, one a double-forked daemon re-parented to PID 1, one working in the app's folder.
_SPAWNER = textwrap.dedent("""
    import os, subprocess, sys, time
    folder = sys.argv[1]
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.chdir(folder)
            time.sleep(300)
        os._exit(0)
    os.wait()
    print("helpers started", flush=True)
    time.sleep(300)
""")


def _live_processes_of(marker: str, folder: Path) -> list[int]:
    """Live processes whose environment carries ``marker`` or whose working directory is in ``folder``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{entry.name}/environ").read_bytes()
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if not process_alive(int(entry.name), None):
            continue
        if marker.encode() in environment or cwd == str(folder) or cwd.startswith(f"{folder}/"):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("stop", ["undeploy_service", "delete_app"])
def test_stopping_ends_every_process_the_service_started(local: LocalAdapter, stop: str, tmp_path: Path) -> None:
    app = local.create_app(f"spawner-{uuid.uuid4().hex[:6]}", AppKind.PROJECT, "acme", "p-spawn")
    folder = local.state_dir / "apps" / app.app_id
    marker = f"FLOPS_SPAWN_TEST={uuid.uuid4().hex}"
    name, value = marker.split("=")
    try:
        service = local.add_service(
            app,
            ServiceSpec(
                name="spawner",
                kind=ServiceKind.AGGREGATOR,
                config={},
                command=(sys.executable, "-c", _SPAWNER, str(folder)),
                environment={name: value},
            ),
        )
        local.deploy_service(app, service)
        log = local.log_file(app, service)
        deadline = time.monotonic() + TIMEOUT
        while "helpers started" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
        started = _live_processes_of(marker, folder)
        assert len(started) >= 3, started  # the service, its session leader, the daemon
        if stop == "undeploy_service":
            local.undeploy_service(app, service)
        else:
            local.delete_app(app)
        left = _live_processes_of(marker, folder)
        assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    finally:
        local.delete_app(app)


def test_a_killed_instance_started_again_first_loses_what_it_left_running(local: LocalAdapter, project: AppRef) -> None:
    """A builder killed with -9 leaves its pip or git running in a session of their own: redeploying it stops them."""
    marker = f"FLOPS_LEFTOVER_TEST={uuid.uuid4().hex}"
    name, value = marker.split("=")
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); "
        "print('helper started', flush=True); time.sleep(300)"
    )
    service = local.add_service(project, spec("leaver", script, environment={name: value}))
    local.deploy_service(project, service)
    log = local.log_file(project, service)
    deadline = time.monotonic() + TIMEOUT
    while "helper started" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    first = local.state.read().apps[project.app_id].services[service].instances[0]
    helpers = [pid for pid in _live_processes_of(marker, Path("/nonexistent")) if pid != first.pid]
    assert helpers, "the helper did not start"
    kill_instance(local, project, service)  # the instance's group: the helper, in its own session, lives on
    assert all(process_alive(pid, None) for pid in helpers)

    local.deploy_service(project, service)
    assert not any(process_alive(pid, None) for pid in helpers), "the helper outlived the restart"
    assert local.inspect_service(project, service).state is ServiceState.RUNNING


def test_killed_data_servers_are_revived_on_their_address_with_their_data_up_to_a_limit(
    tmp_path: Path,
) -> None:
    nodes_file = tmp_path / "nodes.json"
    nodes_file.write_text(json.dumps({"nodes": [{"name": "solo"}]}))
    adapter = LocalAdapter(LocalAdapterSettings(state_dir=str(tmp_path / "state"), nodes_file=str(nodes_file)))
    try:
        adapter.start()
        assert adapter.revive_data_servers() == []  # nothing lost
        address = adapter.state.read().data_servers["solo"].address
        DataServerClient(address).put("kept", from_numpy([[0.5]], [0]))
        for restart in (1, 2, 3):
            record = adapter.state.read().data_servers["solo"]
            os.killpg(record.pid, 9)
            assert wait_for_exit(record.pid, record.start_ticks)
            assert adapter.revive_data_servers() == [
                f"data server of node solo lost (process exited with code -9 (killed by SIGKILL)); restarted at "
                f"{address} with its data, restart {restart} of 3"
            ]
            assert DataServerClient(address).list_tags()["kept"] == 1
        record = adapter.state.read().data_servers["solo"]
        os.killpg(record.pid, 9)
        assert wait_for_exit(record.pid, record.start_ticks)
        assert adapter.revive_data_servers() == [
            "data server of node solo lost for good (process exited with code -9 (killed by SIGKILL)) after 3 restarts"
        ]
        assert adapter.revive_data_servers() == []  # said once, not again and again
    finally:
        adapter.stop_everything()


def wait_for_exit(pid: int, ticks: int | None) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while process_alive(pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_alive(pid, ticks)
