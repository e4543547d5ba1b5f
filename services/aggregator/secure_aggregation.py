"""One training round under SecAgg+ (Flower 1.41's ``SecAggPlusWorkflow`` and ``secaggplus_mod``) over a Grid.

Flower's SecAgg+ is a workflow of the legacy (FitIns/FitRes) API, not a Message-API strategy: one round is
four message exchanges (setup, share keys, collect masked vectors, unmask) that the workflow sends itself
with blocking ``grid.send_and_receive``, and it reveals only the (example-weighted) sum. So it runs beside
``FederatedRounds``' strategy seam, not through it: :func:`secure_train_round` drives the workflow for one
round on the nodes the loop found usable, with Flower's legacy FedAvg (the only aggregation a sum allows),
and :class:`SecureFederatedRounds` returns what ``train_round`` would. Learners answer through
``services.learner.secagg_mod.secure_aggregation_mod``.

The aggregator sees each learner's metrics (loss, accuracy, example count) but never its parameters: only
masked, quantised vectors whose masks cancel in the sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import Metrics, Scalar
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx

from flops_utils.aggregation import SecureAggregation
from services.aggregator.rounds import FederatedRounds, Reply, RoundFailed, RoundResult
from services.fl_runtime import protocol as p


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
    settings: SecureAggregation,
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
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(nodes),
        min_available_clients=len(nodes),
        on_fit_config_fn=lambda rnd: {**config, p.SERVER_ROUND: rnd},
        fit_metrics_aggregation_fn=keep_metrics,
    )
    base = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(
        base, config=ServerConfig(num_rounds=server_round), strategy=strategy, client_manager=client_manager
    )
    start = p.to_arrays(arrays)
    context.state[MAIN_PARAMS_RECORD] = start
    context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    workflow = SecAggPlusWorkflow(
        settings.num_shares,
        settings.reconstruction_threshold,
        max_weight=settings.max_weight,
        clipping_range=settings.clipping_range,
        quantization_range=settings.quantization_range,
        timeout=timeout_s,
    )
    workflow(grid, context)
    result = context.state[MAIN_PARAMS_RECORD]
    if result is start or not seen:  # the workflow halted (too few learners for the threshold)
        return None
    aggregated = p.from_arrays(result) if isinstance(result, ArrayRecord) else []
    replies = [{p.NUM_EXAMPLES: examples, **metrics} for examples, metrics in seen]
    return SecureRound(p.like(aggregated, arrays), replies)


class SecureFederatedRounds(FederatedRounds):
    """``FederatedRounds`` whose training rounds run under SecAgg+ (evaluation rounds are unchanged: the global
    model is not secret). The strategy only contributes FedProx's ``proximal-mu``; the SLA allows no other."""

    def __init__(self, *args: object, secure: SecureAggregation, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.secure = secure

    def train_round(
        self, server_round: int, arrays: list[np.ndarray], config: dict[str, int | float | str]
    ) -> RoundResult:
        started = time.monotonic()
        nodes = self.wait_for_nodes(self.min_fit, self.timeout_s)
        proximal = self._fedprox()
        if proximal is not None:
            config = {**config, p.PROXIMAL_MU: proximal.proximal_mu}
        outcome = secure_train_round(self.grid, nodes, arrays, server_round, config, self.secure, self.timeout_s)
        names = {self.name_of(node): node for node in nodes}
        completed = [] if outcome is None else outcome.replies
        replies = [
            Reply(
                node_id=names.get(str(m.get(p.NODE)), 0),
                name=str(m.get(p.NODE, "learner")),
                cluster=None,
                metrics={k: float(v) for k, v in m.items() if isinstance(v, int | float)},
            )
            for m in completed
        ]
        lost = [
            (name, "did not complete the SecAgg+ round")
            for name in sorted(names)
            if name not in {reply.name for reply in replies}
        ]
        for name, why in lost:
            self.on_lost(name, f"round {server_round}: {self.what} {name} lost ({why})")
        if outcome is None or len(replies) < self.min_fit:
            raise RoundFailed(
                f"round {server_round}: secure aggregation failed: {len(replies)} of {len(nodes)} learners completed "
                f"it (at least {self.min_fit} needed, and enough of each learner's neighbours to rebuild its mask)"
            )
        return self._result(server_round, outcome.arrays, replies, lost, started)

    def _fedprox(self) -> FedProx | None:
        """The FedProx inside the strategy, also under wrappers that keep the wrapped one as ``.strategy``."""
        strategy: object = self.strategy
        while strategy is not None and not isinstance(strategy, FedProx):
            strategy = getattr(strategy, "strategy", None)
        return strategy
