"""Local differential privacy on a learner: its update is clipped and noised before it leaves the node.

The aggregator (``training_configuration.privacy.mode = "local"``) puts the mechanism in every train message's
config (:data:`services.fl_runtime.protocol.LOCAL_DP_CLIP`, ``LOCAL_DP_NOISE``), so learner configurations need
no change. The update (fitted minus received parameters) is clipped to ``clipping_norm`` in L2 and Gaussian
noise of std ``noise_multiplier x clipping_norm`` is added to it, with Flower's DP helpers (those its
``LocalDpMod`` uses; that mod takes a per-round (ε, δ) instead of the noise multiplier FLOps accounts for).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv

from services.fl_runtime.dp_clip import clip_model_update
from services.fl_runtime.protocol import LOCAL_DP_CLIP, LOCAL_DP_NOISE


def local_dp_request(config: ConfigRecord | None) -> tuple[float, float] | None:
    """``(clipping_norm, noise_multiplier)`` when the aggregator asks for local DP, else None."""
    if config is None or LOCAL_DP_CLIP not in config:
        return None
    return float(config[LOCAL_DP_CLIP]), float(config.get(LOCAL_DP_NOISE, 0.0))  # type: ignore[arg-type]


def privatise(
    received: list[np.ndarray], fitted: list[np.ndarray], clipping_norm: float, noise_multiplier: float
) -> list[np.ndarray]:
    """``received`` plus the clipped and noised update ``fitted - received``, in the fitted dtypes."""
    outgoing = [np.asarray(array, dtype=np.float64).copy() for array in fitted]
    base = [np.asarray(array, dtype=np.float64) for array in received]
    clip_model_update(outgoing, base, clipping_norm)
    add_gaussian_noise_inplace(outgoing, compute_stdv(noise_multiplier, clipping_norm, 1))
    return [array.astype(np.asarray(like).dtype, copy=False) for array, like in zip(outgoing, fitted, strict=True)]
