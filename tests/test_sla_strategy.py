"""``training_configuration.strategy`` / ``root_strategy``: validation per name, the settings the aggregators get,
the Flower strategy each aggregation level builds, its MLflow params, and the learners' FitContext."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum
from flwr.supercore.task_identity import TaskIdentity
from pydantic import ValidationError

from flops_utils import FitContext, ModelManager
from flops_utils.service_config import AggregatorConfig, MqttSettings
from manager.sla import ProjectSLA, describe_validation_error, sla_to_training_settings
from services.aggregator.node_view import NodesView
from services.aggregator.session import strategy_params
from services.aggregator.strategies import build_strategy
from services.aggregator.strategy_factory import round_strategy
from services.learner.client_app import set_fit_context

MINIMAL: dict[str, Any] = {"ml_repo_url": "https://github.com/example/mnist-sklearn.git", "ml_model_flavor": "sklearn"}
THREE = {"min_available_clients": 3, "min_fit_clients": 3}


def parsed(**training: Any) -> ProjectSLA:
    return ProjectSLA.model_validate({**MINIMAL, "training_configuration": training})


def errors(**training: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        parsed(**training)
    return describe_validation_error(caught.value)


def test_the_default_is_example_weighted_fedavg() -> None:
    settings = sla_to_training_settings(parsed())
    assert settings.strategy.name == "fedavg" and settings.root_strategy is None
    strategy = build_strategy(settings.strategy, min_fit=1, min_evaluate=1)
    assert type(strategy) is FedAvg and strategy.weighted_by_key == "num-examples"


@pytest.mark.parametrize(
    ("strategy", "field", "message"),
    [
        ({"name": "krum", "f": 1}, "training_configuration.strategy.f", "unknown field"),
        ({"name": "fedmedian", "beta": 0.1}, "training_configuration.strategy.beta", "unknown field"),
        ({"name": "fedprox"}, "training_configuration.strategy.proximal_mu", "field required"),
        (
            {"name": "fedprox", "proximal_mu": -1},
            "training_configuration.strategy.proximal_mu",
            "greater than or equal to 0",
        ),
        ({"name": "fedprox", "proximal_mu": "0.1"}, "training_configuration.strategy.proximal_mu", "valid number"),
        ({"name": "trimmedmean", "beta": 0.5}, "training_configuration.strategy.beta", "less than 0.5"),
        ({"name": "fedadam", "beta_2": 1}, "training_configuration.strategy.beta_2", "less than 1"),
        ({"name": "fedyogi", "eta": 0}, "training_configuration.strategy.eta", "greater than 0"),
        ({"name": "fedavgm", "server_momentum": 1.5}, "training_configuration.strategy.server_momentum", "less than 1"),
        (
            {"name": "multikrum", "num_nodes_to_select": 0},
            "training_configuration.strategy.num_nodes_to_select",
            "greater than or equal to 1",
        ),
        ({"name": "fedsgd"}, "training_configuration.strategy", "unknown name 'fedsgd', one of: fedavg, fedprox"),
        ({"proximal_mu": 1}, "training_configuration.strategy", "name required, one of: fedavg"),
    ],
)
def test_each_strategy_is_validated_with_its_own_parameters(strategy: dict[str, Any], field: str, message: str) -> None:
    found = errors(**THREE, strategy=strategy)
    assert len(found) == 1 and found[0]["field"] == field and message in found[0]["message"], found


def test_krum_needs_an_honest_majority_of_min_fit_clients() -> None:
    found = errors(**THREE, strategy={"name": "krum", "num_malicious_nodes": 2})
    assert found[0]["field"] == "training_configuration.strategy", found
    assert "num_malicious_nodes (2): Krum needs an honest majority" in found[0]["message"], found
    found = errors(**THREE, strategy={"name": "multikrum", "num_nodes_to_select": 4})
    assert "strategy.num_nodes_to_select (4) must not exceed the 3 participants" in found[0]["message"], found
    assert parsed(**THREE, strategy={"name": "krum", "num_malicious_nodes": 1}).training_configuration.strategy


def test_root_strategy_and_cluster_overrides_need_hierarchical_mode() -> None:
    found = errors(root_strategy={"name": "fedmedian"})
    assert found == [
        {
            "field": "training_configuration.root_strategy",
            "message": "root_strategy needs mode 'hierarchical' (classic mode has no root)",
        }
    ]
    found = errors(strategy={"name": "fedavg", "clusters": {"a": {"name": "fedmedian"}}})
    assert found[0]["field"] == "training_configuration.strategy" and "need mode 'hierarchical'" in found[0]["message"]
    found = errors(mode="hierarchical", root_strategy={"name": "fedavg", "clusters": {"a": {"name": "fedmedian"}}})
    assert found == [{"field": "training_configuration.root_strategy.clusters", "message": "unknown field"}], found
    trimmed = {"name": "fedavg", "clusters": {"a": {"name": "trimmedmean", "beta": 1}}}
    found = errors(mode="hierarchical", strategy=trimmed)
    assert found[0]["field"] == "training_configuration.strategy.clusters.a.beta", found
    nested = {"name": "fedavg", "clusters": {"a": {"name": "fedavg", "clusters": {"b": {"name": "fedavg"}}}}}
    found = errors(mode="hierarchical", strategy=nested)  # overrides have no overrides of their own
    assert found == [{"field": "training_configuration.strategy.clusters.a.clusters", "message": "unknown field"}]


def aggregator(sla: ProjectSLA, role: str, cluster: str | None = None) -> AggregatorConfig:
    return AggregatorConfig(
        project_id="p1",
        mqtt=MqttSettings(),
        role=role,
        cluster=cluster,  # type: ignore[arg-type]
        training=sla_to_training_settings(sla),
        flavor="sklearn",
        app_dir="/app",
        port=1,
        work_dir="/tmp/w",
        params={"repo": "x"},
    )


def test_each_aggregation_level_builds_its_own_flower_strategy() -> None:
    sla = parsed(
        mode="hierarchical",
        **THREE,
        strategy={
            "name": "fedprox",
            "proximal_mu": 0.05,
            "clusters": {
                "cluster-b": {"name": "trimmedmean", "beta": 0.34},
                "cluster-c": {"name": "multikrum", "num_malicious_nodes": 1, "num_nodes_to_select": 2},
            },
        },
        root_strategy={"name": "fedadam", "eta": 0.02},
    )
    cluster_a = round_strategy(aggregator(sla, "cluster", "cluster-a"), "learners", min_fit=3, min_evaluate=3)
    assert type(cluster_a) is FedProx and cluster_a.proximal_mu == 0.05 and cluster_a.min_train_nodes == 3
    cluster_b = round_strategy(aggregator(sla, "cluster", "cluster-b"), "learners", min_fit=3, min_evaluate=3)
    assert type(cluster_b) is FedTrimmedAvg and cluster_b.beta == 0.34
    cluster_c = round_strategy(aggregator(sla, "cluster", "cluster-c"), "learners", min_fit=3, min_evaluate=3)
    assert type(cluster_c) is MultiKrum and cluster_c.num_nodes_to_select == 2
    root = round_strategy(aggregator(sla, "root"), "clusters", min_fit=2, min_evaluate=2)
    assert type(root) is FedAdam and root.eta == 0.02 and root.beta_1 == 0.9 and root.min_train_nodes == 2
    classic = parsed(**THREE, strategy={"name": "krum", "num_malicious_nodes": 1})
    assert type(round_strategy(aggregator(classic, "classic"), "learners", min_fit=3, min_evaluate=3)) is Krum
    hierarchical = aggregator(parsed(mode="hierarchical"), "root")
    root_default = round_strategy(hierarchical, "clusters", min_fit=2, min_evaluate=2)
    assert type(root_default) is FedAvg
    median = build_strategy(
        parsed(strategy={"name": "fedmedian"}).training_configuration.strategy, min_fit=1, min_evaluate=1
    )
    assert type(median) is FedMedian
    with_momentum = parsed(strategy={"name": "fedavgm", "server_momentum": 0.9}).training_configuration.strategy
    momentum = build_strategy(with_momentum, min_fit=1, min_evaluate=1)
    assert isinstance(momentum, FedAvgM) and momentum.server_momentum == 0.9


def test_the_strategy_and_its_parameters_are_mlflow_params() -> None:
    sla = parsed(
        mode="hierarchical",
        strategy={"name": "fedprox", "proximal_mu": 0.05, "clusters": {"cluster-b": {"name": "fedmedian"}}},
        root_strategy={"name": "fedyogi"},
    )
    params = strategy_params(aggregator(sla, "cluster", "cluster-a"))
    assert params["strategy"] == "FedProx" and params["strategy.proximal_mu"] == 0.05 and params["repo"] == "x"
    params = strategy_params(aggregator(sla, "cluster", "cluster-b"))
    assert params["strategy"] == "FedMedian" and params["strategy.name"] == "fedmedian"
    assert not any(key.startswith("strategy.") and key != "strategy.name" for key in params)
    params = strategy_params(aggregator(sla, "root"))
    assert params["strategy"] == "FedYogi" and params["strategy.eta"] == 0.01 and params["strategy.beta_2"] == 0.99


class Manager(ModelManager):
    def set_model_data(self) -> None: ...
    def get_model(self) -> None: ...
    def get_model_parameters(self) -> list[np.ndarray]:
        return []

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None: ...
    def fit_model(self) -> int:
        return 0

    def evaluate_model(self) -> tuple[float, float, int]:
        return 0.0, 0.0, 0


def train_message(strategy_params: dict[str, Any], arrays: list[np.ndarray]) -> Message:
    choice = parsed(strategy=strategy_params).training_configuration.strategy
    strategy = build_strategy(choice, min_fit=1, min_evaluate=1)
    grid = NodesView(None, [7])  # type: ignore[arg-type]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1  # as a Grid sets it
    return next(iter(strategy.configure_train(4, ArrayRecord(arrays), ConfigRecord({}), grid)))


def test_fit_model_reads_proximal_mu_and_the_global_model_from_its_fit_context() -> None:
    manager = Manager()
    assert manager.fit_context == FitContext()  # before any round: proximal_mu 0, as for code that ignores it
    arrays = [np.arange(3.0)]
    set_fit_context(manager, train_message({"name": "fedprox", "proximal_mu": 0.25}, arrays), arrays)
    assert manager.fit_context.proximal_mu == 0.25 and manager.fit_context.server_round == 4
    assert manager.fit_context.global_parameters[0].tolist() == [0.0, 1.0, 2.0]
    arrays[0][0] = 9  # the context keeps its own copy of the global model
    assert manager.fit_context.global_parameters[0][0] == 0.0
    set_fit_context(manager, train_message({"name": "fedavg"}, arrays), arrays)
    assert manager.fit_context.proximal_mu == 0.0


SECURE = {"enabled": True, "num_shares": 3, "reconstruction_threshold": 2}


@pytest.mark.parametrize(
    ("training", "field", "message"),
    [
        (
            {"strategy": {"name": "krum"}},
            "training_configuration.secure_aggregation",
            "strategy 'krum' needs each learner's update, and secure aggregation reveals only their sum",
        ),
        (
            {"strategy": {"name": "fedadam"}},
            "training_configuration.secure_aggregation",
            "strategy 'fedadam' is not available with it (Flower's SecAgg+ workflow aggregates with FedAvg)",
        ),
        ({"min_fit_clients": 2}, "training_configuration.secure_aggregation", "needs min_fit_clients >= 3"),
        (
            {"secure_aggregation": {**SECURE, "num_shares": 4}},
            "training_configuration.secure_aggregation",
            "num_shares (4) must not exceed min_fit_clients (3)",
        ),
        (
            {"secure_aggregation": {**SECURE, "reconstruction_threshold": 3}},
            "training_configuration.secure_aggregation",
            "reconstruction_threshold (3) must be less than num_shares (3)",
        ),
        (
            {"secure_aggregation": {**SECURE, "num_shares": 2}},
            "training_configuration.secure_aggregation.num_shares",
            "as an integer (learners) it must be between 3 and 10000",
        ),
        (
            {"secure_aggregation": {**SECURE, "reconstruction_threshold": 1.5}},
            "training_configuration.secure_aggregation.reconstruction_threshold",
            "as a fraction it must be greater than 0",
        ),
        (
            {"secure_aggregation": {**SECURE, "clipping_range": 0}},
            "training_configuration.secure_aggregation.clipping_range",
            "greater than 0",
        ),
        (
            {"secure_aggregation": {**SECURE, "dropouts": 1}},
            "training_configuration.secure_aggregation.dropouts",
            "unknown field",
        ),
    ],
)
def test_secure_aggregation_is_validated_and_refused_where_it_cannot_work(
    training: dict[str, Any], field: str, message: str
) -> None:
    found = errors(**{**THREE, "secure_aggregation": SECURE, **training})
    assert len(found) == 1 and found[0]["field"] == field and message in found[0]["message"], found


def test_secure_aggregation_reaches_the_aggregators_of_learners_and_their_mlflow_params() -> None:
    sla = parsed(
        mode="hierarchical",
        **THREE,
        strategy={"name": "fedprox", "proximal_mu": 0.1},
        secure_aggregation={**SECURE, "clipping_range": 16.0},
    )
    settings = sla_to_training_settings(sla)
    assert settings.secure_aggregation is not None and settings.secure_aggregation.num_shares == 3
    params = strategy_params(aggregator(sla, "cluster", "cluster-a"))
    assert params["secure_aggregation"] == "SecAgg+" and params["secure_aggregation.clipping_range"] == 16.0
    assert params["secure_aggregation.reconstruction_threshold"] == 2
    assert strategy_params(aggregator(sla, "root"))["secure_aggregation"] == "off"  # cluster models: in the clear
    assert strategy_params(aggregator(parsed(), "classic"))["secure_aggregation"] == "off"
    fraction = parsed(**THREE, secure_aggregation={"enabled": True}).training_configuration.secure_aggregation
    assert fraction is not None and fraction.num_shares == 1.0 and fraction.reconstruction_threshold == 0.66


def test_the_choices_survive_the_json_config_an_aggregator_is_started_with() -> None:
    sla = parsed(
        mode="hierarchical",
        **THREE,
        strategy={"name": "fedprox", "proximal_mu": 0.1, "clusters": {"cluster-b": {"name": "fedavg"}}},
        root_strategy={"name": "fedadam"},
        secure_aggregation={**SECURE, "reconstruction_threshold": 0.5},
    )
    config = AggregatorConfig.model_validate_json(aggregator(sla, "cluster", "cluster-b").model_dump_json())
    assert config.training == sla_to_training_settings(sla)
    assert config.training.secure_aggregation is not None and config.training.secure_aggregation.num_shares == 3
    assert config.training.secure_aggregation.reconstruction_threshold == 0.5
    assert type(round_strategy(config, "learners", min_fit=3, min_evaluate=3)) is FedAvg  # cluster-b's override
    other = config.model_copy(update={"cluster": "cluster-a"})
    assert type(round_strategy(other, "learners", min_fit=3, min_evaluate=3)) is FedProx
    root = config.model_copy(update={"role": "root", "cluster": None})
    assert type(round_strategy(root, "clusters", min_fit=2, min_evaluate=2)) is FedAdam
