"""Faults injected into real processes during training: a learner or the aggregator dies, the broker restarts."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from manager.suite import SuiteEndpoints, restart_broker, restart_database
from orchestrator_adapters.base import AppKind, AppRef
from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings
from services.aggregator.rounds import READMIT_AFTER_S
from tests.fault_injection import kill_instance, pause_instance
from tests.fixtures_stack import FlopsStack, flops_stack, mlflow_client, sla  # noqa: F401
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(900)


def _training(flops_stack: FlopsStack, tag: str, learners: int, until_round: int, **training: Any) -> str:  # noqa: F811
    """Push mock data, start a classic sklearn project and wait until it has done ``until_round`` rounds."""
    flops_stack.push_mocks(tag, learners)
    project_id = flops_stack.submit(sla("examples/sklearn_digits", [tag], **training))
    assert wait_until(lambda: flops_stack.project(project_id)["progress"]["round"] >= until_round, 400, interval=0.5)
    return project_id


def _local_adapter(flops_stack: FlopsStack) -> LocalAdapter:  # noqa: F811
    return LocalAdapter(LocalAdapterSettings(state_dir=str(flops_stack.state_dir / "local-adapter")))


def _project_app(project: dict[str, Any]) -> AppRef:
    project_id = project["project_id"]
    return AppRef(project["apps"]["project"], f"project-{project_id[:8]}", AppKind.PROJECT, "Admin", project_id)


def test_training_survives_a_broker_restart(flops_stack: FlopsStack, suite: SuiteEndpoints) -> None:  # noqa: F811
    project_id = _training(flops_stack, "digits-broker", 2, 1, training_rounds=5, min_available_clients=2)
    restart_broker(Path(suite.state_dir), down_for=3.0)
    project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["round"] == 5


def test_training_survives_a_database_restart(flops_stack: FlopsStack, suite: SuiteEndpoints) -> None:  # noqa: F811
    """The run buffers its record and events while the database is away; nothing is lost or doubled."""
    project_id = _training(flops_stack, "digits-db", 2, 1, training_rounds=6, min_available_clients=2)
    restart_database(Path(suite.state_dir), down_for=8.0)  # rounds go on meanwhile (a few seconds each)
    project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["round"] == 6
    rounds = [text.split(" done in ")[0] for text in flops_stack.events(project_id) if text.startswith("round ")]
    assert rounds == [f"round {n}/6" for n in range(1, 7)], rounds  # every report recorded once, in order
    history = flops_stack.api("GET", f"/api/flops/projects/{project_id}/rounds").json()["rounds"]
    assert [entry["step"] for entry in history] == list(range(1, 7))  # the round history too


def test_metrics_survive_a_tracking_server_crash(flops_stack: FlopsStack) -> None:  # noqa: F811
    """The lifecycle restarts the customer's MLflow server; the aggregator sends the metrics it kept meanwhile."""
    project_id = _training(flops_stack, "digits-mlflow", 2, 1, training_rounds=8, min_available_clients=2)
    project = flops_stack.project(project_id)
    observatory = AppRef(project["apps"]["observatory"], "observatory-admin", AppKind.OBSERVATORY, "Admin")
    kill_instance(_local_adapter(flops_stack), observatory, "tracking")
    project = flops_stack.wait(project_id)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-10:])
    assert sum(text.startswith("the MLflow tracking server stopped") for text in events) == 1, events
    client = flops_stack.mlflow_client(project["tracking_url"])
    steps = sorted(metric.step for metric in client.get_metric_history(project["mlflow_run_id"], "accuracy"))
    assert steps == list(range(1, 9)), steps  # none lost while the server was away, none twice


def test_a_killed_learner_does_not_fail_the_project_and_rejoins(flops_stack: FlopsStack) -> None:  # noqa: F811
    """The round completes with the survivors; the lifecycle redeploys the learner, which rejoins."""
    # Rounds take a fraction of a second on the push link: enough of them that a redeployed learner
    # (a new process that loads its data first) joins while training goes on.
    project_id = _training(
        flops_stack,
        "digits-drop",
        3,
        2,
        training_rounds=ROUNDS_FOR_A_REJOIN,
        min_available_clients=3,
        min_fit_clients=2,
        min_evaluate_clients=2,
        round_timeout_s=20,
    )
    project = flops_stack.project(project_id)
    victim = sorted(name for name in project["services"] if name.startswith("learner-"))[0]
    kill_instance(_local_adapter(flops_stack), _project_app(project), project["services"][victim])
    project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["round"] == ROUNDS_FOR_A_REJOIN

    events = flops_stack.events(project_id)
    node = victim.removeprefix("learner-")
    assert any(node in text and ("lost" in text or "dropped" in text) for text in events)
    redeployed = [index for index, text in enumerate(events) if text.startswith(f"{victim} lost (")]
    assert len(redeployed) == 1 and "redeploying it, restart 1 of 3" in events[redeployed[0]], events
    later_rounds = [text for text in events[redeployed[0] :] if " done in " in text and "round" in text]
    assert any(text.endswith("with 3 learners") or "with 3 learners " in text for text in later_rounds), later_rounds


ROUNDS_FOR_A_REJOIN = 300


def _first(events: list[str], predicate: Any, after: int = -1) -> int | None:
    return next((index for index, text in enumerate(events) if index > after and predicate(text)), None)


def test_a_frozen_learner_is_dropped_and_the_same_node_rejoins_when_it_thaws(flops_stack: FlopsStack) -> None:  # noqa: F811
    """A straggler: the learner's whole process tree is frozen (SIGSTOP) past the round timeout and past
    Flower's heartbeat patience, then thawed (SIGCONT). Rounds go on with the other two; the same
    Flower node comes back online, without a redeploy, and takes part in the next rounds."""
    project_id = _training(
        flops_stack,
        "digits-freeze",
        3,
        2,
        training_rounds=5000,
        min_available_clients=3,
        min_fit_clients=2,
        min_evaluate_clients=2,
        round_timeout_s=10,
    )
    project = flops_stack.project(project_id)
    victim = sorted(name for name in project["services"] if name.startswith("learner-"))[0]
    node = victim.removeprefix("learner-")
    adapter, app = _local_adapter(flops_stack), _project_app(project)
    lost = f"learner {node} lost ("
    pause_instance(adapter, app, project["services"][victim], paused=True)
    try:
        assert wait_until(
            lambda: _first(flops_stack.events(project_id), lambda text: lost in text) is not None, 120, interval=0.5
        ), flops_stack.events(project_id)[-10:]
        time.sleep(READMIT_AFTER_S)  # Flower now lists the node as offline, and the aggregator's suspension is over
    finally:
        pause_instance(adapter, app, project["services"][victim], paused=False)
    back = f"learner {node} is online again"
    assert wait_until(
        lambda: _first(flops_stack.events(project_id), lambda text: back in text) is not None, 120, interval=0.5
    ), flops_stack.events(project_id)[-10:]
    with_three = "with 3 learners"
    assert wait_until(
        lambda: (
            _first(
                flops_stack.events(project_id),
                lambda text: with_three in text,
                _first(flops_stack.events(project_id), lambda text: back in text) or 0,
            )
            is not None
        ),
        120,
        interval=0.5,
    ), flops_stack.events(project_id)[-10:]
    assert flops_stack.api("DELETE", f"/api/flops/projects/{project_id}").status_code == 202
    project = flops_stack.wait(project_id, timeout=120)
    events = flops_stack.events(project_id)
    assert project["status"] == "STOPPED", (project["error"], events[-10:])

    lost_at = _first(events, lambda text: lost in text)
    back_at = _first(events, lambda text: back in text)
    assert lost_at is not None and back_at is not None and lost_at < back_at, events
    # The loss can be noticed in a round's evaluate step, after that round trained with all three: count the
    # rounds that started after the round in which it was lost.
    lost_round = int(re.search(r"round (\d+)", events[lost_at]).group(1))  # type: ignore[union-attr]
    while_away = [
        text
        for text in events[lost_at + 1 : back_at]
        if " done in " in text and int(re.search(r"round (\d+)/", text).group(1)) > lost_round
    ]  # type: ignore[union-attr]
    assert while_away and all("with 2 learners" in text for text in while_away), while_away
    assert not any(text.startswith(f"{victim} lost (") for text in events), events  # the process was never replaced


def test_a_killed_aggregator_is_redeployed_and_resumes_from_its_checkpoint(flops_stack: FlopsStack) -> None:  # noqa: F811
    """No round is lost or counted twice: MLflow has each round's metrics exactly once, in one run."""
    project_id = _training(flops_stack, "digits-agg", 2, 3, training_rounds=8, min_available_clients=2)
    project = flops_stack.project(project_id)
    kill_instance(_local_adapter(flops_stack), _project_app(project), project["services"]["aggregator"])
    project = flops_stack.wait(project_id)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-12:])
    assert project["progress"]["round"] == 8

    assert sum(text.startswith("the aggregator was lost") for text in events) == 1, events
    resumed = [text for text in events if "resuming MLflow run" in text]
    assert len(resumed) == 1 and project["mlflow_run_id"] in resumed[0], events

    client = flops_stack.mlflow_client(project["tracking_url"])
    steps = sorted(metric.step for metric in client.get_metric_history(project["mlflow_run_id"], "accuracy"))
    assert steps == list(range(1, 9)), steps
    runs = client.search_runs(
        [client.get_run(project["mlflow_run_id"]).info.experiment_id],
        filter_string=f"tags.`flops.project_id` = '{project_id}'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


@pytest.mark.parametrize("victim", ["cluster-aggregator-cluster-a", "root-aggregator"])
def test_a_killed_hierarchical_aggregator_is_redeployed_and_no_round_is_lost(
    flops_stack: FlopsStack,  # noqa: F811
    victim: str,
) -> None:
    """A lost cluster gets its cycle again (the other cluster's reply is kept); a lost root resumes its last cycle.

    Either way every round's metrics are in MLflow exactly once, in one run per aggregator.
    """
    tag = f"digits-kill-{victim.split('-')[0]}"
    flops_stack.push_mocks(tag, 4)
    request = sla(
        "examples/sklearn_digits",
        [tag],
        mode="hierarchical",
        training_cycles=3,
        training_rounds=3,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
    )
    project_id = flops_stack.submit(request)
    # The cluster dies in the middle of cycle 2, the root right after cycle 1.
    marker = "cluster cluster-a cycle 2/3 round 1/3 done" if victim.startswith("cluster") else "cycle 1/3 round 3/3"
    assert wait_until(
        lambda: any(text.startswith(marker) for text in flops_stack.events(project_id)), 600, interval=0.5
    )
    project = flops_stack.project(project_id)
    kill_instance(_local_adapter(flops_stack), _project_app(project), project["services"][victim])
    project = flops_stack.wait(project_id)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-15:])
    assert project["progress"]["cycle"] == 3

    assert sum(text.startswith(f"the {victim} was lost") for text in events) == 1, events
    assert any("resuming MLflow run" in text for text in events), events
    client = flops_stack.mlflow_client(project["tracking_url"])
    root = client.get_run(project["mlflow_run_id"])
    steps = sorted(metric.step for metric in client.get_metric_history(root.info.run_id, "accuracy"))
    assert steps == [1, 2, 3], steps  # one global value per cycle, none twice
    runs = client.search_runs([root.info.experiment_id], filter_string=f"tags.`flops.project_id` = '{project_id}'")
    assert sorted(run.data.tags["flops.role"] for run in runs) == ["cluster", "cluster", "root"], len(runs)
    assert all(run.info.status == "FINISHED" for run in runs)
    for cluster in ("cluster-a", "cluster-b"):
        run = next(run for run in runs if run.data.tags.get("flops.cluster") == cluster)
        cluster_steps = sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "loss"))
        assert cluster_steps == list(range(1, 10)), (cluster, cluster_steps)  # 3 cycles x 3 rounds, each once
        per_cluster = client.get_metric_history(root.info.run_id, f"cluster/{cluster}/loss")
        assert sorted(metric.step for metric in per_cluster) == list(range(1, 10)), cluster
