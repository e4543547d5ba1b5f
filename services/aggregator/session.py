"""What every ServerApp role shares: its config, reports, MLflow run and final outcome."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flops_utils.mqtt_catalogue import TrainingProgress
from flops_utils.service_config import AggregatorConfig, TrainingSettings, log_level
from services.aggregator.rounds import RoundResult
from services.aggregator.strategies import describe, secure_params
from services.aggregator.strategy_factory import level_choice
from services.fl_runtime.reporter import Reporter
from services.fl_runtime.tracking import Tracker

BRIDGE_DIR = "bridge"


def connect_timeout_s(training: TrainingSettings) -> float:
    """How long to wait for the first participants (processes start slowly on busy nodes)."""
    return max(120.0, training.round_timeout_s)


def cycle_timeout_s(training: TrainingSettings) -> float:
    """How long the root waits for one cluster cycle (all its rounds, plus the first connect)."""
    return training.training_rounds * training.round_timeout_s + connect_timeout_s(training) + 60.0


def sender_name(config: AggregatorConfig) -> str:
    if config.instance_name:
        return config.instance_name
    return f"cluster-aggregator-{config.cluster}" if config.role == "cluster" else "aggregator"


def strategy_params(config: AggregatorConfig) -> dict[str, object]:
    training = config.training
    return {
        **config.params,
        **describe(level_choice(config, "clusters" if config.role == "root" else "learners")),
        **secure_params(config),
        "aggregation_weight": "num-examples",
        "evaluation": "post-fit local evaluation per round; global model evaluated after the last round",
        "role": config.role,
        "cluster": config.cluster or "",
        "mode": training.mode,
        "flavor": config.flavor,
        "training_rounds": training.training_rounds,
        "training_cycles": training.training_cycles,
        "min_available_clients": training.min_available_clients,
        "min_fit_clients": training.min_fit_clients,
        "min_evaluate_clients": training.min_evaluate_clients,
        "round_timeout_s": training.round_timeout_s,
        "data_tags": ",".join(training.data_tags),
    }


class ServerSession:
    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.reporter = Reporter(config.mqtt, config.project_id, sender_name(config), "aggregator")
        tags = {"flops.project_id": config.project_id, "flops.role": config.role}
        if config.cluster:
            tags["flops.cluster"] = config.cluster
        run_name = f"{config.project_id}-{config.cluster}" if config.role == "cluster" else config.project_id
        self.tracker = Tracker(
            config.tracking_uri, config.experiment_name, run_name, tags, config.tracking_token, config.tracking_ca_pem
        )
        self.started = time.monotonic()

    @property
    def work_dir(self) -> Path:
        return Path(self.config.work_dir)

    def lost(self, _name: str, text: str) -> None:
        self.reporter.event(text, level="warning")

    def back(self, _name: str, text: str) -> None:
        self.reporter.event(text)

    def waiting(self, text: str) -> None:
        where = f"cluster {self.config.cluster}: " if self.config.role == "cluster" else ""
        self.reporter.event(where + text)

    def progress(
        self,
        result: RoundResult,
        *,
        cycle: int,
        total_cycles: int,
        round_: int,
        total_rounds: int,
        privacy: dict[str, float] | None = None,
    ) -> None:
        self.reporter.publish(
            TrainingProgress.model_validate(
                {
                    "project_id": self.config.project_id,
                    "sender": self.reporter.sender,
                    "cluster": self.config.cluster if self.config.role == "cluster" else None,
                    "cycle": cycle,
                    "total_cycles": total_cycles,
                    "round": round_,
                    "total_rounds": total_rounds,
                    "loss": result.loss,
                    "accuracy": result.accuracy,
                    "num_examples": result.num_examples,
                    "participants": len(result.participants),
                    "round_seconds": round(result.seconds, 3),
                    **(privacy or {}),  # the DP fields (dp_epsilon, ...)
                }
            )
        )


def log_to_file(path: Path) -> None:
    """ServerApp output is not kept by Flower; FLOps keeps its own log in the work dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("flops", "services", "flops_utils"):
        logger = logging.getLogger(name)
        logger.setLevel(log_level())
        logger.addHandler(handler)
