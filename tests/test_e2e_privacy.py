"""Differential privacy end to end: the real API, broker, MLflow and training services (run under the heavy lock).

A hierarchical project with different DP per cluster (central in one, local in the other) completes and each
cluster's MLflow run shows its own ε; a classic project whose budget allows fewer rounds than planned stops
early, COMPLETED with the reason, and the ε the API reports is the accountant's, computed here independently.
"""

from __future__ import annotations

import dp_accounting
import pytest

from tests.fixtures_stack import FlopsStack, flops_stack, sla  # noqa: F401 - fixture import

pytestmark = pytest.mark.timeout(900)
DELTA = 1e-5


def epsilon(noise: float, rounds: int, rate: float = 1.0) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(noise)
    accountant.compose(event if rate >= 1 else dp_accounting.PoissonSampledDpEvent(rate, event), rounds)
    return float(accountant.get_epsilon(DELTA))


def test_a_small_budget_stops_training_early_with_the_reason(flops_stack: FlopsStack) -> None:  # noqa: F811
    flops_stack.push_mocks("digits-dp", 2)
    budget = (epsilon(3.0, 2) + epsilon(3.0, 3)) / 2  # two rounds fit, the third would exceed it
    privacy = {"clipping_norm": 5.0, "noise_multiplier": 3.0, "budget": {"epsilon": budget, "delta": DELTA}}
    request = sla(
        "examples/sklearn_digits",
        ["digits-dp"],
        training_rounds=5,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
        privacy=privacy,
    )
    project = flops_stack.wait(flops_stack.submit(request))
    assert project["status"] == "COMPLETED", project["error"]
    progress = project["progress"]
    assert progress["reason"] == "privacy budget reached"
    assert progress["round"] == 2
    assert progress["dp_epsilon"] == pytest.approx(epsilon(3.0, 2), rel=1e-9)
    assert progress["dp_noise_multiplier"] == 3.0 and progress["dp_clipping_norm"] == 5.0
    assert "privacy budget reached" in " ".join(flops_stack.events(project["project_id"]))

    client = flops_stack.mlflow_client(project["tracking_url"])
    run = client.get_run(project["mlflow_run_id"])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "dp_epsilon"))
    assert history == [(1, pytest.approx(epsilon(3.0, 1))), (2, pytest.approx(epsilon(3.0, 2)))]
    assert run.data.params["dp.noise_multiplier"] == "3.0" and run.data.params["dp.mode"] == "central"
    assert float(run.data.tags["flops.dp.epsilon"]) == pytest.approx(epsilon(3.0, 2), rel=1e-5)
    versions = client.search_model_versions(f"name='{project['registered_model']}'")
    tagged = [v for v in versions if v.run_id == run.info.run_id]
    assert tagged and float(tagged[0].tags["flops.dp.epsilon"]) == pytest.approx(epsilon(3.0, 2), rel=1e-5)


def test_hierarchical_project_with_different_dp_per_cluster(flops_stack: FlopsStack) -> None:  # noqa: F811
    flops_stack.push_mocks("digits-dp-h", 4)
    privacy = {
        "clipping_norm": 5.0,
        "noise_multiplier": 2.0,
        "clusters": {"cluster-a": {"noise_multiplier": 4.0}, "cluster-b": {"mode": "local", "noise_multiplier": 1.5}},
        "root": {"clipping_norm": 10.0, "noise_multiplier": 1.0},
    }
    request = sla(
        "examples/sklearn_digits",
        ["digits-dp-h"],
        mode="hierarchical",
        training_cycles=2,
        training_rounds=2,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
        privacy=privacy,
    )
    project = flops_stack.wait(flops_stack.submit(request))
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"].get("reason") is None
    client = flops_stack.mlflow_client(project["tracking_url"])
    root = client.get_run(project["mlflow_run_id"])
    runs = {
        run.data.tags.get("flops.cluster"): run
        for run in client.search_runs([root.info.experiment_id])
        if run.data.tags.get("flops.project_id") == project["project_id"]
    }
    expected = {"cluster-a": epsilon(4.0, 4), "cluster-b": epsilon(1.5, 4)}
    for name, value in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(runs[name].info.run_id, "dp_epsilon"))
        assert [step for step, _ in history] == [1, 2, 3, 4]
        assert history[-1][1] == pytest.approx(value, rel=1e-9)
        assert root.data.metrics[f"dp_epsilon/{name}"] == pytest.approx(value, rel=1e-9)
    assert runs["cluster-a"].data.params["dp.mode"] == "central" and runs["cluster-b"].data.params["dp.mode"] == "local"
    assert root.data.metrics["dp_root_epsilon"] == pytest.approx(epsilon(1.0, 2), rel=1e-9)
    rounds = flops_stack.api("GET", f"/api/flops/projects/{project['project_id']}/rounds").json()["rounds"]
    for name, value in expected.items():  # the API's round history has each cluster's own ε
        last = [entry for entry in rounds if entry["cluster"] == name][-1]
        assert last["metrics"]["dp_epsilon"] == pytest.approx(value, rel=1e-9)
    highest = max(*expected.values(), epsilon(1.0, 2))
    assert project["progress"]["dp_epsilon"] == pytest.approx(highest, rel=1e-9)
