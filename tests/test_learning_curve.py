"""The learning-curve PNG and the manager's calls into a customer's (real, token-gated) MLflow server."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import requests
from PIL import Image

from manager.learning_curve import PLOT_FILE, render_png
from manager.lifecycle.mlflow_run import (
    ProjectTracking,
    TrackingCallFailed,
    experiment_name,
    repository_name,
    run_url,
    without_credentials,
)
from manager.records import RoundRecord
from tests.test_mlflow_gate import ACCESS, alice_server  # noqa: F401  (the gated server fixture)

SERVICE_TOKEN = ACCESS.service_token("alice")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rounds(clusters: list[str | None], cycles: int, per_cycle: int, root: bool) -> list[RoundRecord]:
    made = []
    for cycle in range(1, cycles + 1):
        for cluster in clusters:
            for number in range(1, per_cycle + 1):
                step = (cycle - 1) * per_cycle + number
                made.append(
                    RoundRecord(
                        project_id="p",
                        round=number,
                        cycle=cycle,
                        cluster=cluster,
                        step=step,
                        metrics={"accuracy": 0.5 + step / 100, "loss": 1.0 / step},
                    )
                )
        if root:
            made.append(
                RoundRecord(
                    project_id="p",
                    round=per_cycle,
                    cycle=cycle,
                    step=cycle * per_cycle,
                    metrics={"accuracy": 0.6, "loss": 0.4},
                )
            )
    return made


def drawn_points(png: bytes) -> dict[str, int]:
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.size == (900, 400)
    points: dict[str, int] = json.loads(image.text["Points"])
    return points


def test_classic_curve_has_one_line_per_metric_with_a_point_per_round() -> None:
    points = drawn_points(render_png(rounds([None], cycles=1, per_cycle=4, root=False), "alice/mnist/p"))
    assert points == {"accuracy/global": 4, "loss/global": 4}


def test_hierarchical_curve_has_a_line_per_cluster_and_the_global_model_per_cycle() -> None:
    records = rounds(["c1", "c2"], cycles=3, per_cycle=2, root=True)
    points = drawn_points(render_png(records, "alice/mnist/p"))
    assert points == {
        "accuracy/c1": 6,
        "accuracy/c2": 6,
        "accuracy/global": 3,
        "loss/c1": 6,
        "loss/c2": 6,
        "loss/global": 3,
    }
    without_loss = [r.model_copy(update={"metrics": {"accuracy": r.metrics["accuracy"]}}) for r in records]
    assert set(drawn_points(render_png(without_loss, "x"))) == {"accuracy/c1", "accuracy/c2", "accuracy/global"}
    assert drawn_points(render_png([], "nothing yet")) == {}  # still a real PNG


def test_experiment_names_say_customer_repository_and_project() -> None:
    assert repository_name("https://git.example.org/ml/mnist.git") == "mnist"
    assert repository_name("git@github.com:team/fraud-model") == "fraud-model"
    assert without_credentials("https://bob:s3cret@git.example.org/x.git") == "https://git.example.org/x.git"
    assert experiment_name("alice", "https://bob:s3cret@host/ml/mnist.git", "3f2a") == "alice/mnist/3f2a"
    assert run_url("https://mlflow:5000/", "7", "abc") == "https://mlflow:5000/#/experiments/7/runs/abc"


def _mlflow(url: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(url + endpoint, json=body, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def test_the_curve_goes_into_the_run_and_the_run_link_opens_it(alice_server: str) -> None:  # noqa: F811
    name = experiment_name("alice", "/srv/repos/digits", "curve-run")
    experiment = _mlflow(alice_server, "/api/2.0/mlflow/experiments/create", {"name": name})["experiment_id"]
    run = _mlflow(alice_server, "/api/2.0/mlflow/runs/create", {"experiment_id": experiment})["run"]["info"]
    tracking = ProjectTracking(alice_server, SERVICE_TOKEN)
    info = tracking.run(run["run_id"])
    assert str(info["experiment_id"]) == experiment
    png = render_png(rounds([None], 1, 3, root=False), name)
    tracking.log_artifact(run["run_id"], PLOT_FILE, png)

    listed = requests.get(
        alice_server + "/api/2.0/mlflow/artifacts/list",
        params={"run_id": run["run_id"]},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        timeout=30,
    ).json()
    assert [entry["path"] for entry in listed["files"]] == [PLOT_FILE]
    path = info["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
    downloaded = requests.get(
        f"{alice_server}/api/2.0/mlflow-artifacts/artifacts/{path}/{PLOT_FILE}",
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        timeout=30,
    )
    assert downloaded.content == png and drawn_points(downloaded.content) == {"accuracy/global": 3, "loss/global": 3}
    link = run_url(alice_server, experiment, run["run_id"])
    assert link.startswith(alice_server + "/#/experiments/")

    with pytest.raises(TrackingCallFailed, match="401"):
        ProjectTracking(alice_server, "not-a-token").run(run["run_id"])


def test_a_failed_project_leaves_no_empty_experiment_and_a_used_one_is_tagged(alice_server: str) -> None:  # noqa: F811
    tracking = ProjectTracking(alice_server, SERVICE_TOKEN)
    assert tracking.settle_experiment("alice/none/never-made", "FAILED", {}) == "no MLflow experiment was created"

    empty = experiment_name("alice", "/srv/repos/digits", "failed-early")
    _mlflow(alice_server, "/api/2.0/mlflow/experiments/create", {"name": empty})
    assert tracking.settle_experiment(empty, "FAILED", {}).startswith("deleted the empty MLflow experiment")
    assert tracking.experiment_id(empty) is not None  # MLflow keeps it in its trash ...
    active = _mlflow(alice_server, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    assert empty not in [entry["name"] for entry in active]  # ... but the GUI no longer lists it

    used = experiment_name("alice", "/srv/repos/digits", "failed-late")
    experiment = _mlflow(alice_server, "/api/2.0/mlflow/experiments/create", {"name": used})["experiment_id"]
    _mlflow(alice_server, "/api/2.0/mlflow/runs/create", {"experiment_id": experiment})
    done = tracking.settle_experiment(used, "FAILED", {"flops.project_id": "failed-late"})
    assert done == f"MLflow experiment {used!r} tagged flops.status=FAILED"
    stored = requests.get(
        alice_server + "/api/2.0/mlflow/experiments/get",
        params={"experiment_id": experiment},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        timeout=30,
    ).json()
    tags = {tag["key"]: tag["value"] for tag in stored["experiment"]["tags"]}
    assert tags["flops.status"] == "FAILED" and tags["flops.project_id"] == "failed-late"
