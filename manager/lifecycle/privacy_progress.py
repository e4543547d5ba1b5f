"""Differential-privacy figures of the aggregators' reports, for the project's progress."""

from __future__ import annotations

from typing import Any

from flops_utils.mqtt_catalogue import TrainingProgress, TrainingResult
from manager.records import Progress


def privacy_progress(progress: Progress, message: TrainingProgress) -> dict[str, Any]:
    """The DP fields a round report updates. Several clusters report their own ε: the project shows the
    highest (the weakest guarantee any learner has)."""
    if message.dp_epsilon is None:
        return {}
    epsilon = message.dp_epsilon
    if message.cluster is not None and progress.dp_epsilon is not None and message.cycle <= progress.cycle:
        epsilon = max(epsilon, progress.dp_epsilon)
    return {
        "dp_epsilon": epsilon,
        "dp_delta": message.dp_delta,
        "dp_noise_multiplier": message.dp_noise_multiplier,
        "dp_clipping_norm": message.dp_clipping_norm,
    }


def privacy_result(result: TrainingResult) -> dict[str, Any]:
    """The final ε and the reason training ended early, from the top aggregator's result."""
    update: dict[str, Any] = {}
    if result.dp_epsilon is not None:
        update.update(dp_epsilon=result.dp_epsilon, dp_delta=result.dp_delta)
    if result.reason:
        update["reason"] = result.reason
    return update
