"""Which learner nodes train a project: those whose data server holds data for its tags."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from flops_utils.data_client import DataServerClient, DataServerUnavailable
from flops_utils.service_config import TrainingSettings
from manager.lifecycle.errors import PhaseFailed
from orchestrator_adapters.base import NodeInfo

TagLister = Callable[[str], dict[str, int]]


def list_tags_over_flight(address: str) -> dict[str, int]:
    return DataServerClient(address).list_tags()


@dataclass(frozen=True)
class LearnerPlan:
    """Learner nodes per cluster (classic mode: one cluster named ``None``)."""

    clusters: dict[str | None, list[NodeInfo]]

    @property
    def nodes(self) -> list[NodeInfo]:
        return [node for nodes in self.clusters.values() for node in nodes]


def nodes_with_data(nodes: list[NodeInfo], tags: list[str], list_tags: TagLister) -> tuple[list[NodeInfo], list[str]]:
    """Learner nodes holding rows for any of ``tags``, plus notes about unreachable data servers."""
    chosen: list[NodeInfo] = []
    notes: list[str] = []
    for node in nodes:
        if not node.learner or not node.data_server:
            continue
        try:
            available = list_tags(node.data_server)
        except DataServerUnavailable as error:
            notes.append(f"node {node.name} skipped: {error}")
            continue
        if any(available.get(tag, 0) > 0 for tag in tags):
            chosen.append(node)
    return chosen, notes


def plan_learners(
    nodes: list[NodeInfo], training: TrainingSettings, list_tags: TagLister = list_tags_over_flight
) -> tuple[LearnerPlan, list[str]]:
    """Pick learner nodes; fail with a clear reason when the SLA cannot be met."""
    tags = training.data_tags
    if not tags:
        raise PhaseFailed(
            "the SLA names no data tags: set training_configuration.data_tags to the tags you pushed "
            "(flops data list shows them)"
        )
    chosen, notes = nodes_with_data(nodes, tags, list_tags)
    if not chosen:
        raise PhaseFailed(
            f"no learner node has data for tags {tags} in your namespace; push data first "
            "(flops data push --node N --tag T FILE, or flops mocks push --tag T)"
        )
    needed = training.min_available_clients
    if training.mode == "classic":
        if len(chosen) < needed:
            raise PhaseFailed(
                f"only {len(chosen)} learner node(s) have data for tags {tags}, but min_available_clients is {needed}"
            )
        return LearnerPlan({None: chosen}), notes
    by_cluster: dict[str | None, list[NodeInfo]] = defaultdict(list)
    for node in chosen:
        by_cluster[node.cluster].append(node)
    if None in by_cluster:
        raise PhaseFailed(f"hierarchical mode needs clusters, but nodes {[n.name for n in by_cluster[None]]} have none")
    short = {cluster: len(members) for cluster, members in by_cluster.items() if len(members) < needed}
    if short:
        raise PhaseFailed(
            f"hierarchical mode needs min_available_clients={needed} learners with data per cluster; "
            f"too few in {dict(sorted((str(k), v) for k, v in short.items()))}"
        )
    return LearnerPlan(dict(sorted(by_cluster.items(), key=lambda item: str(item[0])))), notes
