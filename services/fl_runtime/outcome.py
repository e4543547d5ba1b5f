"""The ServerApp's final word to the aggregator service (a JSON file in its work dir)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel

OUTCOME_FILE = "outcome.json"
ALIVE_FILE = "server_app.alive"  # touched by a running ServerApp every few seconds


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


class AliveSignal:
    """Touches ``work_dir/server_app.alive`` from a daemon thread while the ServerApp runs.

    The aggregator service asks Flower for the run's status (an expensive CLI call) only
    when this file is missing or stale.
    """

    def __init__(self, work_dir: str | Path, interval_s: float = 2.0) -> None:
        self.path = Path(work_dir) / ALIVE_FILE
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> AliveSignal:
        self._thread = threading.Thread(target=self._beat, name="flops-alive", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.path.touch()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.path.unlink()


def alive_recently(work_dir: str | Path, within_s: float = 20.0) -> bool:
    try:
        return time.time() - (Path(work_dir) / ALIVE_FILE).stat().st_mtime < within_s
    except OSError:
        return False
