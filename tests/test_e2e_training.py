"""End to end through the real API, broker, database, MLflow server and Flower processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pymongo
import pytest
import requests
from PIL import Image
from sklearn.datasets import load_digits

from tests.example_repos import commit_all, example_repo
from tests.fixtures_stack import (  # noqa: F401 - fixture import
    ADMIN_TOKEN,
    CUSTOMER_TOKENS,
    FlopsStack,
    flops_stack,
    mlflow_client,
    sla,
)
from tests.git_http_server import private_git_host

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def classic_data(flops_stack: FlopsStack) -> str:  # noqa: F811
    pushed = flops_stack.push_mocks("digits-ab", 2)
    assert sum(pushed["partitions"].values()) == 1797
    return "digits-ab"


def test_classic_sklearn_trains_logs_registers_and_serves(flops_stack: FlopsStack, classic_data: str) -> None:  # noqa: F811
    request = sla(
        "examples/sklearn_digits",
        [classic_data],
        training_rounds=3,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
    )
    request["post_training_steps"] = ["deploy_trained_model_image"]
    project_id = flops_stack.submit(request)
    project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["round"] == 3 and project["progress"]["total_rounds"] == 3
    assert project["progress"]["accuracy"] > 0.5

    events = flops_stack.events(project_id)
    for phase in ("observatory", "project_app", "observer", "build", "training", "post_training"):
        assert f"phase {phase}" in events
    assert sum("round" in text and "done in" in text for text in events) == 3

    client = flops_stack.mlflow_client(project["tracking_url"])
    run = client.get_run(project["mlflow_run_id"])
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted(metric.step for metric in history) == [1, 2, 3]
    assert run.data.params["sla.training_rounds"] == "3"
    # The run is the customer's: without a token, or with another customer's, MLflow answers 401.
    run_url = f"{project['tracking_url']}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}"
    ca = str(flops_stack.tracking_ca_file)
    assert requests.get(run_url, verify=ca, timeout=10).status_code == 401
    bob = next(token for token, customer in CUSTOMER_TOKENS.items() if customer == "bob")
    assert requests.get(run_url, headers={"Authorization": f"Bearer {bob}"}, verify=ca, timeout=10).status_code == 401
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert requests.get(run_url, headers=admin, verify=ca, timeout=10).status_code == 200
    # Over TLS only: plain HTTP gets no answer, and a client that does not trust the manager's CA is refused.
    with pytest.raises(requests.ConnectionError):
        requests.get(run_url.replace("https://", "http://"), headers=admin, timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(run_url, headers=admin, timeout=10)
    tracking = flops_stack.api("GET", "/api/flops/tracking").json()
    assert tracking["tracking_url"] == project["tracking_url"]
    assert tracking["ca_pem"] == flops_stack.tracking_ca_file.read_text()

    import mlflow.pyfunc

    versions = client.search_model_versions(f"name='{project['registered_model']}'")
    assert versions, "the model was not registered"
    model = mlflow.pyfunc.load_model(f"models:/{project['registered_model']}/{versions[0].version}")
    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    accuracy = float(np.mean(np.asarray(model.predict(features)).astype(int) == digits.target))
    assert accuracy > 0.5, f"registered model accuracy {accuracy}"

    assert project["serving_url"], "no serving endpoint"
    answer = flops_stack.api(
        "POST", f"/api/flops/projects/{project_id}/predict", json={"inputs": features[:20].tolist()}
    )
    assert answer.status_code == 200, answer.text
    predictions = [int(value) for value in answer.json()["predictions"]]
    assert sum(p == t for p, t in zip(predictions, digits.target[:20], strict=True)) >= 12

    stopped = flops_stack.api("DELETE", f"/api/flops/projects/{project_id}")
    assert stopped.status_code == 200 and stopped.json()["serving_url"] is None
    gone = flops_stack.api("POST", f"/api/flops/projects/{project_id}/predict", json={"inputs": [[0.0] * 64]})
    assert gone.status_code == 409


def test_second_project_on_the_same_commit_reuses_the_environment(
    flops_stack: FlopsStack,  # noqa: F811
    classic_data: str,
) -> None:
    first = flops_stack.wait(flops_stack.submit(sla("examples/sklearn_digits", [classic_data], training_rounds=1)))
    second = flops_stack.wait(flops_stack.submit(sla("examples/sklearn_digits", [classic_data], training_rounds=1)))
    assert first["status"] == second["status"] == "COMPLETED", (first["error"], second["error"])
    assert second["build"]["cached"] is True
    assert second["build"]["digest"] == first["build"]["digest"]
    assert second["build"]["total_seconds"] < 10


def test_a_private_repository_trains_and_its_token_is_kept_out_of_every_record(
    flops_stack: FlopsStack,  # noqa: F811
    classic_data: str,
    tmp_path: Path,
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    repo = Path(example_repo("sklearn_digits", tmp_path))
    with private_git_host(repo, tmp_path / "host", "alice", token) as host:
        request = {
            **sla("examples/sklearn_digits", [classic_data], training_rounds=1),
            "ml_repo_url": host.url_with_credentials(),
        }
        project_id = flops_stack.submit(request)
        project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["build"]["commit"] == host.commit
    assert any(header.startswith("Basic ") for _, header in host.requests), "git never authenticated"
    assert project["sla"]["ml_repo_url"] == host.url and "repo_credentials" not in project["sla"]

    # Not in what the API serves, nor in the database, nor in MLflow, nor in any log.
    served = [
        flops_stack.api("GET", path).text
        for path in (
            f"/api/flops/projects/{project_id}",
            "/api/flops/projects",
            f"/api/flops/projects/{project_id}/events",
        )
    ]
    assert not [text for text in served if token in text]
    config = json.loads(flops_stack.config_path.read_text())
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        config["mongo_uri"], serverSelectionTimeoutMS=10_000
    )
    with client:
        database = client[config["database"]]
        documents = [str(document) for name in database.list_collection_names() for document in database[name].find()]
        stored = database["projects"].find_one({"_id": project_id})
    assert stored is not None and stored["sealed"]["repo_credentials"].startswith("fernet:")
    assert not [document for document in documents if token in document]
    run = flops_stack.mlflow_client(project["tracking_url"]).get_run(project["mlflow_run_id"])
    assert run.data.params["sla.ml_repo_url"] == host.url
    assert token not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert token not in flops_stack.log_path.read_text()
    # Only the local adapter's own state holds it (the builder's configuration), private to the manager's user.
    holders = subprocess.run(
        ["grep", "-rlF", "--exclude-dir=envs", token, str(flops_stack.state_dir), config["cache_dir"]],
        capture_output=True,
        text=True,
    )
    for holder in holders.stdout.split():
        assert Path(holder).name == "state.json", f"{holder} holds the repository token"
        assert stat.S_IMODE(Path(holder).stat().st_mode) == 0o600


def test_broken_contract_fails_with_a_one_line_reason(flops_stack: FlopsStack, classic_data: str) -> None:  # noqa: F811
    request = sla("examples/sklearn_digits", [classic_data])
    request["ml_repo_url"] = "examples/broken_contract"
    project = flops_stack.wait(flops_stack.submit(request), timeout=300)
    assert project["status"] == "FAILED"
    assert "ModelManager" in project["error"] and "\n" not in project["error"]
    assert project["phase"] == "done"


def test_a_raising_fit_model_fails_the_project_at_once_naming_node_exception_and_line(
    flops_stack: FlopsStack,  # noqa: F811
    classic_data: str,
    tmp_path: Path,
) -> None:
    """Each learner answers round 1 with its error at once; the aggregator stops waiting (the round cannot
    succeed) long before the 300 s round deadline, and names the error once with the learners it hit."""
    repo = Path(example_repo("sklearn_digits", tmp_path))
    lines = (repo / "model_manager.py").read_text().splitlines(keepends=True)
    fit = next(index for index, line in enumerate(lines) if line.startswith("    def fit_model("))
    lines.insert(fit + 1, "        raise ValueError('partial_fit refuses float32 input')\n")
    (repo / "model_manager.py").write_text("".join(lines))
    commit_all(repo, "fit_model raises")
    request = sla("examples/sklearn_digits", [classic_data], min_available_clients=2, round_timeout_s=300)
    request["ml_repo_url"] = str(repo)
    project_id = flops_stack.submit(request)
    project = flops_stack.wait(project_id, timeout=400)
    assert project["status"] == "FAILED", project
    events = flops_stack.events(project_id)
    connected = next(i for i, text in enumerate(events) if "learners connected" in text)
    error = project["error"]
    assert f"ValueError: partial_fit refuses float32 input at model_manager.py:{fit + 2}" in error, error
    assert error.count("partial_fit refuses") == 1, error  # the same error is named once, for both learners
    assert "2 learners" in error and "node-" in error, error
    assert "within 300 s" not in error, error
    answer = flops_stack.api("GET", f"/api/flops/projects/{project_id}/events").json()
    stamps = [event["at"] for event in answer["events"]]
    failed = next(i for i, text in enumerate(events) if "partial_fit refuses" in text and i > connected)
    # It fails within seconds of round 1, not after the 300 s round deadline (generous for a loaded machine).
    assert stamps[failed] - stamps[connected] < 120, (events[connected], events[failed])


def test_tags_without_data_fail_clearly(flops_stack: FlopsStack) -> None:  # noqa: F811
    project = flops_stack.wait(flops_stack.submit(sla("examples/sklearn_digits", ["no-such-tag"])), timeout=300)
    assert project["status"] == "FAILED"
    assert "no learner node has data for tags ['no-such-tag']" in project["error"]


def test_unreachable_repo_fails_clearly(flops_stack: FlopsStack) -> None:  # noqa: F811
    request = sla("examples/sklearn_digits", ["digits-ab"])
    request["ml_repo_url"] = "file:///nonexistent/repo.git"
    project = flops_stack.wait(flops_stack.submit(request), timeout=300)
    assert project["status"] == "FAILED"
    assert "cannot clone" in project["error"]


def test_stop_running_projects(flops_stack: FlopsStack, classic_data: str) -> None:  # noqa: F811
    """Two projects in training, stopped at once: both answer 202 STOPPING at once, stop in parallel in the
    background, end STOPPED, and leave no process behind."""
    from tests.helpers import wait_until

    projects = [
        flops_stack.submit(sla("examples/sklearn_digits", [classic_data], training_rounds=50)) for _ in range(2)
    ]
    for project_id in projects:
        assert wait_until(lambda p=project_id: flops_stack.project(p)["phase"] == "training", 300, interval=0.5)
        assert wait_until(lambda p=project_id: project_processes(flops_stack, p), 60, interval=0.5)
    # The observer's event log speaks HTTPS with a certificate from the manager's CA, like MLflow.
    deployed = next(text for text in flops_stack.events(projects[0]) if text.startswith("observer ")).split()[-1]
    assert deployed.startswith("https://"), deployed
    observed = requests.get(
        f"{deployed}/events",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
        verify=str(flops_stack.tracking_ca_file),
    )
    assert observed.status_code == 200 and observed.json()["events"], observed.text
    with pytest.raises(requests.ConnectionError):
        requests.get("http://" + deployed.split("://", 1)[1] + "/events", timeout=10)

    answers = [flops_stack.api("DELETE", f"/api/flops/projects/{project_id}") for project_id in projects]
    # Answered at once: both stop in the background, while the API keeps answering.
    for answer in answers:
        assert answer.status_code == 202 and answer.json()["status"] == "STOPPING", answer.text
    assert flops_stack.api("GET", "/health").status_code == 200
    for project_id in projects:
        project = flops_stack.wait(project_id, timeout=120)
        assert project["status"] == "STOPPED"
        assert "stop requested" in flops_stack.events(project_id)
        # Nothing the project started is left: not by its configuration, not in its work folder.
        left = project_processes(flops_stack, project_id)
        assert left == {}, left


def test_hierarchical_pytorch_two_clusters(flops_stack: FlopsStack, tmp_path: Path) -> None:  # noqa: F811
    pushed = flops_stack.push_mocks("digits-all", 4)
    assert len(pushed["partitions"]) == 4
    request = sla(
        "examples/pytorch_digits",
        ["digits-all"],
        mode="hierarchical",
        training_cycles=2,
        training_rounds=2,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
    )
    project = flops_stack.wait(flops_stack.submit(request))
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["cycle"] == 2 and project["progress"]["total_cycles"] == 2
    client = flops_stack.mlflow_client(project["tracking_url"])
    run = client.get_run(project["mlflow_run_id"])
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == 2  # one global value per cycle
    runs = client.search_runs([run.info.experiment_id])
    cluster_metrics = {key for other in runs for key in other.data.metrics if key.startswith("cluster/")} | {
        key for key in run.data.metrics if key.startswith("cluster/")
    }
    assert any("cluster-a" in key for key in cluster_metrics) and any("cluster-b" in key for key in cluster_metrics)

    # The per-round history: each cluster's rounds and the root's model after each cycle, and its curve.
    rounds = flops_stack.api("GET", f"/api/flops/projects/{project['project_id']}/rounds").json()["rounds"]
    clusters = sorted({entry["cluster"] for entry in rounds if entry["cluster"]})
    assert len(clusters) == 2
    for cluster in clusters:
        assert [(r["cycle"], r["round"], r["step"]) for r in rounds if r["cluster"] == cluster] == [
            (1, 1, 1),
            (1, 2, 2),
            (2, 1, 3),
            (2, 2, 4),
        ]
    root_rounds = [(r["cycle"], r["step"], r["participants"]) for r in rounds if r["cluster"] is None]
    assert root_rounds == [(1, 2, 2), (2, 4, 2)]
    png = Path(client.download_artifacts(run.info.run_id, "learning_curve.png", str(tmp_path)))
    points = json.loads(Image.open(png).text["Points"])
    assert {key: value for key, value in points.items() if key.startswith("accuracy/")} == {
        f"accuracy/{clusters[0]}": 4,
        f"accuracy/{clusters[1]}": 4,
        "accuracy/global": 2,
    }


def project_processes(stack: FlopsStack, project_id: str) -> dict[int, str]:
    """pid -> command line of live processes of the project: its id in their environment (every service's
    configuration names it, and their children inherit it) or their working directory in its work folder."""
    folder = stack.state_dir / "projects" / project_id
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environment = Path(f"/proc/{entry.name}/environ").read_bytes()
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
            state = Path(f"/proc/{entry.name}/stat").read_text()
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if state[state.rfind(")") + 2 :][:1] in ("Z", "X"):
            continue
        if project_id.encode() in environment or cwd == str(folder) or cwd.startswith(f"{folder}/"):
            found[int(entry.name)] = command.replace(b"\0", b" ").decode(errors="replace")[:200]
    return found
