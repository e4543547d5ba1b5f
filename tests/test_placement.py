"""Learner placement by data tags and clusters (pure logic, no processes)."""

from __future__ import annotations

import pytest

from flops_utils.data_client import DataServerUnavailable
from flops_utils.service_config import TrainingSettings
from manager.lifecycle.errors import PhaseFailed
from manager.lifecycle.placement import plan_learners
from orchestrator_adapters.base import NodeInfo

NODES = [
    NodeInfo("a1", "cluster-a", data_server="h:1"),
    NodeInfo("a2", "cluster-a", data_server="h:2"),
    NodeInfo("b1", "cluster-b", data_server="h:3"),
    NodeInfo("b2", "cluster-b", data_server="h:4"),
    NodeInfo("edge", None, data_server=None),
]
HOLDINGS = {"h:1": {"digits": 10}, "h:2": {"digits": 5, "other": 3}, "h:3": {"digits": 7}, "h:4": {"other": 1}}


def lister(address: str) -> dict[str, int]:
    return HOLDINGS[address]


def test_classic_picks_only_nodes_with_data_for_the_tags() -> None:
    plan, notes = plan_learners(NODES, TrainingSettings(data_tags=["digits"], min_available_clients=3), lister)
    assert [node.name for node in plan.nodes] == ["a1", "a2", "b1"]
    assert notes == []


def test_no_data_for_tags_is_a_clear_failure() -> None:
    with pytest.raises(PhaseFailed, match=r"no learner node has data for tags \['cats'\]"):
        plan_learners(NODES, TrainingSettings(data_tags=["cats"]), lister)


def test_an_sla_without_data_tags_says_so() -> None:
    """data_tags defaults to []: a newcomer who left it out was told 'no learner node has data for tags []'."""
    with pytest.raises(PhaseFailed) as caught:
        plan_learners(NODES, TrainingSettings(), lister)
    assert str(caught.value) == (
        "the SLA names no data tags: set training_configuration.data_tags to the tags you pushed "
        "(flops data list shows them)"
    )


def test_too_few_nodes_for_min_available_clients() -> None:
    with pytest.raises(PhaseFailed, match="only 3 learner node.* min_available_clients is 4"):
        plan_learners(NODES, TrainingSettings(data_tags=["digits"], min_available_clients=4), lister)


def test_hierarchical_groups_by_cluster_and_checks_each_cluster() -> None:
    training = TrainingSettings(mode="hierarchical", data_tags=["digits", "other"], min_available_clients=2)
    plan, _ = plan_learners(NODES, training, lister)
    assert {cluster: [n.name for n in nodes] for cluster, nodes in plan.clusters.items()} == {
        "cluster-a": ["a1", "a2"],
        "cluster-b": ["b1", "b2"],
    }
    with pytest.raises(PhaseFailed, match="too few in .*cluster-b"):
        plan_learners(NODES, training.model_copy(update={"data_tags": ["digits"]}), lister)


def test_unreachable_data_server_is_skipped_with_a_note() -> None:
    def flaky(address: str) -> dict[str, int]:
        if address == "h:1":
            raise DataServerUnavailable("data server h:1 is unreachable")
        return HOLDINGS[address]

    plan, notes = plan_learners(NODES, TrainingSettings(data_tags=["digits"]), flaky)
    assert [node.name for node in plan.nodes] == ["a2", "b1"]
    assert notes == ["node a1 skipped: data server h:1 is unreachable"]
