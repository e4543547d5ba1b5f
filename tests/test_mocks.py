"""The mock data provider: dataset splits, and pushes into real data servers run by the local adapter.

The data servers speak TLS and check tokens, as the manager starts them; mocks go into the caller's namespace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flops_utils.data_client import DataServerClient, to_numpy
from flops_utils.process_groups import free_port
from manager.control import ControlError, MockDataConfiguration, MockResult
from manager.lifecycle.data_access import DataAccess
from manager.lifecycle.data_nodes import DataServers
from manager.mocks import push_mock_data, split_dataset
from manager.security.tracking_pki import TrackingPki
from orchestrator_adapters.base import NodeInfo
from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings

DIGITS_ROWS = 1797


def label_counts(y: np.ndarray) -> np.ndarray:
    return np.bincount(y, minlength=10)


def test_iid_split_is_even_disjoint_and_complete() -> None:
    parts = split_dataset("digits", 4, "iid", seed=1)
    sizes = [len(y) for _, y in parts]
    assert sum(sizes) == DIGITS_ROWS and max(sizes) - min(sizes) <= 1
    x_all = np.concatenate([x for x, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    assert x_all.dtype == np.float32 and x_all.shape == (DIGITS_ROWS, 64)
    assert y_all.dtype == np.int64
    assert x_all.min() >= 0.0 and x_all.max() <= 1.0 and x_all.max() > 0.9
    assert label_counts(y_all).tolist() == label_counts(split_dataset("digits", 1)[0][1]).tolist()
    assert len({row.tobytes() for row in x_all}) == len({row.tobytes() for row in split_dataset("digits", 1)[0][0]})
    for _, y in parts:  # IID: every part sees every label
        assert (label_counts(y) > 0).all()


def test_splits_are_reproducible_by_seed() -> None:
    first = split_dataset("digits", 3, "dirichlet", alpha=0.3, seed=7)
    again = split_dataset("digits", 3, "dirichlet", alpha=0.3, seed=7)
    other = split_dataset("digits", 3, "dirichlet", alpha=0.3, seed=8)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert any(len(a[1]) != len(b[1]) for a, b in zip(first, other, strict=True))


def test_dirichlet_with_small_alpha_skews_labels() -> None:
    def dominant_share(parts: list[tuple[np.ndarray, np.ndarray]]) -> float:
        return float(np.mean([label_counts(y).max() / len(y) for _, y in parts]))

    skewed = split_dataset("digits", 4, "dirichlet", alpha=0.1, seed=0)
    even = split_dataset("digits", 4, "iid", seed=0)
    assert sum(len(y) for _, y in skewed) == DIGITS_ROWS
    assert dominant_share(skewed) > 0.3 > dominant_share(even)


def test_every_partition_is_non_empty_even_with_extreme_alpha() -> None:
    parts = split_dataset("digits", 40, "dirichlet", alpha=0.01, seed=3)
    assert len(parts) == 40 and all(len(y) > 0 for _, y in parts)
    assert sum(len(y) for _, y in parts) == DIGITS_ROWS


def test_bad_split_requests_are_refused() -> None:
    with pytest.raises(ControlError, match="unknown dataset 'cifar'"):
        split_dataset("cifar", 2)
    with pytest.raises(ControlError, match="into 5000 partitions"):
        split_dataset("digits", 5000)


CUSTOMER = "alice"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> DataServers:
    return DataServers(DataAccess(TrackingPki(tmp_path_factory.mktemp("pki"))))


def reader(servers: DataServers, node: NodeInfo, customer: str = CUSTOMER) -> DataServerClient:
    return servers.reader(str(node.data_server), customer, None)


def push(
    nodes: list[NodeInfo], config: MockDataConfiguration, servers: DataServers, customer: str = CUSTOMER
) -> MockResult:
    return push_mock_data(nodes, config, customer, servers)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, servers: DataServers) -> Iterator[LocalAdapter]:
    root = tmp_path_factory.mktemp("mocks")
    nodes_file = root / "nodes.json"
    nodes = [{"name": "l1"}, {"name": "l2"}, {"name": "gateway", "learner": False}]
    nodes_file.write_text(json.dumps({"nodes": nodes}))
    assert servers.access is not None
    adapter = LocalAdapter(
        LocalAdapterSettings(
            state_dir=str(root / "state"),
            nodes_file=str(nodes_file),
            data_security=servers.access.server_security("127.0.0.1"),
        )
    )
    try:
        adapter.start()
        yield adapter
    finally:
        adapter.stop_everything()


def test_push_puts_one_partition_on_each_learner_node(local: LocalAdapter, servers: DataServers) -> None:
    nodes = local.list_nodes()
    config = MockDataConfiguration(
        data_tag="mnist", number_of_partitions=2, distribution="dirichlet", dirichlet_alpha=0.5, seed=4
    )
    result = push(nodes, config, servers)
    assert set(result.partitions) == {"l1", "l2"} and sum(result.partitions.values()) == DIGITS_ROWS
    expected = split_dataset("digits", 2, "dirichlet", alpha=0.5, seed=4)
    by_name = {node.name: node for node in nodes}
    for name, (x, y) in zip(["l1", "l2"], expected, strict=True):
        client = reader(servers, by_name[name])
        stored_x, stored_y = to_numpy(client.get(["mnist"]))
        np.testing.assert_array_equal(stored_y, y)
        np.testing.assert_allclose(stored_x, x)

    again = push(nodes, config, servers)  # replaces, does not double
    assert again.partitions == result.partitions
    assert reader(servers, by_name["l1"]).list_tags()["mnist"] == result.partitions["l1"]


def test_mocks_go_into_the_callers_namespace(local: LocalAdapter, servers: DataServers) -> None:
    nodes = local.list_nodes()
    l1 = next(node for node in nodes if node.name == "l1")
    push(nodes, MockDataConfiguration(data_tag="shared-name", number_of_partitions=2), servers)
    bob_rows = push(
        nodes,
        MockDataConfiguration(data_tag="shared-name", number_of_partitions=1, nodes=["l1"]),
        servers,
        customer="bob",
    ).partitions
    assert bob_rows == {"l1": DIGITS_ROWS}
    assert reader(servers, l1, "bob").list_tags(["shared-name"]) == {"shared-name": DIGITS_ROWS}
    assert reader(servers, l1).list_tags(["shared-name"]) == {"shared-name": DIGITS_ROWS // 2 + 1}  # alice's kept
    assert "shared-name" not in reader(servers, l1, "carol").list_tags()


def test_push_to_named_nodes_only(local: LocalAdapter, servers: DataServers) -> None:
    config = MockDataConfiguration(data_tag="only-l2", number_of_partitions=1, nodes=["l2"])
    assert push(local.list_nodes(), config, servers).partitions == {"l2": DIGITS_ROWS}
    l1 = next(node for node in local.list_nodes() if node.name == "l1")
    assert "only-l2" not in reader(servers, l1).list_tags()
    with pytest.raises(ControlError, match="no learner node with a data server named gateway"):
        push(
            local.list_nodes(), MockDataConfiguration(data_tag="t", number_of_partitions=1, nodes=["gateway"]), servers
        )


def test_push_needs_enough_learner_nodes(local: LocalAdapter, servers: DataServers) -> None:
    config = MockDataConfiguration(data_tag="too-many", number_of_partitions=3)
    with pytest.raises(ControlError, match="3 partitions need 3 learner nodes .* only 2 are available"):
        push(local.list_nodes(), config, servers)


def test_unreachable_data_server_is_a_clear_error_and_pushes_nothing(
    local: LocalAdapter, servers: DataServers, tmp_path: Path
) -> None:
    nodes = [node for node in local.list_nodes() if node.name == "l1"]
    nodes.append(NodeInfo(name="gone", cluster=None, data_server=f"127.0.0.1:{free_port()}"))
    with pytest.raises(ControlError, match="data servers unreachable on gone") as caught:
        push(nodes, MockDataConfiguration(data_tag="half", number_of_partitions=2), servers)
    assert caught.value.status == 503
    assert "half" not in reader(servers, nodes[0]).list_tags()
