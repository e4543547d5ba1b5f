"""The federated runtime end to end: real Mosquitto, data servers, MLflow and Flower processes.

Aggregators and learners run as their service processes (``python -m services.*.main``)
with the generated Flower app around a tiny sklearn digits model.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flops_utils.mqtt_catalogue import (
    ControlCommand,
    EventLine,
    FlopsMessage,
    ServiceState,
    ServiceStatus,
    TrainingProgress,
    TrainingResult,
)
from flops_utils.mqtt_link import MqttLink
from flops_utils.service_config import TrainingSettings
from manager.suite import SuiteEndpoints
from tests.helpers import free_port
from tests.runtime_helpers import (
    Inbox,
    MlflowServer,
    Services,
    aggregator_config,
    digits_partitions,
    learner_config,
    push_digits,
    start_data_servers,
    write_app_dir,
)

pytestmark = pytest.mark.timeout(900)

TAG = "digits"
RESULT_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One MLflow server for the module; it warms up while the first tests run."""
    root = tmp_path_factory.mktemp("mlflow")
    services = Services(root / "logs")
    try:
        yield MlflowServer(services, root)
    finally:
        services.stop_all()


@pytest.fixture
def mlflow_url(mlflow_server: MlflowServer) -> str:
    return mlflow_server.url


@pytest.fixture(scope="module")
def data_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Four data servers, each holding a quarter of digits under the tag ``digits``."""
    root = tmp_path_factory.mktemp("data")
    services = Services(root / "logs")
    try:
        addresses = start_data_servers(services, [f"data-{index}" for index in range(4)], root)
        for address, (x, y) in zip(addresses, digits_partitions(4), strict=True):
            push_digits(address, TAG, x, y)
        yield addresses
    finally:
        services.stop_all()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services(tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()


def _project(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _is_result(message: FlopsMessage) -> bool:
    """The training result, or an aggregator's failure (so a broken run fails fast)."""
    if isinstance(message, ServiceStatus):
        return message.service == "aggregator" and message.state is ServiceState.FAILED
    return isinstance(message, TrainingResult)


def _status(inbox: Inbox, sender: str) -> list[ServiceState]:
    return [m.state for m in inbox.of(ServiceStatus) if isinstance(m, ServiceStatus) and m.sender == sender]


def _data_nodes(data_servers: list[str], nodes: list[str], first: int = 0) -> dict[str, str]:
    """Learner node name -> the data server it reads from."""
    return {node: data_servers[first + index] for index, node in enumerate(nodes)}


def test_learner_without_data_reports_no_data(
    suite: SuiteEndpoints, mlflow_server: MlflowServer, data_servers: list[str], services: Services, tmp_path: Path
) -> None:
    # Runs first and asks for mlflow_server only so that MLflow warms up meanwhile.
    project_id = _project("nodata")
    app_dir = write_app_dir(tmp_path / "app", project_id)
    inbox = Inbox(suite.mqtt, project_id)
    tags = ["absent", "more"]  # the server only holds "digits"
    config = learner_config(project_id, suite.mqtt, "node-empty", app_dir, 1, data_servers[0], tags, tmp_path / "l")
    learner = services.start("learner", "services.learner.main", config, cwd=app_dir)
    assert learner.process.wait(60) == 0, learner.log()
    status = inbox.wait_for(lambda m: isinstance(m, ServiceStatus) and m.state is ServiceState.NO_DATA, 10)
    assert isinstance(status, ServiceStatus), inbox.dump()
    assert status.detail == "no data for tags [absent, more] on node node-empty"


def test_learner_stops_on_stop_command(
    suite: SuiteEndpoints, data_servers: list[str], services: Services, tmp_path: Path
) -> None:
    project_id = _project("stop")
    app_dir = write_app_dir(tmp_path / "app", project_id)
    inbox = Inbox(suite.mqtt, project_id)
    nobody = free_port()  # no SuperLink there: the learner waits for its aggregator
    config = learner_config(project_id, suite.mqtt, "node-s", app_dir, nobody, data_servers[1], [TAG], tmp_path / "l")
    learner = services.start("learner", "services.learner.main", config, cwd=app_dir)
    started = inbox.wait_for(lambda m: isinstance(m, ServiceStatus) and m.state is ServiceState.STARTED, 60)
    assert started is not None, learner.log()
    link = MqttLink(suite.mqtt).connect()
    try:
        link.publish(ControlCommand(project_id=project_id, sender="manager", command="stop"))
        assert learner.process.wait(60) == 0, learner.log()
    finally:
        link.close()
    assert _status(inbox, "learner-node-s")[-1] is ServiceState.STOPPED


def test_classic_sklearn_two_learners_three_rounds(
    suite: SuiteEndpoints, mlflow_url: str, data_servers: list[str], services: Services, tmp_path: Path
) -> None:
    project_id = _project("classic")
    app_dir = write_app_dir(tmp_path / "app", project_id)
    data = _data_nodes(data_servers, ["node-a", "node-b"])
    inbox = Inbox(suite.mqtt, project_id)
    training = TrainingSettings(
        data_tags=[TAG], training_rounds=3, min_available_clients=2, min_fit_clients=2, min_evaluate_clients=2,
        round_timeout_s=90,
    )  # fmt: skip
    config = aggregator_config(project_id, suite.mqtt, app_dir, tmp_path / "aggregator", training, mlflow_url)
    aggregator = services.start("aggregator", "services.aggregator.main", config, cwd=app_dir)
    learners = [
        services.start(
            f"learner-{node}",
            "services.learner.main",
            learner_config(project_id, suite.mqtt, node, app_dir, config.port, address, [TAG], tmp_path / node),
            cwd=app_dir,
        )
        for node, address in data.items()
    ]
    result = inbox.wait_for(_is_result, RESULT_TIMEOUT_S)
    assert isinstance(result, TrainingResult), f"no result\n{inbox.dump()}\n{services.logs()}"
    assert aggregator.process.wait(60) == 0, services.logs()
    for learner in learners:
        assert learner.process.wait(60) == 0, services.logs()

    progress = [m for m in inbox.of(TrainingProgress) if isinstance(m, TrainingProgress)]
    assert [m.round for m in progress] == [1, 2, 3]
    assert all(m.participants == 2 and m.cluster is None and m.total_rounds == 3 for m in progress)
    assert all(m.accuracy is not None and m.accuracy > 0.5 for m in progress), progress
    assert result.rounds_completed == 3
    assert result.accuracy is not None and result.accuracy > 0.5
    assert result.registered_model == project_id and result.registered_version == "1"
    assert _status(inbox, "aggregator")[-1] is ServiceState.SUCCEEDED
    assert _status(inbox, "learner-node-a")[-1] is ServiceState.SUCCEEDED

    import mlflow
    from sklearn.datasets import load_digits

    client = mlflow.MlflowClient(mlflow_url)
    assert result.mlflow_run_id
    for key in ("loss", "accuracy", "round_seconds"):
        steps = sorted(metric.step for metric in client.get_metric_history(result.mlflow_run_id, key))
        assert steps == [1, 2, 3], key
    params = client.get_run(result.mlflow_run_id).data.params
    assert params["strategy"] == "FedAvg" and params["training_rounds"] == "3" and params["project"] == project_id
    mlflow.set_tracking_uri(mlflow_url)
    model = mlflow.pyfunc.load_model(f"models:/{project_id}/1")
    x, y = load_digits(return_X_y=True)
    accuracy = float((np.asarray(model.predict(x / 16.0)) == y).mean())
    assert accuracy > 0.5, accuracy  # chance is 0.1


def test_killed_learner_is_dropped_and_training_completes(
    suite: SuiteEndpoints, data_servers: list[str], services: Services, tmp_path: Path
) -> None:
    project_id = _project("dropout")
    app_dir = write_app_dir(tmp_path / "app", project_id)
    data = _data_nodes(data_servers, ["node-a", "node-b"], first=2)
    inbox = Inbox(suite.mqtt, project_id)
    training = TrainingSettings(
        data_tags=[TAG], training_rounds=3, min_available_clients=2, min_fit_clients=1, min_evaluate_clients=1,
        round_timeout_s=60,
    )  # fmt: skip
    config = aggregator_config(project_id, suite.mqtt, app_dir, tmp_path / "aggregator", training, None)
    aggregator = services.start("aggregator", "services.aggregator.main", config, cwd=app_dir)
    learners = {
        node: services.start(
            f"learner-{node}",
            "services.learner.main",
            learner_config(project_id, suite.mqtt, node, app_dir, config.port, address, [TAG], tmp_path / node),
            cwd=app_dir,
        )
        for node, address in data.items()
    }
    first = inbox.wait_for(lambda m: isinstance(m, TrainingProgress) and m.round == 1, RESULT_TIMEOUT_S)
    assert first is not None, f"{inbox.dump()}\n{services.logs()}"
    learners["node-b"].crash()  # no goodbye: the SuperLink notices the missing heartbeats
    result = inbox.wait_for(_is_result, RESULT_TIMEOUT_S)
    assert isinstance(result, TrainingResult), f"no result\n{inbox.dump()}\n{services.logs()}"
    assert result.rounds_completed == 3
    assert aggregator.process.wait(60) == 0, services.logs()
    assert learners["node-a"].process.wait(60) == 0, services.logs()
    progress = [m for m in inbox.of(TrainingProgress) if isinstance(m, TrainingProgress)]
    assert [m.round for m in progress] == [1, 2, 3]
    assert progress[0].participants == 2 and progress[-1].participants == 1
    lost = [m.text for m in inbox.of(EventLine) if isinstance(m, EventLine) and "lost" in m.text]
    assert any("node-b" in text for text in lost), inbox.dump()


def test_hierarchical_two_clusters_two_cycles(
    suite: SuiteEndpoints, mlflow_url: str, data_servers: list[str], services: Services, tmp_path: Path
) -> None:
    project_id = _project("hier")
    app_dir = write_app_dir(tmp_path / "app", project_id)
    clusters = {"east": ["node-e1", "node-e2"], "west": ["node-w1", "node-w2"]}
    data = _data_nodes(data_servers, [node for nodes in clusters.values() for node in nodes])
    inbox = Inbox(suite.mqtt, project_id)
    training = TrainingSettings(
        mode="hierarchical", data_tags=[TAG], training_rounds=2, training_cycles=2,
        min_available_clients=2, min_fit_clients=2, min_evaluate_clients=2, round_timeout_s=90,
    )  # fmt: skip
    root = aggregator_config(
        project_id, suite.mqtt, app_dir, tmp_path / "root", training, mlflow_url,
        role="root", instance_name="root-aggregator", expected_clusters=list(clusters),
    )  # fmt: skip
    services.start("root-aggregator", "services.aggregator.main", root, cwd=app_dir)
    for cluster, nodes in clusters.items():
        config = aggregator_config(
            project_id, suite.mqtt, app_dir, tmp_path / f"cluster-{cluster}", training, mlflow_url,
            role="cluster", cluster=cluster, instance_name=f"cluster-aggregator-{cluster}",
            root_address=f"127.0.0.1:{root.port}",
        )  # fmt: skip
        services.start(f"cluster-aggregator-{cluster}", "services.aggregator.main", config, cwd=app_dir)
        for node in nodes:
            learner = learner_config(
                project_id, suite.mqtt, node, app_dir, config.port, data[node], [TAG], tmp_path / node, cluster
            )
            services.start(f"learner-{node}", "services.learner.main", learner, cwd=app_dir)
    result = inbox.wait_for(_is_result, RESULT_TIMEOUT_S * 2)
    assert isinstance(result, TrainingResult), f"no result\n{inbox.dump()}\n{services.logs()}"
    assert result.sender == "root-aggregator"
    assert (result.cycles_completed, result.rounds_completed) == (2, 4)
    assert result.accuracy is not None and result.accuracy > 0.5
    for service in services.running:
        if service.name.startswith(("root", "cluster", "learner")):
            assert service.process.wait(90) == 0, services.logs()

    progress = [m for m in inbox.of(TrainingProgress) if isinstance(m, TrainingProgress)]
    for cluster in clusters:
        rounds = [(m.cycle, m.round) for m in progress if m.cluster == cluster]
        assert rounds == [(1, 1), (1, 2), (2, 1), (2, 2)], (cluster, rounds)
        assert all(m.participants == 2 for m in progress if m.cluster == cluster)
    global_progress = [(m.cycle, m.round, m.total_cycles) for m in progress if m.cluster is None]
    assert global_progress == [(1, 2, 2), (2, 2, 2)]

    import mlflow

    client = mlflow.MlflowClient(mlflow_url)
    assert result.mlflow_run_id
    assert sorted(m.step for m in client.get_metric_history(result.mlflow_run_id, "loss")) == [1, 2]
    for cluster in clusters:
        history = client.get_metric_history(result.mlflow_run_id, f"cluster/{cluster}/loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4], cluster
    experiment = client.get_run(result.mlflow_run_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    assert sorted(run.data.tags["flops.cluster"] for run in children) == ["east", "west"]
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "accuracy"))
        assert steps == [1, 2, 3, 4]
    assert result.registered_model == project_id and result.registered_version == "1"
