"""End to end: the per-round accuracy and loss are the global model's, not the learners' local ones.

Two learners hold disjoint classes (digits 0-4 on one node, 5-9 on the other): each freshly fitted local
model scores well on its own test split, the global model much worse on both. The logged ``accuracy`` of
the last round is recomputed here from the final (registered) model on each learner's own test split.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from flops_utils.data_uploader import DataUploader
from tests.fixtures_stack import FlopsStack, flops_stack, sla  # noqa: F401 - fixture import

pytestmark = pytest.mark.timeout(900)

TAG = "digits-disjoint"
ROUNDS = 3


def disjoint_halves() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    low = y < 5
    return {"node-a1": (x[low], y[low]), "node-a2": (x[~low], y[~low])}


def test_logged_accuracy_is_the_global_models_on_the_learners_test_splits(flops_stack: FlopsStack) -> None:  # noqa: F811
    halves = disjoint_halves()
    for node, (x, y) in halves.items():
        grant = flops_stack.api("POST", "/api/flops/data-tokens", json={"node": node})
        assert grant.status_code == 201, grant.text
        body = grant.json()
        with DataUploader(body["data_server"], body["token"], body["ca_pem"]) as uploader:
            assert uploader.push(TAG, x, y) == len(y)
    request = sla(
        "examples/sklearn_digits",
        [TAG],
        training_rounds=ROUNDS,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
    )
    project_id = flops_stack.submit(request)
    project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]

    client = flops_stack.mlflow_client(project["tracking_url"])
    run_id = project["mlflow_run_id"]
    accuracy = {m.step: m.value for m in client.get_metric_history(run_id, "accuracy")}
    local = {m.step: m.value for m in client.get_metric_history(run_id, "train_accuracy")}
    assert sorted(accuracy) == sorted(local) == list(range(1, ROUNDS + 1)), (accuracy, local)
    # Local models know only their own five classes and ace them; the global model cannot ace both halves.
    assert all(local[step] - accuracy[step] > 0.03 for step in accuracy), (accuracy, local)

    import mlflow

    versions = client.search_model_versions(f"name='{project['registered_model']}'")
    model = mlflow.sklearn.load_model(f"models:/{project['registered_model']}/{versions[0].version}")
    correct, total = 0.0, 0
    for x, y in halves.values():  # each learner's test split, as the example's DataManager makes it
        _, x_test, _, y_test = train_test_split(x, y, test_size=0.2, random_state=42)
        correct += float(model.score(x_test, y_test)) * len(y_test)
        total += len(y_test)
    assert accuracy[ROUNDS] == pytest.approx(correct / total, abs=1e-9), (accuracy[ROUNDS], correct / total)
