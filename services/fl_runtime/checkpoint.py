"""Aggregator checkpoints: the global model, the round and cycle counters, that round's metrics.

One ``.npz`` file per checkpoint (numpy arrays plus a small JSON header), written after
every round to the aggregator's MLflow run (``checkpoints/latest.npz``). A redeployed
aggregator finds its run by tags, loads the file and continues with the next round; the
round's metrics travel along so a crash between checkpoint and metric logging loses none.
``state`` holds what else a role needs to continue (JSON values: per-round histories of
the cycle under way, per-cluster metrics the root has not logged yet).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "latest.npz"
_HEADER = "__flops_header__"
FORMAT = 1


def known(metrics: dict[str, float | None]) -> dict[str, float]:
    """The metrics that have a value (a checkpoint's header holds numbers only)."""
    return {key: value for key, value in metrics.items() if value is not None}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (one line)."""


@dataclass
class Checkpoint:
    round: int
    arrays: list[np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    cycle: int = 1
    state: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        header = {
            "format": FORMAT,
            "round": self.round,
            "cycle": self.cycle,
            "metrics": self.metrics,
            "arrays": len(self.arrays),
            "state": self.state,
        }
        buffer = io.BytesIO()
        named: dict[str, Any] = {f"a{index}": array for index, array in enumerate(self.arrays)}
        named[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        np.savez(buffer, **named)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                header = json.loads(archive[_HEADER].tobytes().decode())
                if header.get("format") != FORMAT:
                    raise CheckpointError(f"unknown checkpoint format {header.get('format')!r}")
                arrays = [archive[f"a{index}"] for index in range(int(header["arrays"]))]
        except (OSError, ValueError, KeyError) as error:
            raise CheckpointError(f"unreadable checkpoint: {error}") from None
        return cls(
            round=int(header["round"]),
            arrays=arrays,
            cycle=int(header.get("cycle", 1)),
            metrics={key: float(value) for key, value in header.get("metrics", {}).items()},
            state=dict(header.get("state") or {}),
        )
