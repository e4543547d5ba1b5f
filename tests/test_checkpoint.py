"""Aggregator checkpoints: file format, and the round trip through a real MLflow store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from services.fl_runtime.checkpoint import Checkpoint, CheckpointError
from services.fl_runtime.tracking import Tracker


def test_checkpoint_bytes_round_trip_and_garbage_is_refused() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5, -2.0]), np.zeros((0,), dtype=np.int64)]
    checkpoint = Checkpoint(
        round=4,
        arrays=arrays,
        metrics={"accuracy": 0.93, "loss": 0.21},
        cycle=2,
        state={"round_losses": [0.5, 0.3], "cluster": "a"},
    )
    back = Checkpoint.from_bytes(checkpoint.to_bytes())
    assert (back.round, back.cycle, back.metrics) == (4, 2, {"accuracy": 0.93, "loss": 0.21})
    assert back.state == {"round_losses": [0.5, 0.3], "cluster": "a"}
    assert [array.dtype for array in back.arrays] == [array.dtype for array in arrays]
    assert all(np.array_equal(a, b) for a, b in zip(back.arrays, arrays, strict=True))
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        Checkpoint.from_bytes(b"not an npz file")


def test_a_second_tracker_finds_the_unfinished_run_and_its_last_checkpoint(file_tracking: str) -> None:
    tags = {"flops.project_id": "p-ckpt", "flops.role": "classic"}
    first = Tracker(file_tracking, "ckpt-tests", "p-ckpt", tags)
    assert first.find_unfinished_run() is None
    run_id = first.start({"training_rounds": 5})
    assert run_id is not None
    for server_round in (1, 2):
        assert first.save_checkpoint(
            Checkpoint(server_round, [np.full(3, float(server_round))], {"accuracy": 0.5 + server_round / 10})
        )
    first.log_metrics({"accuracy": 0.6}, step=1)
    mlflow.end_run(status="RUNNING")  # the process dies: the run stays RUNNING in the store

    other_project = Tracker(file_tracking, "ckpt-tests", "p-other", {**tags, "flops.project_id": "p-other"})
    assert other_project.find_unfinished_run() is None
    second = Tracker(file_tracking, "ckpt-tests", "p-ckpt", tags)
    assert second.find_unfinished_run() == run_id
    checkpoint = second.load_checkpoint(run_id)
    assert checkpoint is not None and checkpoint.round == 2 and checkpoint.metrics == {"accuracy": 0.7}
    assert np.array_equal(checkpoint.arrays[0], np.full(3, 2.0))
    assert second.start({"ignored": True}, resume_run_id=run_id) == run_id
    assert second.logged_steps("accuracy") == {1}
    second.finish(ok=True)
    assert Tracker(file_tracking, "ckpt-tests", "p-ckpt", tags).find_unfinished_run() is None


RACE_SCRIPT = """
import sys
from services.fl_runtime.tracking import Tracker
tracker = Tracker(sys.argv[1], "race", sys.argv[2], {"flops.project_id": "p-race", "flops.role": sys.argv[2]})
tracker.find_unfinished_run()
print(tracker.start({}))
"""


def test_aggregators_creating_the_experiment_at_once_all_log_into_it(tmp_path: Path) -> None:
    """Root and clusters start together; a run must never fall into the Default experiment (resume finds it by tags)."""

    uri = f"sqlite:///{tmp_path / 'race.db'}"
    create_tables = f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"
    subprocess.run([sys.executable, "-c", create_tables], check=True, capture_output=True)  # the race is the experiment
    roles = ["root", "cluster-a", "cluster-b", "cluster-c"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, uri, role],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        for role in roles
    ]
    run_ids = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
        run_ids.append(out.strip().splitlines()[-1])
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("race")
    assert experiment is not None
    assert {client.get_run(run_id).info.experiment_id for run_id in run_ids} == {experiment.experiment_id}
