"""Hand-over between a cluster aggregator's two Flower sides, through files in one directory.

The cluster aggregator is a node of the root's SuperLink (its ClientApp receives one
message per cycle) and the server of its own learners (a long-running ServerApp on
its own SuperLink). The ClientApp side ``submit``s a job (the global model and the
cycle), the ServerApp side picks it up with ``next_job``, trains its learners and
``complete``s it; the ClientApp side returns the result to the root.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.fl_runtime.outcome import write_atomically

POLL_S = 0.2


class BridgeError(RuntimeError):
    """The other side failed or did not answer; the message is one line."""


@dataclass
class Job:
    name: str
    kind: str  # "train" or "evaluate"
    arrays: list[np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobResult:
    ok: bool
    reason: str
    arrays: list[np.ndarray] | None
    metrics: dict[str, Any]


def _pack(arrays: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def _unpack(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{index}"] for index in range(len(data.files))]


class Bridge:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    # -- ClientApp side ------------------------------------------------------------
    def submit(self, job: Job) -> None:
        write_atomically(self.directory / f"{job.name}.job.npz", _pack(job.arrays))
        meta = {"name": job.name, "kind": job.kind, "config": job.config}
        write_atomically(self.directory / f"{job.name}.job.json", json.dumps(meta).encode())

    def wait_result(self, name: str, timeout_s: float, failure: Callable[[], str | None]) -> JobResult:
        """Wait for ``name``'s result; ``failure()`` returns a reason when the server side is gone."""
        path = self.directory / f"{name}.result.json"
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            reason = failure()
            if reason:
                raise BridgeError(reason)
            if time.monotonic() >= deadline:
                raise BridgeError(f"no result for {name} after {timeout_s:g} s")
            time.sleep(POLL_S)
        meta = json.loads(path.read_text())
        arrays_path = self.directory / f"{name}.result.npz"
        arrays = _unpack(arrays_path) if arrays_path.exists() else None
        return JobResult(
            ok=bool(meta["ok"]), reason=str(meta.get("reason", "")), arrays=arrays, metrics=meta["metrics"]
        )

    # -- ServerApp side ------------------------------------------------------------
    def next_job(self, done: set[str], timeout_s: float) -> Job | None:
        """The oldest submitted job not in ``done``, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            pending = sorted(
                (path for path in self.directory.glob("*.job.json") if path.name[: -len(".job.json")] not in done),
                key=lambda path: path.stat().st_mtime,
            )
            if pending:
                meta = json.loads(pending[0].read_text())
                arrays = _unpack(self.directory / f"{meta['name']}.job.npz")
                return Job(name=meta["name"], kind=meta["kind"], arrays=arrays, config=meta.get("config", {}))
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)

    def complete(
        self, name: str, ok: bool, metrics: dict[str, Any], arrays: list[np.ndarray] | None = None, reason: str = ""
    ) -> None:
        if arrays is not None:
            write_atomically(self.directory / f"{name}.result.npz", _pack(arrays))
        meta = {"ok": ok, "reason": reason, "metrics": metrics}
        write_atomically(self.directory / f"{name}.result.json", json.dumps(meta).encode())
