"""What FLOps ServerApps and ClientApps put into Flower messages.

Request (``train`` or ``evaluate``): ``arrays`` (ArrayRecord, the global model) and
``config`` (ConfigRecord: ``server-round``, ``cycle``...).
Reply: ``arrays`` (train only), ``metrics`` (MetricRecord with ``num-examples`` as the
FedAvg weight, ``eval-examples``, ``loss``, ``accuracy``) and ``info`` (ConfigRecord
naming the replying ``node`` and ``cluster``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from services.fl_runtime.npy_bytes import NUMPY_PARSING, read_npy

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
INFO = "info"

NUM_EXAMPLES = "num-examples"  # FedAvg weight: training examples behind the reply
EVAL_EXAMPLES = "eval-examples"
LOSS = "loss"
ACCURACY = "accuracy"
FIT_SECONDS = "fit-seconds"  # train replies: how long the learner's fit_model took
ROUND_LOSSES = "round-losses"  # cluster replies: the cluster's per-round metrics of this cycle
ROUND_ACCURACIES = "round-accuracies"

SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"  # train requests under FedProx (Flower's FedProx.configure_train sets it)
LOCAL_DP_CLIP = "flops.dp.clipping-norm"  # train requests under local DP: the learner clips its update to this
LOCAL_DP_NOISE = "flops.dp.noise-multiplier"  # ... and adds Gaussian noise of this times the clipping norm
CYCLE = "cycle"
TOTAL_CYCLES = "total-cycles"
PARENT_RUN = "mlflow-parent-run-id"
FINAL = "final-evaluation"  # evaluate messages to a cluster: 1 when no cycle follows (the cluster then ends)

NUMPY_STYPE = "numpy.ndarray"  # flwr.common.constant.SType.NUMPY: an Array holding np.save bytes

NODE = "node"
CLUSTER = "cluster"

# node-config keys a SuperNode is started with
NODE_NAME_KEY = "flops-node"
NODE_ROLE_KEY = "flops-role"  # "learner" (the ClientApp serves learners only)
NODE_CLUSTER_KEY = "flops-cluster"
NODE_APP_DIR_KEY = "flops-app-dir"


def to_arrays(ndarrays: list[np.ndarray]) -> ArrayRecord:
    return ArrayRecord([np.asarray(array) for array in ndarrays])


def from_arrays(record: ArrayRecord) -> list[np.ndarray]:
    """The record's arrays as writable copies, read without ``np.load`` (see ``npy_bytes``)."""
    return [read_npy(array.data) if array.stype == NUMPY_STYPE else _numpy(array) for array in record.values()]


def _numpy(array: Array) -> np.ndarray:
    with NUMPY_PARSING:
        return array.numpy()


def like(arrays: list[np.ndarray], reference: list[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` cast to the dtypes of ``reference`` (averaging turns everything into float64)."""
    return [np.asarray(a).astype(r.dtype, copy=False) for a, r in zip(arrays, reference, strict=True)]
