"""The per-round history kept with a project, from the aggregators' progress reports."""

from __future__ import annotations

import math

from flops_utils.mqtt_catalogue import TrainingProgress
from manager.records import RoundRecord


def round_record(project_id: str, message: TrainingProgress, at: float) -> RoundRecord:
    metrics = {
        name: float(value)
        for name, value in (("loss", message.loss), ("accuracy", message.accuracy), ("dp_epsilon", message.dp_epsilon))
        if value is not None and math.isfinite(value)
    }
    return RoundRecord(
        project_id=project_id,
        round=message.round,
        cycle=message.cycle,
        cluster=message.cluster,
        step=(message.cycle - 1) * message.total_rounds + message.round,
        participants=message.participants,
        num_examples=message.num_examples,
        duration_s=max(message.round_seconds, 0.0),
        metrics=metrics,
        at=at,
    )
