"""The final model's MLflow serialization: scikit-learn models beyond skops' default trust list log and load."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from sklearn.datasets import load_wine
from sklearn.neural_network import MLPClassifier

from services.fl_runtime.tracking import Tracker, sklearn_serialization


def _wine_mlp() -> tuple[MLPClassifier, np.ndarray, np.ndarray]:
    data = load_wine()
    x = ((data.data - data.data.mean(axis=0)) / data.data.std(axis=0)).astype(np.float32)
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(x, data.target)
    return model, x, data.target


def test_an_mlp_classifier_logs_with_skops_trusting_only_sklearn_types(file_tracking: str, tmp_path: Path) -> None:
    """MLflow 3's skops format refused MLPClassifier (its AdamOptimizer is not on skops' default list), which
    failed a newcomer's project after its last round."""
    model, x, y = _wine_mlp()
    assert sklearn_serialization(model) == {
        "serialization_format": "skops",
        "skops_trusted_types": ["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"],
    }
    tracker = Tracker(file_tracking, "logging-tests", "p-mlp", {"flops.project_id": "p-mlp"})
    assert tracker.start({}) is not None
    logged = tracker.log_model(model, "sklearn", None, tmp_path)
    loaded = mlflow.pyfunc.load_model(logged.model_uri)
    assert float(np.mean(np.asarray(loaded.predict(x)) == y)) > 0.9


class Scaled(MLPClassifier):
    """A user's own estimator class (defined outside scikit-learn): skops cannot trust it by name."""


def test_a_model_of_the_users_own_class_is_pickled_instead() -> None:
    model = Scaled(hidden_layer_sizes=(2,), max_iter=5).fit(np.eye(3), [0, 1, 1])
    assert sklearn_serialization(model) == {"serialization_format": "cloudpickle"}
