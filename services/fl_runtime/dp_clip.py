"""Flower's DP clipping, safe for a zero update (used by the aggregator's central DP and the learner's local DP).

Flower's helpers divide by the update's L2 norm, so an unchanged model (a learner whose fit moved
nothing) raised ZeroDivisionError and lost the round. A zero update is within every clipping norm:
it is kept as it is, and counts as not clipped.
"""

from __future__ import annotations

import numpy as np
from flwr.supercore.differential_privacy import adaptive_clip_inputs_inplace, compute_clip_model_update


def _is_zero(arrays: list[np.ndarray]) -> bool:
    return not any(np.any(array) for array in arrays)


def clip_model_update(param1: list[np.ndarray], param2: list[np.ndarray], clipping_norm: float) -> None:
    """Flower's ``compute_clip_model_update`` (``param1`` becomes ``param2`` plus the clipped update), unless
    the update is zero."""
    if any(np.any(np.not_equal(new, old)) for new, old in zip(param1, param2, strict=True)):
        compute_clip_model_update(param1, param2, clipping_norm)


def adaptive_clip(input_arrays: list[np.ndarray], clipping_norm: float) -> bool:
    """Flower's ``adaptive_clip_inputs_inplace`` (its answer is "was it clipped"), unless the update is zero."""
    return False if _is_zero(input_arrays) else bool(adaptive_clip_inputs_inplace(input_arrays, clipping_norm))
