"""One training round under SecAgg+ (Flower 1.41's ``SecAggPlusWorkflow`` and ``secaggplus_mod``) over a Grid.

Flower's SecAgg+ is a workflow of the legacy (FitIns/FitRes) API, not a Message-API strategy: one round is
four message exchanges (setup, share keys, collect masked vectors, unmask) that the workflow sends itself
with blocking ``grid.send_and_receive``, and it reveals only the (example-weighted) sum. So it runs beside
``FederatedRounds``' strategy seam, not through it: :func:`secure_train_round` drives the workflow for one
round on the nodes the loop found usable, with Flower's legacy FedAvg (the only aggregation a sum allows),
and returns what ``train_round`` would. Learners answer through :func:`secure_aggregation_mod`, which hands
SecAgg+ messages to Flower's ``secaggplus_mod`` and translates FitIns/FitRes to the FLOps train message and
back; other messages pass through unchanged.

The aggregator sees each learner's metrics (loss, accuracy, example count) but never its parameters: only
masked, quantised vectors whose masks cancel in the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Metrics, Scalar, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from services.fl_runtime import protocol as p


@dataclass(frozen=True)
class SecAggSettings:
    num_shares: int | float = 1.0  # int: shares per learner; float: fraction of the round's learners
    reconstruction_threshold: int | float = 0.66  # int: learners; float: fraction of num_shares
    clipping_range: float = 8.0  # parameters are clipped to [-range, range] before quantisation
    quantization_range: int = 4_194_304
    max_weight: float = 1000.0  # example counts above this are clipped (the weights are masked too)


@dataclass
class SecureRound:
    arrays: list[np.ndarray]
    replies: list[dict[str, Scalar]]  # the metrics (with num-examples) of each learner that completed the round


def secure_train_round(
    grid: Grid,
    nodes: list[int],
    arrays: list[np.ndarray],
    server_round: int,
    config: dict[str, int | float | str],
    settings: SecAggSettings,
    timeout_s: float,
) -> SecureRound | None:
    """One SecAgg+ round over ``nodes``; None when too few learners completed it (below the threshold)."""
    client_manager = SimpleClientManager()
    for node in nodes:
        client_manager.register(GridClientProxy(node, grid, grid.run.run_id))
    seen: list[tuple[int, Metrics]] = []

    def keep_metrics(results: list[tuple[int, Metrics]]) -> Metrics:
        seen.extend(results)
        return {}

    strategy = LegacyFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=len(nodes), min_available_clients=len(nodes),
        on_fit_config_fn=lambda rnd: {**config, p.SERVER_ROUND: rnd}, fit_metrics_aggregation_fn=keep_metrics,
    )  # fmt: skip
    base = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, config=ServerConfig(num_rounds=server_round), strategy=strategy,
                            client_manager=client_manager)  # fmt: skip
    start = p.to_arrays(arrays)
    context.state[MAIN_PARAMS_RECORD] = start
    context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    workflow = SecAggPlusWorkflow(
        settings.num_shares, settings.reconstruction_threshold, max_weight=settings.max_weight,
        clipping_range=settings.clipping_range, quantization_range=settings.quantization_range, timeout=timeout_s,
    )  # fmt: skip
    workflow(grid, context)
    result = context.state[MAIN_PARAMS_RECORD]
    if result is start or not seen:  # the workflow halted (too few learners for the threshold)
        return None
    aggregated = p.from_arrays(result) if isinstance(result, ArrayRecord) else []
    replies = [{p.NUM_EXAMPLES: examples, **metrics} for examples, metrics in seen]
    return SecureRound(p.like(aggregated, arrays), replies)


def secure_aggregation_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Learner side: SecAgg+ messages go through Flower's ``secaggplus_mod``; the FLOps ClientApp trains."""
    if RECORD_KEY_CONFIGS not in message.content.config_records:
        return call_next(message, context)
    return secaggplus_mod(message, context, _fit_through_flops_app(call_next))


def _fit_through_flops_app(call_next: ClientAppCallable) -> ClientAppCallable:
    def fit(message: Message, context: Context) -> Message:
        fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
        request = RecordDict({
            p.ARRAYS: p.to_arrays(parameters_to_ndarrays(fitins.parameters)),
            p.CONFIG: ConfigRecord(dict(fitins.config)),  # type: ignore[arg-type]
        })  # fmt: skip
        reply = call_next(Message(request, dst_node_id=message.metadata.dst_node_id,
                                  message_type=message.metadata.message_type), context)  # fmt: skip
        metrics = dict(reply.content.metric_records[p.METRICS])
        examples = int(metrics.pop(p.NUM_EXAMPLES))  # type: ignore[arg-type]
        fitres = FitRes(
            Status(Code.OK, "ok"),
            ndarrays_to_parameters(p.from_arrays(reply.content.array_records[p.ARRAYS])),
            examples,
            {key: value for key, value in metrics.items() if isinstance(value, int | float)},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)

    return fit
