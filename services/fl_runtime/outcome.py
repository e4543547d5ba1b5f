"""The ServerApp's final word to the aggregator service (a JSON file in its work dir)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

OUTCOME_FILE = "outcome.json"


class RunOutcome(BaseModel):
    ok: bool
    reason: str = ""
    rounds_completed: int = 0
    cycles_completed: int = 1
    loss: float | None = None
    accuracy: float | None = None
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    dp_epsilon: float | None = None  # differential privacy: the ε spent (at dp_delta)
    dp_delta: float | None = None


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_bytes(data)
    os.replace(scratch, path)


def write_outcome(work_dir: str | Path, outcome: RunOutcome) -> None:
    write_atomically(Path(work_dir) / OUTCOME_FILE, outcome.model_dump_json().encode())


def read_outcome(work_dir: str | Path) -> RunOutcome | None:
    path = Path(work_dir) / OUTCOME_FILE
    if not path.exists():
        return None
    return RunOutcome.model_validate_json(path.read_text())


def clear_outcome(work_dir: str | Path) -> None:
    (Path(work_dir) / OUTCOME_FILE).unlink(missing_ok=True)
