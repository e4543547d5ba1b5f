"""The Oakestra adapter's whole project flow against a server implementing the documented contract."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flops_utils.process_groups import free_port
from flops_utils.service_config import MqttSettings
from manager.broker_access import SharedAccess
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.errors import PhaseFailed
from manager.lifecycle.inbox import ProjectInbox
from manager.lifecycle.observatory import Observatory, ObservatoryKeeper
from manager.lifecycle.project_run import ProjectRun, RunDeps
from manager.lifecycle.service_entries import ServiceTable, entry
from manager.records import ProjectRecord
from manager.settings import load_settings
from manager.sla import ProjectSLA
from manager.storage.mongo import MongoProjectStore
from manager.tracking_store import TrackingStore
from orchestrator_adapters import oakestra_sla as sla
from orchestrator_adapters.base import (
    AdapterError,
    AppKind,
    AppRef,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    Resources,
    ServiceInfo,
    ServiceKind,
    ServiceSpec,
    ServiceState,
)
from orchestrator_adapters.oakestra import OakestraAdapter, OakestraNode, OakestraSettings
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
from tests.oakestra_contract_server import OakestraContractServer

ENDED = (ServiceState.SUCCEEDED, ServiceState.FAILED, ServiceState.STOPPED)
FLEET = PortSpec("fleet", 9092)


def cluster(
    name: str, addons: tuple[str, ...] = ("FLOps-learner",), active: bool = True, **offer: Any
) -> dict[str, Any]:
    return {
        "_id": {"$oid": f"{name:0>24}"[-24:]},
        "cluster_name": name,
        "cluster_location": f"{name}-site",
        "supported_addons": list(addons),
        "active": active,
        **offer,
    }


@pytest.fixture
def server() -> Iterator[OakestraContractServer]:
    running = OakestraContractServer().start()
    try:
        yield running
    finally:
        running.stop()
        assert running.violations == [], "the adapter sent SLAs that break the v2.0 rules"


def adapter_for(server: OakestraContractServer, **settings: Any) -> OakestraAdapter:
    values: dict[str, Any] = {"url": server.url, "username": "Admin", "password": "Admin", "request_timeout_s": 20}
    return OakestraAdapter(OakestraSettings(**{**values, **settings}))


def spec(
    name: str, kind: ServiceKind, placement: Placement | None = None, ports: tuple[PortSpec, ...] = ()
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        kind=kind,
        config={"project_id": "p1", "instance_name": name, "note": 'a=b; "quoted"'},
        image=f"registry:5000/flops/{kind.value}:1",
        command=("python", "-m", f"services.{kind.value}.main"),
        environment={"FLOPS_WORKDIR": "/work"},
        resources=Resources(memory_mb=300, vcpus=0.5, storage_mb=10),
        placement=placement or Placement(),
        ports=ports,
    )


def settle(adapter: OakestraAdapter, app: AppRef, service_id: str, states: tuple[ServiceState, ...]) -> ServiceInfo:
    """Poll (each poll advances the server's state machine) until one of ``states``."""
    deadline = time.monotonic() + 30
    info = adapter.inspect_service(app, service_id)
    while info.state not in states:
        assert time.monotonic() < deadline, f"{service_id} stayed {info}"
        time.sleep(0.02)
        info = adapter.inspect_service(app, service_id)
    return info


def job_named(server: OakestraContractServer, flops_name: str) -> dict[str, Any]:
    (job,) = [job for job in server.jobs.values() if sla.flops_name_of(job) == flops_name]
    return job


def test_constructor_does_no_io() -> None:
    adapter = OakestraAdapter(OakestraSettings(url=f"http://127.0.0.1:{free_port()}", username="u", password="p"))
    with pytest.raises(AdapterError, match="cannot reach the Oakestra root orchestrator"):
        adapter.list_nodes()


def test_classic_project_flow(server: OakestraContractServer) -> None:
    adapter = adapter_for(server)
    observatory = adapter.create_app("observatory-admin", AppKind.OBSERVATORY, "Admin")
    assert adapter.create_app("observatory-admin", AppKind.OBSERVATORY, "Admin") == observatory
    assert adapter.find_app("observatory-admin", "Admin") == observatory
    assert adapter.find_app("observatory-admin", "Bob") is None
    stored = server.apps[observatory.app_id]
    assert len(stored["application_name"]) <= 10 and stored["application_namespace"] == "flops"

    http = PortSpec("http", 5000)
    endpoint = adapter.plan_endpoint(observatory, "tracking", http, Placement())
    assert endpoint.host.startswith("10.30.") and endpoint.port == 5000
    tracking = adapter.add_service(observatory, spec("tracking", ServiceKind.TRACKING, ports=(http,)))
    assert adapter.plan_endpoint(observatory, "tracking", http, Placement()) == endpoint
    assert server.jobs[tracking]["RR_ip"] == endpoint.host
    assert adapter.inspect_service(observatory, tracking).state is ServiceState.PENDING  # not deployed yet
    adapter.deploy_service(observatory, tracking)
    info = settle(adapter, observatory, tracking, (ServiceState.RUNNING, *ENDED))
    assert info.state is ServiceState.RUNNING and info.instances[0].node == "munich"

    project = adapter.create_app("project-p1", AppKind.PROJECT, "Admin", "p1")
    assert project.project_id == "p1" and project.app_id != observatory.app_id
    builder = adapter.add_service(project, spec("builder", ServiceKind.BUILDER))
    adapter.deploy_service(project, builder)
    assert settle(adapter, project, builder, ENDED).state is ServiceState.SUCCEEDED

    aggregator_endpoint = adapter.plan_endpoint(project, "aggregator", FLEET, Placement())
    assert aggregator_endpoint != endpoint
    aggregator = adapter.add_service(project, spec("aggregator", ServiceKind.AGGREGATOR, ports=(FLEET,)))
    adapter.deploy_service(project, aggregator)
    (node,) = adapter.list_nodes()
    assert (node.name, node.cluster, node.learner, node.data_server) == ("cluster-a", "cluster-a", True, None)
    learners = []
    for index in (1, 2):
        learner = spec(f"learner-{index}", ServiceKind.LEARNER, Placement(node=node.name, data_tags=("mnist",)))
        learners.append(adapter.add_service(project, learner))
    server.set_fate(sla.microservice_name("learner-2"), "FAILED", "exit code 1: ValueError: no data for tags ['mnist']")
    for learner_id in learners:
        adapter.deploy_service(project, learner_id)
    assert settle(adapter, project, learners[0], ENDED).state is ServiceState.SUCCEEDED
    failed = settle(adapter, project, learners[1], ENDED)
    assert failed.state is ServiceState.FAILED and failed.name == "learner-2"
    assert "FAILED" in failed.detail and "ValueError: no data for tags" in failed.detail

    # What Oakestra received for a learner: the config document in the environment, placement constraints.
    job = job_named(server, "learner-1")
    environment = sla.environment_of(job)
    assert json.loads(environment["FLOPS_CONFIG"]) == spec("learner-1", ServiceKind.LEARNER).config
    assert environment["FLOPS_WORKDIR"] == "/work"
    assert job["constraints"] == [{"type": "direct", "cluster": "cluster-a"}]  # the only kind Oakestra reads
    assert job["virtualization"] == "docker"  # what the root stores for "container"
    assert job["one_shot"] is True and job["vcpus"] == 1 and job["memory"] == 300
    assert job["cmd"] == ["python", "-m", "services.learner.main"]

    # Undeploy and redeploy; unknown services.
    adapter.undeploy_service(observatory, tracking)
    assert adapter.inspect_service(observatory, tracking).state is ServiceState.STOPPED
    adapter.undeploy_service(observatory, tracking)
    adapter.deploy_service(observatory, tracking)
    assert settle(adapter, observatory, tracking, (ServiceState.RUNNING,)).state is ServiceState.RUNNING
    assert adapter.inspect_service(project, "0" * 24).state is ServiceState.UNKNOWN
    adapter.undeploy_service(project, "0" * 24)
    with pytest.raises(AdapterError, match="no service"):
        adapter.deploy_service(project, "0" * 24)

    adapter.delete_app(project)
    adapter.delete_app(project)
    assert adapter.find_app("project-p1", "Admin") is None
    assert not server.jobs_of(project.app_id)
    assert adapter.inspect_service(project, builder).state is ServiceState.UNKNOWN
    assert adapter.find_app("observatory-admin", "Admin") == observatory
    adapter.delete_app(observatory)
    assert server.apps == {} and server.jobs == {}
    assert len(server.slas) == 2 + 1 + 1 + 1 + 2  # two apps, then tracking, builder, aggregator, two learners


def test_hierarchical_flow_places_by_direct_constraints() -> None:
    """Oakestra's scheduler reads only ``direct`` constraints: without them everything lands on the first cluster."""
    clusters = [
        cluster("cluster-a", workers=["n1"]),
        cluster("cluster-b", workers=["n2"]),
        cluster("cluster-c", addons=(), memory=200),
        cluster("cluster-d", active=False),
    ]
    server = OakestraContractServer(clusters=clusters).start()
    try:
        inventory = [
            OakestraNode(name="n1", cluster="cluster-a", data_server="192.0.2.1:9400"),
            OakestraNode(name="n2", cluster="cluster-b", data_server="192.0.2.2:9400"),
            OakestraNode(name="n3", cluster="cluster-d", data_server="192.0.2.3:9400"),
        ]
        adapter = adapter_for(server, nodes=inventory)
        nodes = adapter.list_nodes()
        assert [(node.name, node.cluster, node.data_server) for node in nodes] == [
            ("n1", "cluster-a", "192.0.2.1:9400"),
            ("n2", "cluster-b", "192.0.2.2:9400"),
        ]
        assert adapter.list_clusters() == ["cluster-a", "cluster-b"]

        app = adapter.create_app("project-h", AppKind.PROJECT, "Admin", "h")
        root = adapter.add_service(app, spec("root-aggregator", ServiceKind.AGGREGATOR, ports=(FLEET,)))
        adapter.deploy_service(app, root)
        services = {}
        for node in nodes:
            name = f"cluster-aggregator-{node.cluster}"
            adapter.plan_endpoint(app, name, FLEET, Placement(cluster=node.cluster))
            services[name] = adapter.add_service(
                app, spec(name, ServiceKind.AGGREGATOR, Placement(cluster=node.cluster), ports=(FLEET,))
            )
            learner = spec(f"learner-{node.name}", ServiceKind.LEARNER, Placement(node=node.name, cluster=node.cluster))
            services[learner.name] = adapter.add_service(app, learner)
        for service_id in services.values():
            adapter.deploy_service(app, service_id)
        for name, service_id in services.items():
            info = settle(adapter, app, service_id, ENDED)
            assert info.state is ServiceState.SUCCEEDED, (name, info)
        job = job_named(server, "learner-n2")
        assert job["constraints"] == [{"type": "direct", "cluster": "cluster-b", "node": "n2"}]
        assert "target_node" not in job
        assert job["instance_list"][0]["cluster_location"] == "cluster-b-site"  # not the first cluster
        for name in ("cluster-aggregator-cluster-a", "cluster-aggregator-cluster-b"):
            where = name.removeprefix("cluster-aggregator-")
            aggregator_job = job_named(server, name)
            assert aggregator_job["constraints"] == [{"type": "direct", "cluster": where}]
            assert aggregator_job["instance_list"][0]["cluster_location"] == f"{where}-site"
        addresses = [job["RR_ip"] for job in server.jobs.values() if job.get("RR_ip")]
        assert len(addresses) == 3 and len(set(addresses)) == 3

        # Scheduling failures surface as FAILED with Oakestra's reason.
        stranded = adapter.add_service(
            app, spec("cluster-aggregator-d", ServiceKind.AGGREGATOR, Placement(cluster="cluster-d"))
        )
        adapter.deploy_service(app, stranded)
        info = settle(adapter, app, stranded, ENDED)
        assert info.state is ServiceState.FAILED and not info.redeployable
        assert info.detail == (
            "Oakestra cannot schedule service cluster-aggregator-d: its target cluster cluster-d is not active "
            "(TargetClusterNotActive; it asked for 1 vCPU, 300 MB memory, docker; direct constraint "
            "cluster=cluster-d). Redeploying cannot help: free or add capacity, or change the placement"
        )
        too_big = adapter.add_service(app, spec("learner-c", ServiceKind.LEARNER, Placement(cluster="cluster-c")))
        adapter.deploy_service(app, too_big)  # cluster-c offers 200 MB, the learner asks for 300
        info = settle(adapter, app, too_big, ENDED)
        assert info.state is ServiceState.FAILED and not info.redeployable
        assert info.detail.startswith(
            "Oakestra cannot schedule service learner-c: no active cluster cluster-c has "
            "room for it (NoActiveClusterWithCapacity; it asked for 1 vCPU, 300 MB memory"
        )
        assert "Waiting for scheduling decision" not in info.detail  # the root's stale status_detail
        assert job_named(server, "learner-c")["status_detail"] == "Waiting for scheduling decision"
        ghost_spec = spec("learner-n9", ServiceKind.LEARNER, Placement(node="n9", cluster="cluster-a"))
        ghost = adapter.add_service(app, ghost_spec)
        adapter.deploy_service(app, ghost)  # cluster-a has no worker n9
        info = settle(adapter, app, ghost, ENDED)
        assert info.state is ServiceState.FAILED and not info.redeployable
        assert "its target worker n9 was not found in its cluster cluster-a (NO_NODE_FOUND" in info.detail

        # Without an inventory, each active cluster is one node; a learner pinned to it gets a direct cluster.
        plain = adapter_for(server)
        assert [(node.name, node.learner) for node in plain.list_nodes()] == [
            ("cluster-a", True),
            ("cluster-b", True),
            ("cluster-c", False),
        ]
        adapter.delete_app(app)
        assert server.violations == []
    finally:
        server.stop()


def supervise(adapter: OakestraAdapter, app: AppRef, service_id: str, polls: int = 60) -> tuple[int, ServiceInfo]:
    """What the lifecycle does while a project trains: poll, and deploy again whatever is reported FAILED.

    Returns how many restarts it made and the state after ``polls`` polls.
    """
    restarts = 0
    for _ in range(polls):
        info = adapter.inspect_service(app, service_id)
        if info.state is ServiceState.FAILED:
            assert info.redeployable, info
            restarts += 1
            adapter.deploy_service(app, service_id)
        time.sleep(0.01)
    return restarts, adapter.inspect_service(app, service_id)


def posted_instances(server: OakestraContractServer, service_id: str) -> int:
    return server.requests.count(("POST", f"/api/service/{service_id}/instance", 200))


def test_a_failed_instance_is_removed_and_counted_once(server: OakestraContractServer) -> None:
    """Oakestra keeps listing a FAILED instance beside its replacement: it must not count as lost again."""
    adapter = adapter_for(server)
    app = adapter.create_app("project-r", AppKind.PROJECT, "Admin", "r")
    service_id = adapter.add_service(app, spec("observer-r", ServiceKind.OBSERVER))
    server.set_fate(sla.microservice_name("observer-r"), "FAILED", "exit code 1: boom", instances=1)
    adapter.deploy_service(app, service_id)
    failed = settle(adapter, app, service_id, ENDED)
    assert failed.state is ServiceState.FAILED and failed.detail == "instance 0: FAILED: exit code 1: boom"

    adapter.deploy_service(app, service_id)  # the lifecycle's restart
    restarts, info = supervise(adapter, app, service_id)
    assert (restarts, info.state) == (0, ServiceState.RUNNING), info
    assert ("DELETE", f"/api/service/{service_id}/instance/0", 200) in server.requests
    assert [(i["instance_number"], i["status"]) for i in server.jobs[service_id]["instance_list"]] == [(1, "RUNNING")]
    assert posted_instances(server, service_id) == 2
    adapter.deploy_service(app, service_id)  # deploying a live service again adds nothing
    assert posted_instances(server, service_id) == 2


def test_a_redeployed_service_has_time_to_be_scheduled(server: OakestraContractServer) -> None:
    adapter = adapter_for(server, schedule_grace_s=0.5)
    app = adapter.create_app("project-g", AppKind.PROJECT, "Admin", "g")
    service_id = adapter.add_service(app, spec("observer-g", ServiceKind.OBSERVER))
    server.set_fate(sla.microservice_name("observer-g"), "FAILED", "exit code 1: boom", instances=1)
    adapter.deploy_service(app, service_id)
    assert settle(adapter, app, service_id, ENDED).state is ServiceState.FAILED
    adapter.deploy_service(app, service_id)  # the restart
    job = server.jobs[service_id]
    job["_requested"], job["status"] = 0, "FAILED"  # not scheduled (yet), and the job shows the lost instance's status
    info = adapter.inspect_service(app, service_id)
    assert (info.state, info.detail) == (ServiceState.PENDING, "redeployed, waiting for Oakestra to schedule it")
    time.sleep(0.6)  # past schedule_grace_s: the status is taken at its word
    assert adapter.inspect_service(app, service_id).state is ServiceState.FAILED


def test_oakestras_own_redeploy_is_not_doubled(server: OakestraContractServer) -> None:
    adapter = adapter_for(server)
    app = adapter.create_app("project-s", AppKind.PROJECT, "Admin", "s")
    # The cluster orchestrator replaces the failed instance at once: FLOps sees a live service and does nothing.
    quick = adapter.add_service(app, spec("observer-q", ServiceKind.OBSERVER))
    server.set_fate(sla.microservice_name("observer-q"), "FAILED", "exit code 1: boom", instances=1)
    server.redeploy_failed(sla.microservice_name("observer-q"))
    adapter.deploy_service(app, quick)
    restarts, info = supervise(adapter, app, quick)
    assert (restarts, info.state) == (0, ServiceState.RUNNING), info
    assert "instance 0 failed and was replaced (FAILED: exit code 1: boom)" in info.detail
    assert posted_instances(server, quick) == 1

    # It replaces it only after FLOps did: the surplus instance is removed, one instance stays.
    slow = adapter.add_service(app, spec("observer-s", ServiceKind.OBSERVER))
    server.set_fate(sla.microservice_name("observer-s"), "FAILED", "exit code 1: boom", instances=1)
    server.redeploy_failed(sla.microservice_name("observer-s"), after_polls=3)
    adapter.deploy_service(app, slow)
    restarts, info = supervise(adapter, app, slow)
    assert (restarts, info.state) == (1, ServiceState.RUNNING), info
    live = [i for i in server.jobs[slow]["instance_list"] if i["status"] not in ("FAILED", "DEAD")]
    assert len(live) == 1 and posted_instances(server, slow) == 2


def project_run(adapter: OakestraAdapter, app: AppRef, state_dir: Path, mongo_uri: str, database: str) -> ProjectRun:
    """The lifecycle of one project, on this adapter, with its app already created."""
    settings = LifecycleSettings(
        mqtt=MqttSettings(), state_dir=state_dir, cache_dir=state_dir / "cache", orchestrator="oakestra"
    )
    store = MongoProjectStore(mongo_uri, database)
    store.connect()
    sla_doc = ProjectSLA.model_validate(
        {"ml_repo_url": "https://git.example.org/ml/repo.git", "ml_model_flavor": "sklearn"}
    )
    record = ProjectRecord(
        project_id=app.project_id or "p", customer=app.customer, sla=sla_doc.model_dump(mode="json", by_alias=True)
    )
    deps = RunDeps(
        settings=settings,
        store=store,
        adapter=adapter,
        observatories=ObservatoryKeeper(settings, store),
        publish=lambda message: None,
        broker=SharedAccess(settings.mqtt),
        clear_retained=lambda project_id: None,
    )
    run = ProjectRun(record, sla_doc, deps, ProjectInbox())
    run.state.app = app
    return run


def test_the_lifecycle_fails_at_once_when_oakestra_cannot_schedule_a_service(
    tmp_path: Path, mongo_uri: str, mongo_db_name: str
) -> None:
    server = OakestraContractServer(clusters=[cluster("cluster-a", memory=200)]).start()
    try:
        adapter = adapter_for(server)
        app = adapter.create_app("project-u", AppKind.PROJECT, "Admin", "u")
        learner = adapter.add_service(app, spec("learner-cluster-a", ServiceKind.LEARNER, Placement(node="cluster-a")))
        aggregator = adapter.add_service(app, spec("aggregator", ServiceKind.AGGREGATOR, ports=(FLEET,)))
        for service_id in (learner, aggregator):
            adapter.deploy_service(app, service_id)
            settle(adapter, app, service_id, ENDED)
        run = project_run(adapter, app, tmp_path, mongo_uri, mongo_db_name)
        run.state.services = ServiceTable(
            [
                entry("learner-cluster-a", ServiceKind.LEARNER, learner),
                entry("aggregator", ServiceKind.AGGREGATOR, aggregator, role="classic"),
            ]
        )
        reason = "Oakestra cannot schedule service {}: no active cluster{} has room for it"
        with pytest.raises(
            PhaseFailed, match="learner-cluster-a failed: " + reason.format("learner-cluster-a", " cluster-a")
        ):
            run.restarts.revive_learners()  # the supervision step of a training project
        with pytest.raises(PhaseFailed, match="the aggregator failed: " + reason.format("aggregator", "")):
            run.reports.inspect(lambda message: False, {"aggregator": aggregator}, {}, run.restarts.revive_aggregator)
        assert posted_instances(server, learner) == posted_instances(server, aggregator) == 1  # no redeploy
        assert run.restarts.learner_restarts == {} and run.restarts.aggregator_restarts == {}
    finally:
        server.stop()


def test_a_configuration_by_reference_leaves_no_empty_document(server: OakestraContractServer) -> None:
    adapter = adapter_for(server)
    app = adapter.create_app("project-c", AppKind.PROJECT, "Admin", "c")
    reference = {"FLOPS_CONFIG_URL": "https://manager:5072/service-config/abc", "FLOPS_CONFIG_TOKEN": "t0ken"}
    by_reference = dataclasses.replace(spec("builder", ServiceKind.BUILDER), config={}, environment=reference)
    environment = sla.environment_of(server.jobs[adapter.add_service(app, by_reference)])
    assert set(environment) == {"FLOPS_CONFIG_URL", "FLOPS_CONFIG_TOKEN", "FLOPS_SERVICE_NAME"}
    inline = sla.environment_of(server.jobs[adapter.add_service(app, spec("observer-c", ServiceKind.OBSERVER))])
    assert json.loads(inline["FLOPS_CONFIG"])["instance_name"] == "observer-c"


def test_refusals_name_the_field_or_say_what_was_sent(server: OakestraContractServer) -> None:
    """The root answers every refused service with a bare 400: FLOps checks first, and says what it sent."""
    adapter = adapter_for(server)
    app = adapter.create_app("project-e", AppKind.PROJECT, "Admin", "e")
    odd = dataclasses.replace(spec("builder", ServiceKind.BUILDER), resources=Resources(memory_mb=300.5))  # type: ignore[arg-type]
    sent = len(server.slas)
    with pytest.raises(AdapterError) as refused:
        adapter.add_service(app, odd)
    assert str(refused.value) == (
        "service builder was not sent to Oakestra, which would refuse it: "
        "memory must be a whole number of at least 0, not 300.5"
    )
    assert len(server.slas) == sent

    # What FLOps cannot check (here the application vanished): the root's bare 400 and what was sent.
    del server.apps[app.app_id]
    with pytest.raises(AdapterError) as refused:
        adapter.add_service(app, spec("builder", ServiceKind.BUILDER))
    assert str(refused.value) == (
        "Oakestra adding service builder failed with HTTP 400: Bad Request (Oakestra gave no reason); it was sent "
        f"application {app.app_id} ({sla.application_name('Admin', 'project-e')}.flops), microservice "
        "builder.builder, container image registry:5000/flops/builder:1, vcpus 1, memory 300, storage 10, "
        "constraints []"
    )


def test_a_removed_service_is_deleted_even_when_oakestra_answers_500(server: OakestraContractServer) -> None:
    adapter = adapter_for(server)
    app = adapter.create_app("observatory-admin", AppKind.OBSERVATORY, "Admin")
    observer = adapter.add_service(app, spec("observer-1", ServiceKind.OBSERVER))
    adapter.deploy_service(app, observer)
    adapter.remove_service(app, observer)
    assert observer not in server.jobs and server.apps[app.app_id]["microservices"] == []
    adapter.remove_service(app, observer)  # the root answers 500 for a service it does not know; a GET says 404
    assert ("DELETE", f"/api/service/{observer}", 500) in server.requests
    assert ("GET", f"/api/service/{observer}", 404) in server.requests


def test_an_observer_is_deleted_when_its_project_ends(
    server: OakestraContractServer, tmp_path: Path, mongo_uri: str, mongo_db_name: str
) -> None:
    """Observers live in the customer's observatory app, which outlives projects: they must not pile up there."""
    adapter = adapter_for(server)
    observatory = adapter.create_app("observatory-admin", AppKind.OBSERVATORY, "Admin")
    project = adapter.create_app("project-o", AppKind.PROJECT, "Admin", "o")
    observer = adapter.add_service(observatory, spec("observer-o", ServiceKind.OBSERVER))
    adapter.deploy_service(observatory, observer)
    run = project_run(adapter, project, tmp_path, mongo_uri, mongo_db_name)
    run.state.observatory = Observatory(observatory, "http://10.30.0.1:5000", "tracking")
    run.state.services.add(entry("observer-o", ServiceKind.OBSERVER, observer, app=AppKind.OBSERVATORY))
    run._cleanup(keep_serving=False)  # noqa: SLF001 - what every project does when it ends
    assert project.app_id not in server.apps
    assert observer not in server.jobs and server.apps[observatory.app_id]["microservices"] == []


def test_the_tracking_server_runs_from_its_image_and_keeps_no_store_on_the_manager_host(
    server: OakestraContractServer, tmp_path: Path, mongo_uri: str, mongo_db_name: str
) -> None:
    store = TrackingStore(
        backend_store_uri="postgresql+psycopg2://mlflow:pw@db.example.org:5432/mlflow_{customer}",
        artifacts_destination="s3://flops-mlflow/{customer}",
    )
    settings = LifecycleSettings(
        mqtt=MqttSettings(),
        state_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        orchestrator="oakestra",
        tracking_store=store,
        tracking_timeout_s=0.5,
        images={"tracking": "registry.example.org/flops/manager:0.1.0"},
    )
    store_of_projects = MongoProjectStore(mongo_uri, mongo_db_name)
    store_of_projects.connect()
    keeper = ObservatoryKeeper(settings, store_of_projects)
    with pytest.raises(PhaseFailed, match="did not become healthy"):  # nothing answers at its overlay address here
        keeper.ensure(adapter_for(server), "Admin")
    job = job_named(server, "tracking")
    assert job["cmd"] == ["python", "-m", "services.observer.tracking_server"]  # the image's interpreter
    assert job["code"] == "registry.example.org/flops/manager:0.1.0"
    config = json.loads(sla.environment_of(job)["FLOPS_CONFIG"])
    assert config["backend_store_uri"].startswith("postgresql+psycopg2://mlflow:pw@db.example.org:5432/mlflow_admin")
    assert config["artifacts_destination"].startswith("s3://flops-mlflow/admin")
    assert config["tls_dir"] is None
    assert str(tmp_path) not in json.dumps(job)  # no path of the manager's host


def test_tokens_are_refreshed_before_expiry_and_renewed_when_refused() -> None:
    server = OakestraContractServer(token_lifetime_s=4.0).start()
    try:
        adapter = adapter_for(server, token_refresh_margin_s=3.0)  # refresh 1 s after each token is issued
        adapter.create_app("observatory", AppKind.OBSERVATORY, "Admin")
        assert server.logins == 1
        for pause in (1.2, 3.0):  # 4.2 s in all: past the first token's expiry
            time.sleep(pause)
            assert adapter.find_app("observatory", "Admin") is not None
        assert server.refreshes >= 1 and server.logins == 1
        assert server.expired_token_uses == 0

        # The root restarted with a new key: its @jwt_required endpoints answer 422, the service endpoints 401.
        server.rotate_keys()
        assert adapter.find_app("observatory", "Admin") is not None  # GET /api/applications/: 422, log in, again
        assert server.logins == 2
        assert ("GET", "/api/applications/", 422) in server.requests
        server.rotate_keys()
        app = adapter.create_app("project-t", AppKind.PROJECT, "Admin", "t")  # the list first, then the POST
        assert server.logins == 3
        server.rotate_keys()
        service = adapter.add_service(app, spec("builder", ServiceKind.BUILDER))  # services listed, then POSTed
        assert server.logins == 4 and service in server.jobs
        adapter.client._token = "garbage"  # a malformed token: 422 "Not enough segments"
        adapter.delete_app(app)
        assert server.logins == 5 and app.app_id not in server.apps
        refusals = [status for method, path, status in server.requests if status in (401, 422)]
        assert refusals == [422, 422, 401, 422]  # each refused call was retried once, after one login

        wrong = adapter_for(server, password="nope")
        with pytest.raises(AdapterError, match="login failed with HTTP 401: invalid username or password"):
            wrong.find_app("observatory", "Admin")
    finally:
        server.stop()


def test_names_and_addresses_are_deterministic_and_collision_checked(server: OakestraContractServer) -> None:
    assert sla.microservice_name("builder") == "builder"
    odd, similar = sla.microservice_name("learner-node_a.1"), sla.microservice_name("learner-node-a-1")
    assert odd != similar and sla.NAME_PATTERN.match(odd) and sla.NAME_PATTERN.match(similar)
    assert (
        sla.microservice_name("x" * 80) == sla.microservice_name("x" * 80)
        and len(sla.microservice_name("x" * 80)) <= 30
    )
    assert sla.application_name("Admin", "p") == sla.application_name("Admin", "p") != sla.application_name("Bob", "p")

    adapter = adapter_for(server)
    app = adapter.create_app("project-n", AppKind.PROJECT, "Admin", "n")
    other = adapter.create_app("project-o", AppKind.PROJECT, "Admin", "o")

    # Another app already holds the first candidate address of this service: the next one is used.
    first = sla.service_address("10.30.0.0/16", app.app_id, "aggregator", 0)
    holder = adapter.add_service(other, spec("aggregator", ServiceKind.AGGREGATOR))
    server.jobs[holder]["RR_ip"] = first
    planned = adapter.plan_endpoint(app, "aggregator", FLEET, Placement())
    assert planned.host == sla.service_address("10.30.0.0/16", app.app_id, "aggregator", 1)
    assert adapter_for(server).plan_endpoint(app, "aggregator", FLEET, Placement()) == planned  # across restarts

    # Re-adding a service replaces it; a different service under the same Oakestra name is refused.
    old = adapter.add_service(app, spec("aggregator", ServiceKind.AGGREGATOR, ports=(FLEET,)))
    new = adapter.add_service(app, spec("aggregator", ServiceKind.AGGREGATOR, ports=(FLEET,)))
    assert old != new and old not in server.jobs and server.jobs[new]["RR_ip"] == planned.host
    server.jobs[new]["environment"] = [f"{sla.SERVICE_NAME_ENV}=someone-else"]
    with pytest.raises(AdapterError, match="already used by another service"):
        adapter.add_service(app, spec("aggregator", ServiceKind.AGGREGATOR))

    # The network refuses an address taken after it was planned: a clear error, nothing left behind.
    late = adapter.plan_endpoint(app, "serving", PortSpec("http", 8080), Placement())
    server.jobs[holder]["RR_ip"] = late.host
    with pytest.raises(AdapterError, match=f"refused service serving: failed to deploy service: address {late.host}"):
        adapter.add_service(app, spec("serving", ServiceKind.SERVING, ports=(PortSpec("http", 8080),)))

    # An Oakestra application with FLOps' name that is not this FLOps app is never taken over.
    intruder = sla.application_sla("Admin", sla.application_name("Admin", "project-z"), "flops", "someone's app")
    adapter.client.call("POST", "/api/application/", "planting a foreign app", json_body=intruder)
    with pytest.raises(AdapterError, match="is not FLOps app 'project-z'"):
        adapter.create_app("project-z", AppKind.PROJECT, "Admin", "z")
    assert adapter.find_app("project-z", "Admin") is None


def test_a_non_admin_lists_its_own_applications(server: OakestraContractServer) -> None:
    user_id = server.add_user("alice", "secret")
    alice = adapter_for(server, username="alice", password="secret", user_id=user_id)
    app = alice.create_app("project-a", AppKind.PROJECT, "alice", "a")
    assert alice.find_app("project-a", "alice") == app
    without_id = adapter_for(server, username="alice", password="secret")
    with pytest.raises(AdapterError, match="HTTP 403: You have not enough permissions"):
        without_id.find_app("project-a", "alice")
    alice.delete_app(app)
    assert alice.find_app("project-a", "alice") is None


class TestOakestraAdapterContract(AdapterContract):
    """The shared contract, with instances really running (as local processes) behind the contract server."""

    timeout_s = 30.0

    @pytest.fixture
    def adapter(self) -> Iterator[OrchestratorAdapter]:
        server = OakestraContractServer(run_instances=True).start()
        adapter = adapter_for(server)
        try:
            yield adapter
        finally:
            adapter.close()
            server.stop()
        assert server.violations == []

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
    """docs/oakestra.md's manager.json is valid and makes the registry build an OakestraAdapter."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "oakestra.md").read_text()
    document = text.split("```json\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "manager.json"
    config.write_text(document)
    settings = load_settings(config, environ={})
    assert settings.orchestrator == "oakestra"
    adapter = create_adapter(settings.orchestrator, settings.adapter_settings["oakestra"])
    assert isinstance(adapter, OakestraAdapter)
    assert [node.name for node in adapter.settings.nodes] == ["edge-1", "edge-2"]
    with pytest.raises(AdapterError, match="invalid settings for the oakestra orchestrator: password"):
        create_adapter("oakestra", {"url": "http://root:10000", "username": "Admin"})
