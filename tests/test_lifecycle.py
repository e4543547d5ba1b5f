"""The project lifecycle in seconds: in-memory store, broker and orchestrator, a faster clock.

Phase order (classic, hierarchical), restart limits, stop in every phase, database outages and a
manager that restarts mid-phase, each asserted on what a user sees (status, error, events, rounds)
and on what the fake orchestrator was left running. The services are fakes that report like the
real ones (``tests/lifecycle_fakes.py``); the end-to-end suites run the real ones.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flops_utils.mqtt_catalogue import ControlCommand, TrainingResult, project_filter
from flops_utils.service_config import MqttSettings, RegistrySettings
from manager.broker_access import SharedAccess
from manager.lifecycle import LifecycleService, LifecycleSettings
from manager.lifecycle.inbox import ProjectInbox
from manager.lifecycle.observatory import ObservatoryKeeper
from manager.lifecycle.observatory_names import observatory_name
from manager.lifecycle.project_run import ProjectRun, RunDeps
from manager.records import ProjectPhase, ProjectRecord, ProjectStatus, ServingState, ServingStatus
from manager.sla import ProjectSLA
from manager.storage import MemoryDatabase, MemoryProjectStore
from orchestrator_adapters.base import AppKind, NodeInfo, ServiceState
from tests.fake_adapter import FakeAdapter, ManagerCrashed
from tests.helpers import wait_until
from tests.lifecycle_fakes import FakeFederation, FastClock, MemoryBroker, MemoryLink, start_data_servers

CUSTOMER = "alice"
NODES = {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}
LEARNERS = [f"learner-{node}" for node in NODES]
PHASES = ["observatory", "project_app", "observer", "build", "training", "post_training"]
WAIT_S = 20.0


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeInfo]]:
    with start_data_servers(tmp_path_factory.mktemp("data"), NODES) as found:
        yield found


def project_sla(mode: str = "classic", rounds: int = 3, cycles: int = 1, deploy: bool = False) -> ProjectSLA:
    training = {
        "mode": mode,
        "data_tags": ["digits"],
        "training_rounds": rounds,
        "training_cycles": cycles,
        "min_available_clients": 2,
    }
    return ProjectSLA.model_validate(
        {
            "ml_repo_url": "https://git.example.org/ml/digits.git",
            "ml_model_flavor": "sklearn",
            "training_configuration": training,
            "post_training_steps": ["deploy_trained_model_image"] if deploy else [],
        }
    )


@dataclass
class Lab:
    """One in-memory world: the database, broker and orchestrator outlive the managers a test starts."""

    settings: LifecycleSettings
    database: MemoryDatabase
    broker: MemoryBroker
    federation: FakeFederation
    adapter: FakeAdapter
    clock: FastClock
    managers: list[LifecycleService] = dataclasses.field(default_factory=list)

    def store(self) -> MemoryProjectStore:
        store = MemoryProjectStore(self.database)
        store.connect()
        return store

    def manager(self) -> LifecycleService:
        adapters = {"memory": self.adapter}
        link = MemoryLink(self.broker)
        manager = LifecycleService(self.settings, self.store(), link=link, adapters=adapters, clock=self.clock)
        manager.start()
        self.managers.append(manager)
        return manager

    def record(self, project_id: str) -> ProjectRecord:
        record = self.store().get_project(project_id)
        assert record is not None
        return record

    def finished(self, project_id: str) -> ProjectRecord:
        def ended() -> ProjectRecord | None:
            record = self.record(project_id)
            return record if record.status.finished else None

        found = wait_until(ended, WAIT_S)
        assert found is not None
        return found

    def texts(self, project_id: str) -> list[str]:
        return [event.text for event in self.store().list_events(project_id, limit=100_000)]

    def phases_entered(self, project_id: str) -> list[str]:
        return [text.removeprefix("phase ") for text in self.texts(project_id) if text.startswith("phase ")]

    def left_running(self) -> set[tuple[str, str]]:
        return self.adapter.running()

    def crashing_run(self, sla: ProjectSLA) -> tuple[ProjectRecord, threading.Thread, MemoryLink]:
        """A manager process whose run dies (ManagerCrashed, from a gate) without any cleanup."""
        sla_document = sla.model_dump(mode="json", by_alias=True)
        record = ProjectRecord(project_id=uuid.uuid4().hex, customer=CUSTOMER, sla=sla_document, orchestrator="memory")
        store = self.store()
        store.insert_project(record)
        inbox, link = ProjectInbox(), MemoryLink(self.broker)
        link.subscribe(project_filter(record.project_id), lambda _topic, message: inbox.put(message))
        link.connect()
        deps = RunDeps(
            settings=self.settings,
            store=store,
            adapter=self.adapter,
            observatories=ObservatoryKeeper(self.settings, store),
            publish=link.publish,
            broker=SharedAccess(self.settings.mqtt),
            clear_retained=link.clear_retained,
            clock=self.clock,
        )
        run = ProjectRun(record, sla, deps, inbox)

        def until_crash() -> None:
            try:
                run.run()
            except ManagerCrashed:
                link.close()  # the dead manager hears nothing more

        thread = threading.Thread(target=until_crash, daemon=True)
        thread.start()
        return record, thread, link


@pytest.fixture
def lab(tmp_path: Path, nodes: list[NodeInfo]) -> Iterator[Lab]:
    settings = LifecycleSettings(
        mqtt=MqttSettings(host="127.0.0.1", port=1),  # never connected: the link is in memory
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
        mqtt_project_credentials="shared",
        flower_tls=False,
        orchestrator="memory",
        repo_base_dir=tmp_path,
        tracking_timeout_s=10,
        build_timeout_s=600,
        training_timeout_s=600,
        serving_timeout_s=60,
        db_outage_limit_s=100,  # 5 s at the lab's speed: the short outage stays well within it
        poll_interval_s=0.02,
        cache_max_age_s=0,
        registry=RegistrySettings(address="registry.example.org:5000"),  # the fake builder "pushes" there
    )
    broker, federation = MemoryBroker(), FakeFederation()
    adapter = FakeAdapter(nodes, federation.programs(), broker.publish)
    world = Lab(settings, MemoryDatabase(), broker, federation, adapter, FastClock(speed=20))
    yield world
    for manager in world.managers:
        manager.close()  # its background threads end; the adapter's services go with the next line
    adapter.close()


def observatory() -> str:
    return observatory_name(CUSTOMER)


# -- phase order ----------------------------------------------------------------------------------


def test_a_classic_project_runs_every_phase_in_order_and_keeps_only_its_serving_endpoint(lab: Lab) -> None:
    manager = lab.manager()
    project_id = manager.start_project(project_sla(deploy=True), CUSTOMER).project_id
    done = lab.finished(project_id)
    assert (done.status, done.error, done.phase) == (ProjectStatus.COMPLETED, None, ProjectPhase.DONE), done.error
    assert lab.phases_entered(project_id) == PHASES
    assert list(done.phase_started) == [*PHASES, "cleanup", "done"]
    assert (done.progress.round, done.progress.total_rounds, done.progress.accuracy) == (3, 3, 0.7)
    assert [r.step for r in lab.store().list_rounds(project_id)] == [1, 2, 3]
    added = [service.name for service in lab.adapter.services]
    observer = f"observer-{project_id[:8]}"
    assert added == ["tracking", observer, "builder", "aggregator", *LEARNERS, "model-builder", "serving"]
    assert lab.adapter.service("model-builder").config["model_uri"] == "runs:/fake-run/model"
    assert done.model_image == lab.adapter.service("serving").spec.image
    aggregator = lab.adapter.service("aggregator")
    learner_config = lab.adapter.service("learner-a1").config
    assert learner_config["aggregator_address"] == f"127.0.0.1:{aggregator.config['port']}"
    assert learner_config["data_server_address"] == next(n.data_server for n in lab.adapter.nodes if n.name == "a1")
    serving_port = lab.adapter.service("serving").spec.environment["UVICORN_PORT"]
    assert done.serving_url == f"http://127.0.0.1:{serving_port}"
    assert lab.left_running() == {(observatory(), "tracking"), (f"project-{project_id[:8]}", "serving")}
    assert any(isinstance(m, ControlCommand) and m.project_id == project_id for m in lab.broker.published)
    texts = lab.texts(project_id)
    assert texts[-1] == "project completed" and "no MLflow experiment was created" in texts

    manager.stop_project(project_id)  # a finished project's serving endpoint goes on request
    assert lab.left_running() == {(observatory(), "tracking")}
    assert lab.record(project_id).serving_url is None and "serving endpoint undeployed" in lab.texts(project_id)


def test_a_lost_serving_endpoint_is_redeployed_up_to_its_limit_then_marked_failed(lab: Lab) -> None:
    manager = lab.manager()
    project_id = manager.start_project(project_sla(deploy=True), CUSTOMER).project_id
    assert lab.finished(project_id).status is ProjectStatus.COMPLETED
    watch, serving = manager.housekeeping.serving, lab.adapter.service("serving")
    for restart in (1, 2, 3):
        serving.kill("killed by signal 9")
        watch.check_all()  # the background watch may have been first: either way, one redeploy per loss
        status = lab.record(project_id).serving
        assert status is not None and (status.state, status.restarts) == (ServingState.RUNNING, restart)
        assert serving.deploys == 1 + restart and serving.state is ServiceState.RUNNING
    serving.kill("killed by signal 9")
    watch.check_all()
    status = lab.record(project_id).serving
    assert status is not None and (status.state, status.restarts) == (ServingState.FAILED, 3)
    assert status.detail == "killed by signal 9" and serving.deploys == 4
    assert any("after 3 restarts; it is not redeployed again" in text for text in lab.texts(project_id))


def test_the_serving_watch_leaves_alone_an_endpoint_a_stop_undeployed_while_it_waited(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = lab.manager()
    project_id = manager.start_project(project_sla(deploy=True), CUSTOMER).project_id
    assert lab.finished(project_id).status is ProjectStatus.COMPLETED
    watch, serving = manager.housekeeping.serving, lab.adapter.service("serving")
    store = watch.store
    listed = threading.Event()
    list_projects = store.list_projects

    def listing(customer: str | None = None) -> list[ProjectRecord]:
        records = list_projects(customer)
        listed.set()
        return records

    monkeypatch.setattr(store, "list_projects", listing)
    with watch.lock:  # a stop holds it while it undeploys the endpoint
        serving.kill("killed by signal 9")
        looking = threading.Thread(target=watch.check_all)
        looking.start()
        assert listed.wait(10)  # the watch listed the project as served and now waits for the lock
        store.update_project(project_id, serving_url=None, serving=ServingStatus(state=ServingState.STOPPED))
    looking.join(10)
    assert not looking.is_alive() and serving.deploys == 1 and serving.state is ServiceState.FAILED
    assert lab.record(project_id).serving == ServingStatus(state=ServingState.STOPPED)


def test_a_hierarchical_project_trains_its_clusters_and_the_root_cycle_by_cycle(lab: Lab) -> None:
    project_id = lab.manager().start_project(project_sla("hierarchical", rounds=2, cycles=2), CUSTOMER).project_id
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert lab.phases_entered(project_id) == PHASES
    assert (done.progress.cycle, done.progress.total_cycles, done.progress.accuracy) == (2, 2, 0.8)
    names = [service.name for service in lab.adapter.services]
    cluster_a, cluster_b = ["cluster-aggregator-a", *LEARNERS[:2]], ["cluster-aggregator-b", *LEARNERS[2:]]
    assert names[3:] == ["root-aggregator", *cluster_a, *cluster_b]
    cluster_a_config = lab.adapter.service("cluster-aggregator-a").config
    assert cluster_a_config["root_address"] == f"127.0.0.1:{lab.adapter.service('root-aggregator').config['port']}"
    assert lab.adapter.service("learner-b2").config["aggregator_address"] == (
        f"127.0.0.1:{lab.adapter.service('cluster-aggregator-b').config['port']}"
    )
    rounds = lab.store().list_rounds(project_id)
    assert [(r.step, r.cluster) for r in rounds] == [
        (1, "a"),
        (1, "b"),
        (2, "a"),
        (2, "b"),
        (2, None),
        (3, "a"),
        (3, "b"),
        (4, "a"),
        (4, "b"),
        (4, None),
    ]
    assert lab.left_running() == {(observatory(), "tracking")}


# -- restart limits -------------------------------------------------------------------------------


def test_a_learner_that_keeps_dying_is_redeployed_three_times_then_left_out(lab: Lab) -> None:
    lab.federation.always_crash["learner-a1"] = "killed: out of memory"
    go_on = lab.federation.hold("aggregator", after_round=1)
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    retired = "learner-a1 lost for good after 3 restarts: killed: out of memory"
    wait_until(lambda: retired in lab.texts(project_id), WAIT_S)
    go_on.set()
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    texts = lab.texts(project_id)
    assert [t for t in texts if t.startswith("learner-a1 lost (")] == [
        f"learner-a1 lost (killed: out of memory); redeploying it, restart {n} of 3" for n in (1, 2, 3)
    ]
    assert lab.adapter.service("learner-a1").deploys == 4
    assert {lab.adapter.service(name).deploys for name in LEARNERS[1:]} == {1}


def test_a_learner_whose_user_code_keeps_failing_fails_the_project_when_too_few_are_left(lab: Lab) -> None:
    """A newcomer's node with too few rows: its DataManager raised on every restart and the aggregator waited
    for it until the training timeout. Now the project fails once the learners left cannot meet the SLA."""
    reason = "node a1: ValueError: The least populated class in y has only 1 member at data_manager.py:11"
    lab.federation.failures["learner-a1"] = reason
    go_on = lab.federation.hold("aggregator", after_round=1)
    sla = project_sla()
    training = sla.training_configuration
    training.min_available_clients = training.min_fit_clients = training.min_evaluate_clients = 4
    project_id = lab.manager().start_project(sla, CUSTOMER).project_id
    done = lab.finished(project_id)
    go_on.set()
    assert done.status is ProjectStatus.FAILED
    assert done.error is not None and done.error.endswith(
        f"learner-a1 failed 4 times: {reason}; 3 learner(s) left, but the SLA needs 4"
    ), done.error
    assert lab.adapter.service("learner-a1").deploys == 4


def test_an_aggregator_lost_once_is_redeployed_and_resumes_from_its_checkpoint(lab: Lab) -> None:
    lab.federation.crash_after[("aggregator", 2)] = "killed by signal 9"
    project_id = lab.manager().start_project(project_sla(rounds=4), CUSTOMER).project_id
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert lab.adapter.service("aggregator").deploys == 2
    restarted = "the aggregator was lost (killed by signal 9); redeploying it, restart 1 of 2"
    assert f"{restarted}: it resumes from its last checkpoint" in lab.texts(project_id)
    assert [r.step for r in lab.store().list_rounds(project_id)] == [1, 2, 3, 4]
    assert done.progress.round == 4


def test_an_aggregator_that_keeps_dying_fails_the_project_after_two_restarts(lab: Lab) -> None:
    lab.federation.always_crash["aggregator"] = "killed by signal 9"
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    done = lab.finished(project_id)
    assert (done.status, done.error) == (ProjectStatus.FAILED, "the aggregator failed: killed by signal 9")
    assert lab.adapter.service("aggregator").deploys == 3
    texts = lab.texts(project_id)
    assert sum(t.startswith("the aggregator was lost") for t in texts) == 2
    assert texts[-1] == "project failed: the aggregator failed: killed by signal 9"
    assert lab.left_running() == {(observatory(), "tracking")}


def test_a_tracking_server_killed_during_training_is_redeployed_and_training_completes(lab: Lab) -> None:
    go_on = lab.federation.hold("aggregator", after_round=1)
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    wait_until(lambda: lab.record(project_id).progress.round == 1, WAIT_S)
    lab.adapter.service("tracking").kill("killed by signal 9")
    redeployed = "the MLflow tracking server stopped (killed by signal 9); redeploying it, restart 1 of 3"
    wait_until(lambda: any(text.startswith(redeployed) for text in lab.texts(project_id)), WAIT_S)
    go_on.set()
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert lab.adapter.service("tracking").deploys == 2
    assert "no MLflow experiment was created" in lab.texts(project_id)  # the server answered again at the end
    assert lab.left_running() == {(observatory(), "tracking")}


def test_a_builder_lost_once_is_retried_and_lost_twice_fails_the_project_in_one_line(lab: Lab) -> None:
    lab.federation.crashes["builder"] = ["killed by signal 9"]
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert "builder lost (killed by signal 9); retrying it once" in lab.texts(project_id)
    assert lab.adapter.service("builder").deploys == 2

    lab.federation.always_crash["builder"] = "killed by signal 9"
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    done = lab.finished(project_id)
    assert (done.status, done.error) == (ProjectStatus.FAILED, "builder lost (killed by signal 9), also on its retry")
    assert lab.phases_entered(project_id) == PHASES[:4]


def test_an_observer_killed_during_training_is_redeployed_and_training_completes(lab: Lab) -> None:
    go_on = lab.federation.hold("aggregator", after_round=1)
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    wait_until(lambda: lab.record(project_id).progress.round == 1, WAIT_S)
    observer = f"observer-{project_id[:8]}"
    lab.adapter.service(observer).kill("killed by signal 9")
    redeployed = f"{observer} lost (killed by signal 9); redeploying it, restart 1 of 3"
    wait_until(lambda: redeployed in lab.texts(project_id), WAIT_S)
    go_on.set()
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert lab.adapter.service(observer).deploys == 2
    assert lab.left_running() == {(observatory(), "tracking")}


def test_a_build_that_reports_its_failure_fails_the_project_with_that_reason(lab: Lab) -> None:
    lab.federation.failures["builder"] = "requirements.txt line 2: invalid requirement 'scikit learn'"
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.FAILED
    assert done.error == "build failed: requirements.txt line 2: invalid requirement 'scikit learn'"
    assert lab.phases_entered(project_id) == PHASES[:4]
    assert lab.left_running() == {(observatory(), "tracking")}


# -- stop -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "call", "name"),
    [
        (ProjectPhase.OBSERVATORY, "deploy_service", "tracking"),
        (ProjectPhase.PROJECT_APP, "create_app", "project"),
        (ProjectPhase.OBSERVER, "deploy_service", "observer"),
        (ProjectPhase.BUILD, "deploy_service", "builder"),
        (ProjectPhase.TRAINING, "deploy_service", "learner"),
        (ProjectPhase.POST_TRAINING, "deploy_service", "serving"),
    ],
)
def test_a_stop_in_any_phase_ends_stopped_with_nothing_left_running(
    lab: Lab, phase: ProjectPhase, call: str, name: str
) -> None:
    gate = lab.adapter.gate(call, name)
    manager = lab.manager()
    project_id = manager.start_project(project_sla(deploy=True), CUSTOMER).project_id
    assert gate.reached.wait(WAIT_S), f"the run never reached {call}({name})"
    assert lab.record(project_id).phase is phase
    assert manager.stop_project(project_id).status is ProjectStatus.STOPPING
    gate.release()
    done = lab.finished(project_id)
    assert (done.status, done.error) == (ProjectStatus.STOPPED, None)
    assert lab.phases_entered(project_id) == PHASES[: PHASES.index(phase.value) + 1]
    assert lab.left_running() == {(observatory(), "tracking")}
    project_services = [s for s in lab.adapter.services if s.app.kind is AppKind.PROJECT]
    ended = (ServiceState.STOPPED, ServiceState.SUCCEEDED, ServiceState.PENDING)  # PENDING: never deployed
    assert all(s.state in ended for s in project_services)
    expected_deleted = [] if phase is ProjectPhase.OBSERVATORY else [AppKind.PROJECT]  # no project app yet
    assert [app.kind for app in lab.adapter.deleted_apps] == expected_deleted
    texts = lab.texts(project_id)
    assert "stop requested" in texts and texts[-1] == "project stopped"


def test_a_stop_while_training_tells_the_services_and_undeploys_them(lab: Lab) -> None:
    lab.federation.hold("aggregator", after_round=1)
    manager = lab.manager()
    project_id = manager.start_project(project_sla(), CUSTOMER).project_id
    wait_until(lambda: lab.record(project_id).progress.round == 1, WAIT_S)
    manager.stop_project(project_id)
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.STOPPED and done.progress.round == 1
    assert any(isinstance(m, ControlCommand) and m.command == "stop" for m in lab.broker.published)
    assert {lab.adapter.service(name).state for name in ["aggregator", *LEARNERS]} == {ServiceState.STOPPED}
    assert lab.left_running() == {(observatory(), "tracking")}
    assert lab.broker.retained == {}  # nothing of the project is kept on the broker


# -- database outages -----------------------------------------------------------------------------


def test_a_short_database_outage_during_training_loses_nothing(lab: Lab) -> None:
    go_on = lab.federation.hold("aggregator", after_round=1)
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    wait_until(lambda: lab.record(project_id).progress.round == 1, WAIT_S)
    lab.database.go_down()
    go_on.set()  # rounds 2 and 3 and the result arrive while the database is away
    wait_until(lambda: any(isinstance(m, TrainingResult) for m in lab.broker.published), WAIT_S)
    time.sleep(0.3)
    lab.database.come_back()
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert (done.progress.round, done.progress.accuracy) == (3, 0.7)
    assert [r.step for r in lab.store().list_rounds(project_id)] == [1, 2, 3]
    events = lab.store().list_events(project_id, limit=100_000)
    heard = [e.text.split(" done")[0] for e in events if e.source == "aggregator" and e.text.startswith("round ")]
    assert heard == ["round 1/3", "round 2/3", "round 3/3"]  # each once, though written after the outage
    assert [e.text for e in events].count("project completed") == 1


def test_a_database_outage_longer_than_the_limit_fails_the_project_once_it_is_back(lab: Lab) -> None:
    lab.settings = dataclasses.replace(lab.settings, db_outage_limit_s=10)  # half a second at the lab's speed
    lab.federation.hold("aggregator", after_round=1)
    project_id = lab.manager().start_project(project_sla(), CUSTOMER).project_id
    wait_until(lambda: lab.record(project_id).progress.round == 1, WAIT_S)
    lab.database.go_down()
    # The run's next write (a "waiting for round 2" event) finds the database away, and keeps trying.
    wait_until(lambda: lab.adapter.deleted_apps, WAIT_S)  # it gave up after the limit and cleaned up meanwhile
    lab.database.come_back()
    done = lab.finished(project_id)
    assert done.status is ProjectStatus.FAILED
    assert done.error is not None and done.error.startswith("the project store has been unreachable for ")
    assert "cannot reach the database at memory://flops: the database is down" in done.error
    assert lab.left_running() == {(observatory(), "tracking")}
    assert lab.adapter.service("aggregator").state is ServiceState.STOPPED


# -- a manager restart ----------------------------------------------------------------------------


def test_a_project_left_in_its_build_starts_again_from_the_beginning(lab: Lab) -> None:
    builder_waits = lab.federation.hold("builder")
    crash = lab.adapter.gate("inspect_service", "builder")
    record, first_manager, _ = lab.crashing_run(project_sla())
    assert crash.reached.wait(WAIT_S)
    crash.release(crash=True)
    first_manager.join(WAIT_S)
    left = lab.record(record.project_id)
    assert left.phase is ProjectPhase.BUILD and left.status is ProjectStatus.RUNNING
    assert (f"project-{record.project_id[:8]}", "builder") in lab.left_running()
    builder_waits.set()

    lab.manager()  # picks the project up at start
    done = lab.finished(record.project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert "manager restarted: the project starts again from the beginning" in lab.texts(record.project_id)
    assert lab.phases_entered(record.project_id) == PHASES[:4] + PHASES
    assert [s.deploys for s in lab.adapter.services if s.name == "builder"] == [1, 1]
    # The first run's project app went before anything started again; the second run's at its end.
    assert [app.app_id for app in lab.adapter.deleted_apps] == [left.apps["project"], done.apps["project"]]
    assert done.apps["project"] != left.apps["project"]
    assert lab.left_running() == {(observatory(), "tracking")}


def test_a_project_left_in_training_resumes_with_the_services_that_kept_running(lab: Lab) -> None:
    go_on = lab.federation.hold("aggregator", after_round=2)
    record, first_manager, _ = lab.crashing_run(project_sla(rounds=4))
    wait_until(lambda: lab.record(record.project_id).progress.round == 2, WAIT_S)
    crash = lab.adapter.gate("inspect_service", "aggregator")
    assert crash.reached.wait(WAIT_S)
    crash.release(crash=True)
    first_manager.join(WAIT_S)

    lab.manager()
    reconnected = "manager restarted: reconnected to the running training services"
    wait_until(lambda: reconnected in lab.texts(record.project_id), WAIT_S)
    go_on.set()
    done = lab.finished(record.project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert (done.progress.round, done.progress.accuracy) == (4, 0.8)
    assert [r.step for r in lab.store().list_rounds(record.project_id)] == [1, 2, 3, 4]
    assert {lab.adapter.service(name).deploys for name in ["builder", "aggregator", *LEARNERS]} == {1}
    assert lab.phases_entered(record.project_id) == PHASES  # training went on; nothing started over
    assert lab.left_running() == {(observatory(), "tracking")}


def test_a_result_published_while_no_manager_ran_completes_the_project(lab: Lab) -> None:
    go_on = lab.federation.hold("aggregator", after_round=1)
    record, first_manager, _ = lab.crashing_run(project_sla())
    wait_until(lambda: lab.record(record.project_id).progress.round == 1, WAIT_S)
    crash = lab.adapter.gate("inspect_service", "aggregator")
    assert crash.reached.wait(WAIT_S)
    crash.release(crash=True)
    first_manager.join(WAIT_S)
    go_on.set()
    wait_until(lambda: lab.adapter.service("aggregator").state is ServiceState.SUCCEEDED, WAIT_S)

    lab.manager()  # the broker kept the result (retained) for it
    done = lab.finished(record.project_id)
    assert done.status is ProjectStatus.COMPLETED, done.error
    assert done.progress.accuracy == 0.7


def test_a_project_left_after_training_cannot_be_resumed_and_fails_with_its_services_removed(lab: Lab) -> None:
    app = lab.adapter.create_app("project-leftover", AppKind.PROJECT, CUSTOMER, "p-left")
    record = ProjectRecord(
        project_id="p-left",
        customer=CUSTOMER,
        sla=project_sla().model_dump(mode="json"),
        orchestrator="memory",
        status=ProjectStatus.RUNNING,
        phase=ProjectPhase.POST_TRAINING,
        apps={"project": app.app_id},
    )
    lab.store().insert_project(record)

    lab.manager()
    done = lab.record("p-left")
    assert (done.status, done.phase) == (ProjectStatus.FAILED, ProjectPhase.DONE)
    assert done.error == "the manager restarted while the project was running; its services were stopped"
    assert lab.adapter.find_app("project-leftover", CUSTOMER) is None
