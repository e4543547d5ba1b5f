"""Flower 1.41 Message-API strategies from the SLA's strategy choice (``flops_utils.aggregation``).

FLOps runs Flower's own classes: messages come from their ``configure_train`` and the aggregate from their
``aggregate_train``, so FLOps' result is Flower's (``tests/test_strategies.py`` checks each on fixed inputs).
Weights are the replies' ``num-examples``; every node the round loop found usable trains
(``fraction_train`` 1), the loop itself guarantees ``min_fit`` replies.

Server state: FedAdam/FedYogi/FedAdagrad keep their moments and take the current global model from every
``configure_train``; FedAvgM keeps its momentum, and here also takes the current global model from every
``configure_train`` (Flower's takes it only once), because a cluster aggregator's model is replaced by the
root's at each cycle. The state lives as long as the aggregator process; a resumed aggregator starts it afresh.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from flops_utils.aggregation import StrategyChoice
from flops_utils.service_config import AggregatorConfig


class FollowingFedAvgM(FedAvgM):
    """FedAvgM whose server model follows the round loop's global model (see the module docstring)."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays.copy()
        return super().configure_train(server_round, arrays, config, grid)


FLOWER_CLASSES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedavgm": FollowingFedAvgM,
    "krum": Krum,
    "multikrum": MultiKrum,
    "trimmedmean": FedTrimmedAvg,
    "fedmedian": FedMedian,
}


def build_strategy(choice: StrategyChoice, *, min_fit: int, min_evaluate: int) -> Strategy:
    """The Flower strategy ``choice`` names, with its parameters; ``min_fit`` is what one round needs (the
    round loop decides who is usable and waits for enough learners itself)."""
    params: dict[str, Any] = choice.params()
    return FLOWER_CLASSES[choice.name](
        min_train_nodes=min_fit, min_evaluate_nodes=min_evaluate, min_available_nodes=min_fit, **params
    )


def describe(choice: StrategyChoice) -> dict[str, str | float | int]:
    """The strategy as flat MLflow params: ``strategy`` (Flower's class) and ``strategy.<param>``."""
    return {
        "strategy": FLOWER_CLASSES[choice.name].__name__.removeprefix("Following"),
        "strategy.name": choice.name,
        **{f"strategy.{key}": value for key, value in choice.params().items()},
    }


def secure_params(config: AggregatorConfig) -> dict[str, str | float | int]:
    """SecAgg+ as MLflow params (aggregators over learners only: the root aggregates cluster models in the clear)."""
    secure = config.training.secure_aggregation
    if secure is None or not secure.enabled or config.role == "root":
        return {"secure_aggregation": "off"}
    settings = secure.model_dump(exclude={"enabled"})
    return {"secure_aggregation": "SecAgg+", **{f"secure_aggregation.{k}": v for k, v in settings.items()}}
