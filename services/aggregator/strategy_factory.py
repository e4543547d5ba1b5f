"""The Flower strategy each aggregation level runs: the one seam for aggregation choices.

``learners``: a classic aggregator, or a cluster aggregator over its learners.
``clusters``: the root of a hierarchical project over its cluster aggregators.
The SLA chooses each (``training_configuration.strategy`` with per-cluster overrides, ``root_strategy``;
built in :mod:`services.aggregator.strategies`); differential privacy wraps in here.
"""

from __future__ import annotations

from typing import Literal

from flwr.serverapp.strategy import Strategy

from flops_utils.aggregation import FedAvgChoice, StrategyChoice
from flops_utils.service_config import AggregatorConfig
from services.aggregator.privacy import with_privacy
from services.aggregator.strategies import build_strategy

Level = Literal["learners", "clusters"]


def round_strategy(config: AggregatorConfig, level: Level, *, min_fit: int, min_evaluate: int) -> Strategy:
    """A fresh strategy for one aggregator; ``min_fit`` is what one round needs (the round loop decides who
    is usable and waits for ``min_available`` itself)."""
    strategy = build_strategy(level_choice(config, level), min_fit=min_fit, min_evaluate=min_evaluate)
    return with_privacy(strategy, config, level, min_fit=min_fit)


def level_choice(config: AggregatorConfig, level: Level) -> StrategyChoice:
    """The SLA's choice for this aggregator: a cluster's override if it has one, the root's own."""
    training = config.training
    if level == "clusters":
        return training.root_strategy or FedAvgChoice()
    return training.strategy.for_cluster(config.cluster if config.role == "cluster" else None)
