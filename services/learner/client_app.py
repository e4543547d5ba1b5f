"""The FLOps ClientApp (``services.learner.client_app:app`` in the generated Flower app).

Learner nodes train the user's ModelManager (a cluster aggregator answers its root with
``services.aggregator.cluster_node`` instead).

``train``: set the global parameters, ``fit_model``, then ``evaluate_model`` on the
fitted model (evaluation fused into the same round-trip; ``fit_model`` may read
``manager.fit_context``: the round, FedProx's ``proximal-mu`` and the global model); reply with the new
parameters and ``num-examples`` (training examples, the FedAvg weight),
``eval-examples``, ``loss``, ``accuracy``. ``evaluate``: evaluate the given parameters.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp

from flops_utils.ml_interfaces import FitContext, ModelManager
from services.fl_runtime import protocol as p
from services.fl_runtime.user_code import load_model_manager
from services.learner.local_dp import local_dp_request, privatise
from services.learner.secagg_mod import secure_aggregation_mod

app = ClientApp(mods=[secure_aggregation_mod])  # SecAgg+ rounds only; other messages pass through

_manager: ModelManager | None = None


def model_manager(context: Context) -> ModelManager:
    """The user's ModelManager with this node's data, built once per ClientApp process."""
    global _manager
    if _manager is None:
        manager = load_model_manager(str(context.node_config.get(p.NODE_APP_DIR_KEY, "")) or None)
        manager.set_model_data()
        _manager = manager
    return _manager


def _info(context: Context) -> ConfigRecord:
    return ConfigRecord(
        {
            p.NODE: str(context.node_config.get(p.NODE_NAME_KEY, context.node_id)),
            p.CLUSTER: str(context.node_config.get(p.NODE_CLUSTER_KEY, "")),
        }
    )


def _evaluate(manager: ModelManager) -> dict[str, MetricRecordValues]:
    loss, accuracy, examples = manager.evaluate_model()
    return {p.LOSS: float(loss), p.ACCURACY: float(accuracy), p.EVAL_EXAMPLES: int(examples)}


def set_fit_context(manager: ModelManager, message: Message, global_parameters: list[np.ndarray]) -> None:
    """``manager.fit_context`` for this round: FedProx's ``proximal-mu`` (0 otherwise) and the global model."""
    config = message.content.config_records.get(p.CONFIG) or ConfigRecord()
    context = FitContext(
        server_round=int(config.get(p.SERVER_ROUND, 0)),  # type: ignore[arg-type]
        proximal_mu=float(config.get(p.PROXIMAL_MU, 0.0)),  # type: ignore[arg-type]
        global_parameters=[array.copy() for array in global_parameters],
    )
    with contextlib.suppress(AttributeError):  # a duck-typed manager with __slots__ cannot read it anyway
        manager.fit_context = context


@app.train()
def train(message: Message, context: Context) -> Message:
    manager = model_manager(context)
    received = p.from_arrays(message.content.array_records[p.ARRAYS])
    local_dp = local_dp_request(message.content.config_records.get(p.CONFIG))
    manager.set_model_parameters([array.copy() for array in received] if local_dp else received)  # fit may mutate
    set_fit_context(manager, message, received)
    started = time.monotonic()
    examples = int(manager.fit_model())
    fit_seconds = time.monotonic() - started
    metrics: dict[str, MetricRecordValues] = {
        p.NUM_EXAMPLES: examples,
        **_evaluate(manager),
        p.FIT_SECONDS: fit_seconds,
    }
    fitted = manager.get_model_parameters()
    if local_dp is not None:  # clipped and noised here: the aggregator never sees the real update
        fitted = privatise(received, fitted, *local_dp)
    content = RecordDict(
        {
            p.ARRAYS: p.to_arrays(fitted),
            p.METRICS: MetricRecord(metrics),
            p.INFO: _info(context),
        }
    )
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    manager = model_manager(context)
    manager.set_model_parameters(p.from_arrays(message.content.array_records[p.ARRAYS]))
    metrics = _evaluate(manager)
    metrics[p.NUM_EXAMPLES] = metrics[p.EVAL_EXAMPLES]
    content = RecordDict({p.METRICS: MetricRecord(metrics), p.INFO: _info(context)})
    return Message(content, reply_to=message)
