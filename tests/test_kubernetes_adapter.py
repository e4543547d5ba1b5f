"""The Kubernetes adapter's whole project flow, through the official client, against an API emulator."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flops_utils.process_groups import free_port
from flops_utils.service_config import RegistrySettings
from manager.settings import load_settings
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
from orchestrator_adapters.kubernetes import KubernetesAdapter, KubernetesSettings
from orchestrator_adapters.registry import create_adapter
from tests.adapter_contract import (
    ENDED as CONTRACT_ENDED,
)
from tests.adapter_contract import (
    FAILURE_LINE,
    AdapterContract,
    Behaviour,
    SpecFactory,
    python_command,
    wait_for_state,
)
from tests.k8s_api_emulator import KubernetesApiEmulator

LEARNER_LABELS = {"flops.io/learner": "true"}


@pytest.fixture
def emulator() -> Iterator[KubernetesApiEmulator]:
    server = KubernetesApiEmulator().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(emulator: KubernetesApiEmulator, tmp_path: Path) -> str:
    return str(emulator.write_kubeconfig(tmp_path / "kubeconfig"))


def adapter_for(kubeconfig: str, **settings: Any) -> KubernetesAdapter:
    return KubernetesAdapter(KubernetesSettings(kubeconfig=kubeconfig, **{"request_timeout_s": 20, **settings}))


def spec(
    name: str, kind: ServiceKind, placement: Placement | None = None, ports: tuple[PortSpec, ...] = ()
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        kind=kind,
        config={"project_id": "p1", "instance_name": name},
        image=f"registry:5000/flops/{kind.value}:1",
        resources=Resources(memory_mb=256, vcpus=1),
        placement=placement or Placement(),
        ports=ports,
    )


def container_status(state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "c",
        "image": "i",
        "imageID": "",
        "ready": "running" in state,
        "restartCount": 0,
        "state": state,
        "lastState": last or {},
    }


def test_constructor_does_no_io() -> None:
    adapter = KubernetesAdapter(KubernetesSettings(kubeconfig="/nonexistent/kubeconfig"))
    with pytest.raises(AdapterError, match="credentials"):
        adapter.list_nodes()


def test_project_flow_create_deploy_status_failure_cleanup(emulator: KubernetesApiEmulator, kubeconfig: str) -> None:
    emulator.add_node("node-a", LEARNER_LABELS)
    emulator.add_node("node-b", LEARNER_LABELS)
    registry = RegistrySettings(address="registry:5000", username="flops", password="pw")
    adapter = adapter_for(kubeconfig, registry=registry)
    before = emulator.keys()

    app = adapter.create_app("project-p1", AppKind.PROJECT, "Admin", "p1")
    namespace = emulator.get("namespaces", None, app.app_id)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["flops.io/customer"] == "Admin"
    assert namespace["metadata"]["labels"]["flops.io/project"] == "p1"
    assert adapter.find_app("project-p1", "Admin") == app
    assert adapter.find_app("project-p1", "someone-else") is None
    assert adapter.create_app("project-p1", AppKind.PROJECT, "Admin", "p1") == app  # idempotent
    pull = emulator.get("secrets", app.app_id, "flops-registry")
    assert pull is not None and pull["type"] == "kubernetes.io/dockerconfigjson"

    # The aggregator: a Job plus a Service at the planned DNS name.
    fleet = PortSpec("fleet", 9092)
    endpoint = adapter.plan_endpoint(app, "aggregator", fleet, Placement())
    assert endpoint.address == f"aggregator.{app.app_id}.svc.cluster.local:9092"
    assert adapter.plan_endpoint(app, "aggregator", fleet, Placement()) == endpoint
    aggregator = adapter.add_service(app, spec("aggregator", ServiceKind.AGGREGATOR, ports=(fleet,)))
    assert adapter.inspect_service(app, aggregator).state is ServiceState.PENDING  # registered, not deployed
    adapter.deploy_service(app, aggregator)
    service = emulator.get("services", app.app_id, "aggregator")
    assert service is not None and service["spec"]["ports"][0]["port"] == 9092
    assert adapter.inspect_service(app, aggregator).state is ServiceState.PENDING
    with pytest.raises(AdapterError, match="already running"):
        adapter.deploy_service(app, aggregator)

    (pod,) = emulator.spawn_pods("jobs", app.app_id, "aggregator", ["node-a"])
    spawned = emulator.get("pods", app.app_id, pod)
    assert spawned is not None
    env = spawned["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "aggregator-config", "key": "FLOPS_CONFIG"}
    emulator.set_status(
        "pods",
        app.app_id,
        pod,
        {
            "phase": "Running",
            "containerStatuses": [container_status({"running": {"startedAt": "2026-01-01T00:00:00Z"}})],
        },
    )
    info = adapter.inspect_service(app, aggregator)
    assert info.state is ServiceState.RUNNING and info.instances[0].node == "node-a"

    # Two learners; one crashes: FAILED with the container's reason and message, no MQTT needed.
    learners = []
    for node in ("node-a", "node-b"):
        learner = adapter.add_service(app, spec(f"learner-{node}", ServiceKind.LEARNER, Placement(node=node)))
        adapter.deploy_service(app, learner)
        learners.append(learner)
        (pod,) = emulator.spawn_pods("jobs", app.app_id, learner, [node])
        if node == "node-b":
            crash = {
                "exitCode": 1,
                "reason": "Error",
                "message": "Traceback (most recent call last):\nValueError: no data",
            }
            emulator.set_status(
                "pods",
                app.app_id,
                pod,
                {"phase": "Failed", "containerStatuses": [container_status({"terminated": crash})]},
            )
            emulator.set_status(
                "jobs",
                app.app_id,
                learner,
                {
                    "failed": 1,
                    "conditions": [
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                        }
                    ],
                },
            )
    job = emulator.get("jobs", app.app_id, "learner-node-a")
    assert job is not None and job["spec"]["backoffLimit"] == 0
    affinity = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0][
        "values"
    ] == ["node-a"]
    failed = adapter.inspect_service(app, learners[1])
    assert failed.state is ServiceState.FAILED
    assert "Error (exit code 1): ValueError: no data" in failed.detail
    assert failed.instances[0].exit_code == 1

    # The aggregator completes.
    emulator.set_status(
        "jobs", app.app_id, "aggregator", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    )
    (pod,) = [
        p["metadata"]["name"]
        for p in emulator.items("pods", app.app_id)
        if p["metadata"]["name"].startswith("aggregator")
    ]
    emulator.set_status(
        "pods",
        app.app_id,
        pod,
        {
            "phase": "Succeeded",
            "containerStatuses": [container_status({"terminated": {"exitCode": 0, "reason": "Completed"}})],
        },
    )
    assert adapter.inspect_service(app, aggregator).state is ServiceState.SUCCEEDED

    # Undeploy keeps the registration; the workload, its pods and its Service go.
    adapter.undeploy_service(app, learners[0])
    assert emulator.get("jobs", app.app_id, "learner-node-a") is None
    assert not [p for p in emulator.items("pods", app.app_id) if p["metadata"]["name"].startswith("learner-node-a")]
    assert adapter.inspect_service(app, learners[0]).state is ServiceState.STOPPED
    adapter.undeploy_service(app, learners[0])  # twice is fine
    adapter.undeploy_service(app, "never-added")
    assert adapter.inspect_service(app, "never-added").state is ServiceState.UNKNOWN

    created = set(emulator.created)
    adapter.delete_app(app)
    adapter.delete_app(app)  # twice is fine
    assert emulator.keys() == before
    assert set(emulator.deleted) <= created  # it deleted only what it had created
    assert ("namespaces", None, app.app_id) in emulator.deleted
    adapter.close()


def test_cleanup_leaves_other_apps_and_foreign_objects(emulator: KubernetesApiEmulator, kubeconfig: str) -> None:
    emulator.put("namespaces", {"metadata": {"name": "default"}})
    foreign_labels = {"app.kubernetes.io/managed-by": "flops", "flops.io/app": "default"}
    emulator.put("secrets", {"metadata": {"name": "keep-me", "namespace": "default", "labels": foreign_labels}})
    adapter = adapter_for(kubeconfig)
    first = adapter.create_app("project-a", AppKind.PROJECT, "Admin", "a")
    second = adapter.create_app("observatory", AppKind.OBSERVATORY, "Admin")
    for app in (first, second):
        observer = adapter.add_service(app, spec("observer", ServiceKind.OBSERVER, ports=(PortSpec("http", 8090),)))
        adapter.deploy_service(app, observer, instances=2)
        emulator.spawn_pods("deployments", app.app_id, "observer", ["node-a", "node-b"])
    survivors = {key for key in set(emulator.keys()) if key[1] != first.app_id and key[2] != first.app_id}

    adapter.delete_app(first)
    assert emulator.keys() == survivors
    assert emulator.get("secrets", "default", "keep-me") is not None
    assert adapter.find_app("observatory", "Admin") == second
    assert adapter.find_app("project-a", "Admin") is None


def test_a_namespace_flops_did_not_create_is_neither_taken_nor_deleted(
    emulator: KubernetesApiEmulator, kubeconfig: str
) -> None:
    adapter = adapter_for(kubeconfig)
    planned = adapter.create_app("project-x", AppKind.PROJECT, "Admin", "x")
    adapter.delete_app(planned)
    emulator.put("namespaces", {"metadata": {"name": planned.app_id, "labels": {"team": "data"}}})
    with pytest.raises(AdapterError, match="already exists"):
        adapter.create_app("project-x", AppKind.PROJECT, "Admin", "x")
    assert adapter.find_app("project-x", "Admin") is None
    adapter.delete_app(planned)
    assert emulator.get("namespaces", None, planned.app_id) is not None


def test_long_lived_services_report_crash_loops_and_redeploy(emulator: KubernetesApiEmulator, kubeconfig: str) -> None:
    adapter = adapter_for(kubeconfig)
    app = adapter.create_app("observatory", AppKind.OBSERVATORY, "Admin")
    tracking = adapter.add_service(app, spec("tracking", ServiceKind.TRACKING, ports=(PortSpec("http", 5000),)))
    adapter.deploy_service(app, tracking)
    (pod,) = emulator.spawn_pods("deployments", app.app_id, "tracking", ["node-a"])
    emulator.set_status(
        "pods",
        app.app_id,
        pod,
        {
            "phase": "Running",
            "containerStatuses": [
                container_status(
                    {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
                    {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": "sqlalchemy.exc.OperationalError: locked",
                        }
                    },
                )
            ],
        },
    )
    info = adapter.inspect_service(app, tracking)
    assert info.state is ServiceState.FAILED
    assert "CrashLoopBackOff" in info.detail and "OperationalError: locked" in info.detail

    emulator.set_status(
        "pods",
        app.app_id,
        pod,
        {
            "phase": "Running",
            "containerStatuses": [container_status({"running": {"startedAt": "2026-01-01T00:00:00Z"}})],
        },
    )
    emulator.set_status("deployments", app.app_id, "tracking", {"replicas": 1, "readyReplicas": 1})
    assert adapter.inspect_service(app, tracking).state is ServiceState.RUNNING

    adapter.deploy_service(app, tracking, instances=3)  # deploying again updates the Deployment
    deployment = emulator.get("deployments", app.app_id, "tracking")
    assert deployment is not None and deployment["spec"]["replicas"] == 3


def test_a_restarted_manager_deploys_what_it_registered(emulator: KubernetesApiEmulator, kubeconfig: str) -> None:
    first = adapter_for(kubeconfig)
    app = first.create_app("project-r", AppKind.PROJECT, "Admin", "r")
    builder = first.add_service(app, spec("builder", ServiceKind.BUILDER))
    first.close()

    second = adapter_for(kubeconfig)
    found = second.find_app("project-r", "Admin")
    assert found == app
    second.deploy_service(found, builder)
    job = emulator.get("jobs", app.app_id, "builder")
    assert job is not None
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry:5000/flops/builder:1"
    secret = emulator.get("secrets", app.app_id, "builder-config")
    assert secret is not None
    assert json.loads(base64.b64decode(secret["data"]["FLOPS_CONFIG"])) == {
        "project_id": "p1",
        "instance_name": "builder",
    }


def test_nodes_clusters_data_servers_and_tags(emulator: KubernetesApiEmulator, kubeconfig: str) -> None:
    zone = "topology.kubernetes.io/zone"
    tags = {"flops.io/data-tags": "mnist, cifar10"}
    emulator.add_node("edge-1", {**LEARNER_LABELS, zone: "zone-a"}, tags)
    emulator.add_node("edge-2", {**LEARNER_LABELS, zone: "zone-b"}, {"flops.io/data-server": "198.51.100.7:9400"})
    emulator.add_node("control", {zone: "zone-a"})
    sick = emulator.add_node("edge-3", {**LEARNER_LABELS, zone: "zone-b"})
    emulator.set_status("nodes", None, sick["metadata"]["name"], {"conditions": [{"type": "Ready", "status": "False"}]})
    adapter = adapter_for(kubeconfig)

    app = adapter.create_app("data", AppKind.OBSERVATORY, "Admin")
    data_server = adapter.add_service(
        app, spec("data-server", ServiceKind.DATA_SERVER, ports=(PortSpec("flight", 9400),))
    )
    adapter.deploy_service(app, data_server)
    daemonset = emulator.get("daemonsets", app.app_id, "data-server")
    assert daemonset is not None
    assert daemonset["spec"]["template"]["spec"]["nodeSelector"] == {"flops.io/learner": "true"}
    (pod,) = emulator.spawn_pods("daemonsets", app.app_id, "data-server", ["edge-1"])
    emulator.set_status(
        "pods",
        app.app_id,
        pod,
        {
            "phase": "Running",
            "hostIP": "192.0.2.50",
            "containerStatuses": [container_status({"running": {"startedAt": "2026-01-01T00:00:00Z"}})],
        },
    )

    nodes = {node.name: node for node in adapter.list_nodes()}
    assert sorted(nodes) == ["control", "edge-1", "edge-2", "edge-3"]
    assert nodes["edge-1"].learner and nodes["edge-1"].cluster == "zone-a"
    assert nodes["edge-1"].data_server == "192.0.2.50:9400"
    assert nodes["edge-1"].labels["flops.io/data-tags"] == "cifar10,mnist"
    assert nodes["edge-2"].data_server == "198.51.100.7:9400"
    assert not nodes["control"].learner and not nodes["edge-3"].learner
    assert adapter.list_clusters() == ["zone-a", "zone-b"]

    project = adapter.create_app("project-t", AppKind.PROJECT, "Admin", "t")
    tagged = adapter.add_service(project, spec("learner-any", ServiceKind.LEARNER, Placement(data_tags=("cifar10",))))
    adapter.deploy_service(project, tagged)
    job = emulator.get("jobs", project.app_id, "learner-any")
    assert job is not None
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["edge-1"]
    untagged = adapter.add_service(project, spec("learner-none", ServiceKind.LEARNER, Placement(data_tags=("x",))))
    with pytest.raises(AdapterError, match="no node advertises data tags"):
        adapter.deploy_service(project, untagged)


def test_start_runs_a_data_server_on_every_learner_node(emulator: KubernetesApiEmulator, kubeconfig: str) -> None:
    emulator.add_node("edge-1", LEARNER_LABELS)
    emulator.add_node("control")
    adapter_for(kubeconfig).start()  # nothing to run without a data server image
    assert not emulator.items("daemonsets")
    adapter = adapter_for(kubeconfig, data_server_image="registry:5000/flops/manager:1", data_server_port=9555)
    adapter.start()
    adapter.start()  # idempotent: the DaemonSet is updated, not duplicated
    (daemonset,) = emulator.items("daemonsets")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"flops.io/learner": "true"}
    assert pod["containers"][0]["command"] == ["flops-data-server"]
    assert pod["containers"][0]["ports"][0]["hostPort"] == 9555
    namespace = daemonset["metadata"]["namespace"]
    (name,) = emulator.spawn_pods("daemonsets", namespace, daemonset["metadata"]["name"], ["edge-1"])
    emulator.set_status(
        "pods",
        namespace,
        name,
        {
            "phase": "Running",
            "hostIP": "192.0.2.77",
            "containerStatuses": [container_status({"running": {"startedAt": "2026-01-01T00:00:00Z"}})],
        },
    )
    nodes = {node.name: node for node in adapter.list_nodes()}
    assert nodes["edge-1"].data_server == "192.0.2.77:9555" and nodes["control"].data_server is None


def test_the_daemonsets_data_servers_get_tls_and_the_token_key(
    emulator: KubernetesApiEmulator, kubeconfig: str, tmp_path: Path
) -> None:
    from manager.lifecycle.data_access import DataAccess
    from manager.security.tracking_pki import TrackingPki

    security = DataAccess(TrackingPki(tmp_path / "pki")).server_security()
    emulator.add_node("edge-2", LEARNER_LABELS)
    adapter_for(
        kubeconfig, data_server_image="registry:5000/flops/manager:1", data_security=security.model_dump()
    ).start()
    (daemonset,) = emulator.items("daemonsets")
    namespace = daemonset["metadata"]["namespace"]
    secret = emulator.get("secrets", namespace, "data-server-config")
    assert secret is not None
    config = json.loads(base64.b64decode(secret["data"]["FLOPS_CONFIG"]))
    assert config["tls"] == {"cert_pem": security.cert_pem, "key_pem": security.key_pem}
    assert config["token_public_key_pem"] == security.token_public_key_pem
    assert config["node_from_env"] == "FLOPS_NODE_NAME"  # each pod checks tokens against its own node
    env = daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FLOPS_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in env


def test_errors_are_one_clear_sentence(emulator: KubernetesApiEmulator, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text(Path(emulator.write_kubeconfig(tmp_path / "kc")).read_text().replace("test-token", "bad"))
    with pytest.raises(AdapterError, match="Kubernetes refused to list nodes: Unauthorized"):
        adapter_for(str(wrong)).list_nodes()

    closed_port = free_port()
    unreachable = tmp_path / "unreachable"
    unreachable.write_text((tmp_path / "kc").read_text().replace(emulator.url, f"http://127.0.0.1:{closed_port}"))
    adapter = adapter_for(str(unreachable), request_timeout_s=2)
    with pytest.raises(AdapterError, match="cannot reach the Kubernetes API"):
        adapter.create_app("p", AppKind.PROJECT, "Admin", "p")
    with pytest.raises(AdapterError, match="no image"):
        adapter.add_service(
            adapter_for(str(tmp_path / "kc")).create_app("p", AppKind.PROJECT, "Admin", "p"),
            ServiceSpec("s", ServiceKind.BUILDER, {}),
        )


class TestKubernetesAdapterContract(AdapterContract):
    """The shared contract, with pods really running (as local processes) in the emulator."""

    timeout_s = 30.0

    @pytest.fixture
    def adapter(self, tmp_path: Path) -> Iterator[OrchestratorAdapter]:
        emulator = KubernetesApiEmulator(run_pods=True).start()
        emulator.add_node("node-a", LEARNER_LABELS)
        emulator.add_node("node-b")
        adapter = adapter_for(str(emulator.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            yield adapter
        finally:
            adapter.close()
            emulator.stop()

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        def make(name: str, behaviour: Behaviour) -> ServiceSpec:
            kind = ServiceKind.OBSERVER if behaviour == "run" else ServiceKind.BUILDER
            command = python_command(behaviour, sys.executable)
            return ServiceSpec(name=name, kind=kind, config={}, image="python:3.11-slim", command=command)

        return make

    def test_a_crash_is_reported_with_its_exit_code_and_last_line(
        self, adapter: OrchestratorAdapter, app: AppRef, make_spec: SpecFactory
    ) -> None:
        service_id = adapter.add_service(app, make_spec("crash", "fail"))
        adapter.deploy_service(app, service_id)
        info = wait_for_state(adapter, app, service_id, CONTRACT_ENDED, self.timeout_s)
        assert info.state is ServiceState.FAILED
        assert "exit code 3" in info.detail and FAILURE_LINE in info.detail, info.detail


def test_the_documented_manager_configuration_selects_this_adapter(tmp_path: Path) -> None:
    """docs/kubernetes.md's manager.json is valid and makes the registry build a KubernetesAdapter."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "kubernetes.md").read_text()
    document = text.split("```json\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "manager.json"
    config.write_text(document)
    settings = load_settings(config, environ={})
    assert settings.orchestrator == "kubernetes"
    adapter = create_adapter(settings.orchestrator, settings.adapter_settings["kubernetes"])
    assert isinstance(adapter, KubernetesAdapter)
    assert adapter.settings.context == "prod" and adapter.settings.pull_secret_name == "flops-registry"
    with pytest.raises(AdapterError, match="invalid settings for the kubernetes orchestrator: namespace_prefix"):
        create_adapter("kubernetes", {"namespace_prefix": "Not_A_DNS_Label"})
