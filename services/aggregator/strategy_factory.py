"""The Flower strategy each aggregation level runs: the one seam for aggregation choices.

``learners``: a classic aggregator, or a cluster aggregator over its learners.
``clusters``: the root of a hierarchical project over its cluster aggregators.
Today both are example-weighted FedAvg; SLA-chosen strategies and differential privacy wrap in here.
"""

from __future__ import annotations

from typing import Literal

from flwr.serverapp.strategy import FedAvg, Strategy

from flops_utils.service_config import AggregatorConfig
from services.aggregator.privacy import with_privacy

Level = Literal["learners", "clusters"]


def round_strategy(config: AggregatorConfig, level: Level, *, min_fit: int, min_evaluate: int) -> Strategy:
    """A fresh strategy for one aggregator; ``min_fit`` is what one round needs (the round loop decides who
    is usable and waits for ``min_available`` itself)."""
    strategy = FedAvg(min_train_nodes=min_fit, min_evaluate_nodes=min_evaluate, min_available_nodes=min_fit)
    return with_privacy(strategy, config, level, min_fit=min_fit)
