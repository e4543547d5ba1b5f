"""The mock data provider: split a built-in dataset and push one partition per learner node.

Offline only: the dataset is scikit-learn's ``load_digits`` (1,797 8x8 images, 10
classes), features scaled to [0, 1]. Partitions are IID (a shuffled even split) or
non-IID (for each label, proportions drawn from Dirichlet(alpha): small alpha gives
nodes few labels each). Pushing replaces what the target nodes held under the tag in
the customer's namespace (nobody else's), so running the provider twice does not double
the data.
"""

from __future__ import annotations

import functools

import numpy as np

from flops_utils.data_client import DataServerError, DataServerUnavailable, from_numpy
from manager.control import ControlError, MockDataConfiguration, MockResult
from manager.lifecycle.data_nodes import DataServers
from orchestrator_adapters.base import NodeInfo

DATASETS = ("digits",)
_DIRICHLET_DRAWS = 100


def _load(dataset_name: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset_name != "digits":
        raise ControlError(f"unknown dataset {dataset_name!r}; built in: {', '.join(DATASETS)}")
    return _digits()


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Read once per process; callers only index into these arrays (which copies)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float32) / 16.0).clip(0.0, 1.0)
    return x, np.asarray(digits.target, dtype=np.int64)


def _dirichlet_parts(labels: np.ndarray, partitions: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices per partition: each label's rows shared out by Dirichlet(alpha) proportions."""
    best: list[np.ndarray] = []
    for _ in range(_DIRICHLET_DRAWS):
        members: list[list[int]] = [[] for _ in range(partitions)]
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for member, chunk in zip(members, np.split(rows, cuts), strict=True):
                member.extend(chunk.tolist())
        best = [np.array(sorted(member), dtype=np.int64) for member in members]
        if all(len(part) for part in best):
            return best
    # Tiny alpha and many partitions: give each empty partition a row from the largest one.
    for index in range(partitions):
        if not len(best[index]):
            largest = max(range(partitions), key=lambda i: len(best[i]))
            best[index], best[largest] = best[largest][-1:], best[largest][:-1]
    return best


def split_dataset(
    dataset_name: str,
    partitions: int,
    distribution: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``partitions`` non-empty (x float32 (n, d), y int64 (n,)) parts of the dataset, disjoint, covering it all."""
    x, y = _load(dataset_name)
    if partitions < 1 or partitions > len(y):
        raise ControlError(f"cannot split {len(y)} rows into {partitions} partitions")
    if distribution not in ("iid", "dirichlet"):
        raise ControlError(f"unknown distribution {distribution!r}; use 'iid' or 'dirichlet'")
    if alpha <= 0:
        raise ControlError(f"dirichlet alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    if distribution == "iid":
        parts = np.array_split(rng.permutation(len(y)), partitions)
    else:
        parts = _dirichlet_parts(y, partitions, alpha, rng)
    return [(x[part], y[part]) for part in parts]


def _targets(nodes: list[NodeInfo], config: MockDataConfiguration) -> list[NodeInfo]:
    learners = [node for node in nodes if node.learner and node.data_server]
    if config.nodes is not None:
        by_name = {node.name: node for node in learners}
        unknown = [name for name in config.nodes if name not in by_name]
        if unknown:
            raise ControlError(
                f"no learner node with a data server named {', '.join(unknown)}; "
                f"learner nodes: {', '.join(by_name) or 'none'}"
            )
        learners = [by_name[name] for name in dict.fromkeys(config.nodes)]
    wanted = config.number_of_partitions
    if len(learners) < wanted:
        raise ControlError(
            f"{wanted} partitions need {wanted} learner nodes with data servers, "
            f"but only {len(learners)} are available ({', '.join(n.name for n in learners) or 'none'})"
        )
    return learners[:wanted]


def push_mock_data(
    nodes: list[NodeInfo], config: MockDataConfiguration, customer: str, servers: DataServers
) -> MockResult:
    """Split the dataset and store one partition under ``config.data_tag`` in ``customer``'s namespace on each
    target node.

    Every target is checked first, so an unreachable node leaves the others untouched.
    """
    targets = _targets(nodes, config)
    clients = {node.name: servers.writer(node, customer) for node in targets}
    unreachable = []
    for node in targets:
        try:
            clients[node.name].ping(timeout=5.0)
        except DataServerError:
            unreachable.append(f"{node.name} ({node.data_server})")
    if unreachable:
        raise ControlError(f"data servers unreachable on {', '.join(unreachable)}; no data was pushed", status=503)
    parts = split_dataset(
        config.dataset_name, config.number_of_partitions, config.distribution, config.dirichlet_alpha, config.seed
    )
    pushed: dict[str, int] = {}
    try:
        for node, (x, y) in zip(targets, parts, strict=True):
            client = clients[node.name]
            try:
                client.delete_tag(config.data_tag)
                pushed[node.name] = client.put(config.data_tag, from_numpy(x, y))
            except DataServerError as error:
                done = f"; pushed to {', '.join(pushed)} before" if pushed else ""
                raise ControlError(
                    f"the data server of node {node.name} failed: {error}{done}",
                    status=503 if isinstance(error, DataServerUnavailable) else 502,
                ) from error
    finally:
        for client in clients.values():
            client.close()
    return MockResult(data_tag=config.data_tag, partitions=pushed)
