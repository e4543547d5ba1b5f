"""End to end: the CLI against a running manager, and a manager restarted mid-training."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flops_utils.mqtt_catalogue import TrainingProgress, project_filter
from flops_utils.mqtt_link import MqttLink
from flops_utils.service_config import MqttSettings
from tests.example_repos import commit_all, example_repo
from tests.fixtures_stack import ADMIN_TOKEN, REPO_ROOT, FlopsStack, flops_stack, sla  # noqa: F401
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(900)
ROUNDS = 10


def flops(stack: FlopsStack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("flops")), "--url", stack.url, "--token", ADMIN_TOKEN, *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=dict(os.environ, FLOPS_SUITE_DIR="/nonexistent"),
    )


def test_cli_pushes_data_starts_watches_and_lists(flops_stack: FlopsStack, tmp_path: Path) -> None:  # noqa: F811
    pushed = flops(flops_stack, "mocks", "push", "--tag", "digits-cli", "--partitions", "2", "--dirichlet", "1.0")
    assert pushed.returncode == 0, pushed.stderr
    request = sla("examples/sklearn_digits", ["digits-cli"], training_rounds=2, min_available_clients=2)
    sla_file = tmp_path / "sla.json"
    sla_file.write_text(json.dumps(request))

    started = flops(flops_stack, "--json", "project", "start", str(sla_file), "--watch")
    assert started.returncode == 0, started.stdout + started.stderr
    first_document, _ = json.JSONDecoder().raw_decode(started.stdout)
    project_id = first_document["project_id"]
    assert "round 2/2" in started.stdout + started.stderr

    assert "  elapsed " in started.stdout  # the progress lines carry the elapsed time
    listed = flops(flops_stack, "project", "list")
    assert listed.returncode == 0 and project_id[:8] in listed.stdout
    status = flops(flops_stack, "--json", "project", "status", project_id)
    record = json.loads(status.stdout)
    assert record["status"] == "COMPLETED"
    assert record["eta_s"] == 0.0 and record["elapsed_s"] > 0
    assert {"build", "training", "post_training", "cleanup"} <= set(record["phase_seconds"]), record
    assert record["training_eta_at"] is not None  # measured from the rounds

    rounds = flops_stack.api("GET", f"/api/flops/projects/{project_id}/rounds").json()["rounds"]
    assert [(r["step"], r["cluster"], r["participants"]) for r in rounds] == [(1, None, 2), (2, None, 2)]
    assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 and r["duration_s"] > 0 for r in rounds)
    metrics = flops(flops_stack, "project", "metrics", project_id, "--csv")
    assert metrics.returncode == 0 and len(metrics.stdout.splitlines()) == 3, metrics.stdout + metrics.stderr

    # MLflow: an experiment a person recognises, a direct link to the run, and the learning curve in it.
    assert record["mlflow_experiment"] == f"Admin/sklearn_digits/{project_id}"
    assert record["mlflow_run_url"].startswith(record["tracking_url"] + "/#/experiments/")
    assert record["mlflow_run_url"].endswith("/runs/" + record["mlflow_run_id"])
    client = flops_stack.mlflow_client(record["tracking_url"])
    run = client.get_run(record["mlflow_run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == record["mlflow_experiment"]
    assert experiment.tags["flops.status"] == "COMPLETED" and experiment.tags["flops.project_id"] == project_id
    assert "learning_curve.png" in [artifact.path for artifact in client.list_artifacts(run.info.run_id)]
    png = Path(client.download_artifacts(run.info.run_id, "learning_curve.png", str(tmp_path)))
    assert json.loads(Image.open(png).text["Points"]) == {"accuracy/global": 2, "loss/global": 2}
    assert f"MLflow run: {record['mlflow_run_url']}" in started.stdout.splitlines()  # watch ends with the link
    text = flops(flops_stack, "project", "status", project_id).stdout
    assert f"mlflow run:  {record['mlflow_run_url']}" in text, text

    unknown = flops(flops_stack, "project", "status", "does-not-exist")
    assert unknown.returncode != 0 and len(unknown.stderr.strip().splitlines()) == 1
    bad = sla_file.with_name("bad.json")
    bad.write_text(json.dumps({**request, "training_configuration": {"training_rounds": 0}}))
    refused = flops(flops_stack, "project", "start", str(bad))
    assert refused.returncode != 0 and "training_configuration.training_rounds" in refused.stderr


def test_manager_restart_mid_training_resumes_the_project(
    flops_stack: FlopsStack,  # noqa: F811
    mqtt_settings: MqttSettings,
) -> None:
    flops_stack.push_mocks("digits-restart", 2)
    request = sla("examples/sklearn_digits", ["digits-restart"], training_rounds=ROUNDS, min_available_clients=2)
    project_id = flops_stack.submit(request)
    rounds: queue.Queue[int] = queue.Queue()  # what the aggregator reports, heard on the broker
    listener = MqttLink(mqtt_settings)
    listener.subscribe(
        project_filter(project_id),
        lambda _topic, message: rounds.put(message.round) if isinstance(message, TrainingProgress) else None,
    )
    listener.connect()
    try:
        assert wait_until(lambda: flops_stack.project(project_id)["progress"]["round"] >= 2, 400, interval=0.5)

        def two_rounds_pass() -> None:  # two rounds end while no manager runs
            latest = 0
            while not rounds.empty():  # heard before the kill
                latest = max(latest, rounds.get_nowait())
            target = min(latest + 2, ROUNDS)
            while latest < target:
                latest = max(latest, rounds.get(timeout=300))

        # kill -9: no orderly goodbye to the broker or the database
        flops_stack.restart_manager(kill=True, while_down=two_rounds_pass)
    finally:
        listener.close()
    listed = flops_stack.api("GET", "/api/flops/projects").json()["projects"]
    assert project_id in [project["project_id"] for project in listed]

    project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["round"] == ROUNDS
    events = flops_stack.events(project_id)
    assert "manager restarted: reconnected to the running training services" in events
    # Every round exactly once, also those reported while no manager was running (the broker kept them).
    for number in range(1, ROUNDS + 1):
        reported = [text for text in events if text.startswith(f"round {number}/{ROUNDS} done")]
        assert len(reported) == 1, (number, [text for text in events if text.startswith("round ")])


def test_a_project_failing_in_training_leaves_no_untagged_mlflow_experiment(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    flops_stack.push_mocks("digits-raising", 2)
    repo = Path(example_repo("sklearn_digits", tmp_path))
    code = (repo / "model_manager.py").read_text()
    signature = "    def fit_model(self) -> int:\n"
    raising = code.replace(signature, signature + "        raise ValueError('fit_model refuses')\n")
    assert raising != code
    (repo / "model_manager.py").write_text(raising)
    commit_all(repo, "fit_model raises")
    request = sla("examples/sklearn_digits", ["digits-raising"], min_available_clients=2, round_timeout_s=20)
    request["ml_repo_url"] = str(repo)
    project_id = flops_stack.submit(request)
    project = flops_stack.wait(project_id, timeout=400)
    assert project["status"] == "FAILED", project
    name = f"Admin/{repo.name}/{project_id}"
    assert project["mlflow_experiment"] == name
    settled = [text for text in flops_stack.events(project_id) if "MLflow experiment" in text]
    assert settled in (
        ["no MLflow experiment was created"],
        [f"deleted the empty MLflow experiment {name!r}"],
        [f"MLflow experiment {name!r} tagged flops.status=FAILED"],
    ), settled
    client = flops_stack.mlflow_client(project["tracking_url"])
    active = {experiment.name: experiment for experiment in client.search_experiments()}
    assert name not in active or active[name].tags["flops.status"] == "FAILED"
