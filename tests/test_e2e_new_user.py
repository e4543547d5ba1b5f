"""End to end as a new user: an own ML repo and own data, following only the README.

The repo is written here (not copied from examples/): a scikit-learn MLPClassifier (float64 parameters, a pinned
scikit-learn) on the breast-cancer data that ships with scikit-learn, pushed as CSV over three learner nodes with
the CLI. Its first commit makes the mistake a newcomer makes (the model has no weights before its first fit) and
must fail at the build with the reason and the remedy; the fixed commit trains to COMPLETED, is watched with the
CLI, and its MLflow run holds the params, per-round metrics and a registered model that loads and predicts.
Last, a node holding three rows fails the project with its learner's reason instead of a training timeout.
Real manager, broker, database, data servers, MLflow and Flower processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from manager.suite import SuiteEndpoints
from tests.fixtures_stack import CUSTOMER_TOKENS, FlopsStack, running_stack, stop_local_services

pytestmark = pytest.mark.timeout(600)

ALICE = next(token for token, customer in CUSTOMER_TOKENS.items() if customer == "alice")
NODES = ["node-a1", "node-a2", "node-b1"]

DATA_MANAGER = '''"""This node's breast-cancer rows (standardised before the push), split for training and testing."""
from sklearn.model_selection import train_test_split

from flops_utils import DataManager, load_dataset
from flops_utils.data_client import to_numpy


class CancerData(DataManager):
    def get_data(self):
        x, y = to_numpy(load_dataset())
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
        return (x_train, y_train), (x_test, y_test)
'''

MODEL_MANAGER = '''"""A small MLP classifier; its parameters are float64 arrays (coefs_ and intercepts_)."""
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier

from data_manager import CancerData
from flops_utils import ModelManager as BaseModelManager

FEATURES = 30


class ModelManager(BaseModelManager):
    def __init__(self):
        self.model = MLPClassifier(
            hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=10, warm_start=True, random_state=0
        )
        # WEIGHTS

    def set_model_data(self):
        (self.x_train, self.y_train), (self.x_test, self.y_test) = CancerData().get_data()

    def get_model(self):
        return self.model

    def get_model_parameters(self):
        return [*self.model.coefs_, *self.model.intercepts_]

    def set_model_parameters(self, parameters):
        half = len(parameters) // 2
        self.model.coefs_, self.model.intercepts_ = list(parameters[:half]), list(parameters[half:])

    def fit_model(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(self.x_train, self.y_train)
        return len(self.x_train)

    def evaluate_model(self):
        loss = log_loss(self.y_test, self.model.predict_proba(self.x_test), labels=[0, 1])
        return loss, self.model.score(self.x_test, self.y_test), len(self.x_test)
'''
WEIGHTS = "self.model.partial_fit(np.zeros((2, FEATURES)), [0, 1], classes=[0, 1])  # weights before any data"


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=New User", "-c", "user.email=new@example.org", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def write_repo(repo: Path) -> None:
    """Commit 1 (tag 'unfitted'): the model has no weights until fitted. Commit 2: weights in __init__."""
    repo.mkdir()
    (repo / "data_manager.py").write_text(DATA_MANAGER)
    (repo / "model_manager.py").write_text(MODEL_MANAGER.replace("        # WEIGHTS\n", ""))
    (repo / "requirements.txt").write_text(f"scikit-learn=={metadata.version('scikit-learn')}\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an MLP on breast-cancer data")
    git(repo, "tag", "unfitted")
    (repo / "model_manager.py").write_text(MODEL_MANAGER.replace("# WEIGHTS", WEIGHTS))
    git(repo, "commit", "-qam", "create the weights in __init__: the aggregator needs them before any data")


def cancer_table() -> pd.DataFrame:
    """The data as a user has it: named feature columns and a text diagnosis, features standardised."""
    data = load_breast_cancer(as_frame=True)
    features = (data.data - data.data.mean()) / data.data.std()
    names = np.asarray(data.target_names)[data.target.to_numpy()]
    return features.assign(diagnosis=names).sample(frac=1.0, random_state=1).reset_index(drop=True)


def flops(stack: FlopsStack, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("flops")), "--url", stack.url, "--token", ALICE, *args]
    environment = dict(os.environ, FLOPS_SUITE_DIR="/nonexistent")
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


def started_project(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("started project "))
    return line.split()[2]


def test_a_new_users_own_repo_and_data_train_to_a_model_that_predicts(suite: SuiteEndpoints, tmp_path: Path) -> None:
    repo = tmp_path / "cancer-mlp"
    write_repo(repo)
    table = cancer_table()
    (tmp_path / "stack").mkdir()
    with running_stack(suite, tmp_path / "stack", repo_access={"local_roots": [str(tmp_path)]}) as stack:
        try:
            _journey(stack, repo, table, tmp_path)
        finally:
            stop_local_services(stack.state_dir)


def _journey(stack: FlopsStack, repo: Path, table: pd.DataFrame, tmp_path: Path) -> None:
    listed = flops(stack, "data", "list")
    assert listed.returncode == 0, listed.stderr
    assert all(node in listed.stdout for node in NODES), listed.stdout

    # Text labels are refused with the classes and the remedy; nothing is stored.
    parts = np.array_split(np.arange(len(table)), len(NODES))
    text_file = tmp_path / "node-a1-text.csv"
    table.iloc[parts[0]].to_csv(text_file, index=False)
    refused = flops(stack, "data", "push", "--node", "node-a1", "--tag", "cancer", "--label-column", "diagnosis",
                    str(text_file))  # fmt: skip
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (
        "label column 'diagnosis' holds text ('benign', 'malignant'); labels are integer classes: "
        "map the 2 classes to 0..1 the same way on every node before pushing"
    ) in refused.stderr

    numbered = table.assign(diagnosis=(table["diagnosis"] == "benign").astype(int))  # scikit-learn's coding
    for node, rows in zip(NODES, parts, strict=True):
        path = tmp_path / f"{node}.csv"
        numbered.iloc[rows].to_csv(path, index=False)
        pushed = flops(stack, "data", "push", "--node", node, "--tag", "cancer", "--label-column", "diagnosis",
                       str(path))  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        assert f"pushed {len(rows)} rows of 30 features to tag cancer on node {node}" in pushed.stdout

    sla = {
        "customerID": "alice",
        "ml_repo_url": repo.as_uri(),
        "ml_model_flavor": "sklearn",
        "training_configuration": {
            "data_tags": ["cancer"],
            "training_rounds": 3,
            "min_available_clients": 3,
            "min_fit_clients": 3,
            "min_evaluate_clients": 3,
        },
    }

    # The newcomer's first commit: refused at the build, before any training, with the remedy.
    unfitted_file = tmp_path / "unfitted.json"
    unfitted_file.write_text(json.dumps({**sla, "repo_ref": "unfitted"}))
    started = flops(stack, "project", "start", str(unfitted_file))
    assert started.returncode == 0, started.stderr
    failed = stack.wait(started_project(started.stdout), timeout=300)
    assert failed["status"] == "FAILED"
    assert failed["error"] == (
        "build failed: model_manager.py: get_model_parameters() failed right after ModelManager() "
        "(AttributeError: 'MLPClassifier' object has no attribute 'coefs_'); the aggregator takes the initial "
        "model from a fresh ModelManager without data, so create the model's parameters in __init__"
    ), failed["error"]
    assert failed["progress"]["round"] == 0

    # The fixed commit (default branch), started and watched with the CLI.
    sla_file = tmp_path / "sla.json"
    sla_file.write_text(json.dumps(sla))
    watched = flops(stack, "project", "start", str(sla_file), "--watch")
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr
    project_id = started_project(watched.stdout)
    for text in ("round 3/3 done", "learner on node node-b1:", "MLflow run:"):
        assert text in watched.stdout, watched.stdout[-3000:]
    assert "unknown error" not in watched.stdout
    project = stack.project(project_id, token=ALICE)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["round"] == 3 and project["progress"]["accuracy"] > 0.85, project["progress"]

    metrics = flops(stack, "project", "metrics", project_id, "--csv")
    assert metrics.returncode == 0, metrics.stderr
    rounds = metrics.stdout.strip().splitlines()
    assert len(rounds) == 4, metrics.stdout  # a header and three rounds

    client = stack.mlflow_client(project["tracking_url"], token=ALICE)
    run = client.get_run(project["mlflow_run_id"])
    assert run.data.params["sla.training_rounds"] == "3"
    assert run.data.params["strategy.name"] == "fedavg"
    accuracy = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted(metric.step for metric in accuracy) == [1, 2, 3]
    assert max(metric.value for metric in accuracy) > 0.85

    import mlflow.pyfunc

    versions = client.search_model_versions(f"name='{project['registered_model']}'")
    assert versions, "the model was not registered"
    model = mlflow.pyfunc.load_model(f"models:/{project['registered_model']}/{versions[0].version}")
    features = table.drop(columns="diagnosis").to_numpy(dtype=np.float32)
    predicted = np.asarray(model.predict(features)).astype(int)
    truth = (table["diagnosis"] == "benign").astype(int).to_numpy()
    assert float(np.mean(predicted == truth)) > 0.85

    # A node with three rows: its DataManager's stratified split raises on every restart; the project fails
    # with that reason once too few learners are left, instead of waiting for the training timeout.
    for node, rows in (("node-a1", slice(0, 200)), ("node-b2", slice(200, 203))):
        path = tmp_path / f"tiny-{node}.csv"
        numbered.iloc[rows].to_csv(path, index=False)
        pushed = flops(stack, "data", "push", "--node", node, "--tag", "tiny", "--label-column", "diagnosis",
                       str(path))  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
    tiny = {**sla, "training_configuration": {**sla["training_configuration"], "data_tags": ["tiny"]}}
    tiny["training_configuration"].update(min_available_clients=2, min_fit_clients=2, min_evaluate_clients=2)
    tiny_file = tmp_path / "tiny.json"
    tiny_file.write_text(json.dumps(tiny))
    started = flops(stack, "project", "start", str(tiny_file))
    assert started.returncode == 0, started.stderr
    too_few = stack.wait(started_project(started.stdout), timeout=300)
    assert too_few["status"] == "FAILED"
    assert too_few["error"].startswith("learner-node-b2 failed 4 times: node node-b2: ValueError: "), too_few["error"]
    assert "at data_manager.py:" in too_few["error"]
    assert too_few["error"].endswith("; 1 learner(s) left, but the SLA needs 2"), too_few["error"]
