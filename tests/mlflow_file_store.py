"""A pytest fixture: an MLflow file store of the test's own, and MLflow's global state put back afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest


@pytest.fixture()
def file_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    previous = mlflow.get_tracking_uri()
    try:
        yield (tmp_path / "mlruns").as_uri()
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)
        # Tracker.start made an experiment of this store active (globally and in MLFLOW_EXPERIMENT_ID);
        # later tests use other stores.
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        mlflow.tracking.fluent._active_experiment_id = None
