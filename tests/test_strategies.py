"""Each SLA strategy, run by FLOps' round loop over the real training link, aggregates exactly as Flower's
strategy does on the same replies.

Four in-process link clients answer every train message with fixed float64 arrays (one an outlier, so
robust strategies differ from FedAvg); FLOps runs two rounds through ``FederatedRounds`` (so the FedOpt
family's and FedAvgM's server state counts). The reference is Flower's own class (FedAvgM: Flower's, not
FLOps' subclass) fed the same replies in Flower's message format. Tolerance: ``rtol=1e-12, atol=1e-12``
(float64 throughout; only the order of the summation may differ).

Krum scores each update by its n-f-2 nearest neighbours; with one neighbour the two closest updates always tie
and Flower picks the one that replied first, which over a real link varies; so the Krum case uses f=0 (two
neighbours, no tie), and MultiKrum keeps both of the tied pair.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvgM, Strategy
from pydantic import TypeAdapter

from flops_utils.aggregation import StrategyChoice
from flops_utils.process_groups import free_port
from manager.security.flower_pki import ProjectFlowerCa
from services.aggregator.node_view import NodesView
from services.aggregator.rounds import FederatedRounds
from services.aggregator.strategies import FLOWER_CLASSES, build_strategy
from services.fl_runtime import protocol as p
from services.fl_runtime.link import frames
from services.fl_runtime.link.client import LinkClient, new_node_id
from services.fl_runtime.link.grid import LinkGrid
from services.fl_runtime.link.server import LinkServer
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

CA = ProjectFlowerCa("p-strategies")
RTOL = ATOL = 1e-12
START = [np.zeros((2, 3)), np.zeros(3)]
# Each node's reply: (arrays, training examples). node-d is the outlier.
REPLIES = {
    "node-a": ([np.full((2, 3), 1.0), np.array([0.1, 0.2, 0.3])], 10),
    "node-b": ([np.full((2, 3), 1.2), np.array([0.2, 0.1, 0.3])], 30),
    "node-c": ([np.full((2, 3), 0.9), np.array([0.3, 0.3, 0.1])], 20),
    "node-d": ([np.full((2, 3), 50.0), np.array([-40.0, 60.0, 9.0])], 5),
}
CHOICES = [
    {"name": "fedavg"},
    {"name": "fedprox", "proximal_mu": 0.3},
    {"name": "fedadam", "eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 0.01},
    {"name": "fedyogi", "eta": 0.02, "tau": 0.01},
    {"name": "fedadagrad", "eta": 0.1, "tau": 0.001},
    {"name": "fedavgm", "server_learning_rate": 0.7, "server_momentum": 0.9},
    {"name": "krum", "num_malicious_nodes": 0},  # with 1, n-f-2 = 1 neighbour: the closest pair ties (see below)
    {"name": "multikrum", "num_malicious_nodes": 1, "num_nodes_to_select": 2},
    {"name": "trimmedmean", "beta": 0.25},
    {"name": "fedmedian"},
]
CHOICE = TypeAdapter(StrategyChoice)


def reply_content(name: str) -> RecordDict:
    arrays, examples = REPLIES[name]
    metrics = MetricRecord({p.NUM_EXAMPLES: examples, p.LOSS: 1.0 / examples, p.ACCURACY: examples / 100})
    return RecordDict({p.ARRAYS: p.to_arrays(arrays), p.METRICS: metrics, p.INFO: ConfigRecord({p.NODE: name})})


class Fleet:
    """Four link clients that answer with their fixed replies and remember what they were asked."""

    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.clients: list[LinkClient] = []
        self.asked: list[Message] = []

    def start(self) -> None:
        for name in REPLIES:

            def answer(message: Message, name: str = name) -> Message:
                self.asked.append(message)
                return Message(reply_content(name), reply_to=message)

            hello = frames.Hello(new_node_id(), name)
            self.clients.append(LinkClient(self.server.address, hello, answer, CA.for_supernode(name)).start())
        for client in self.clients:
            assert client.wait_connected(10)


@pytest.fixture()
def fleet() -> Iterator[Fleet]:
    server = LinkServer("127.0.0.1", free_port(), CA.for_superlink("127.0.0.1")).start()
    made = Fleet(server)
    try:
        made.start()
        yield made
    finally:
        for client in made.clients:
            client.stop()
        server.stop()


def flops_rounds(fleet: Fleet, choice: StrategyChoice, rounds: int) -> list[list[np.ndarray]]:
    grid = LinkGrid(fleet.server)
    assert wait_until(lambda: len(list(grid.get_node_ids())) == len(REPLIES), 10, 0.05)
    loop = FederatedRounds(
        grid,
        min_available=4,
        min_fit=4,
        min_evaluate=4,
        timeout_s=30,
        strategy=build_strategy(choice, min_fit=4, min_evaluate=4),
    )
    arrays, results = START, []
    for server_round in range(1, rounds + 1):
        trained = loop.train_round(server_round, arrays, {})
        assert trained.arrays is not None and sorted(trained.participants) == sorted(REPLIES)
        arrays = trained.arrays
        results.append(arrays)
    return results


def flower_rounds(choice: StrategyChoice, rounds: int) -> list[list[np.ndarray]]:
    """Flower's own strategy class on the same replies, outside FLOps' loop."""
    cls = FedAvgM if choice.name == "fedavgm" else FLOWER_CLASSES[choice.name]
    strategy: Strategy = cls(min_train_nodes=4, min_evaluate_nodes=4, min_available_nodes=4, **choice.params())
    nodes = {index + 1: name for index, name in enumerate(REPLIES)}
    arrays = ArrayRecord([a.copy() for a in START])
    results = []
    for server_round in range(1, rounds + 1):
        asked = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), NodesView(None, list(nodes))))  # type: ignore[arg-type]
        replies = [Message(reply_content(nodes[m.metadata.dst_node_id]), reply_to=m) for m in asked]
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        assert aggregated is not None
        arrays = aggregated
        results.append(p.from_arrays(aggregated))
    return results


@pytest.mark.parametrize("params", CHOICES, ids=[c["name"] for c in CHOICES])
def test_flops_aggregates_as_flower_does(fleet: Fleet, params: dict[str, object]) -> None:
    choice = CHOICE.validate_python(params)
    ours, theirs = flops_rounds(fleet, choice, 2), flower_rounds(choice, 2)
    for server_round, (mine, reference) in enumerate(zip(ours, theirs, strict=True), start=1):
        for got, expected in zip(mine, reference, strict=True):
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"round {server_round}")
    if choice.name == "fedprox":  # Flower's FedProx tells the learners its mu
        assert {float(m.content.config_records[p.CONFIG][p.PROXIMAL_MU]) for m in fleet.asked} == {0.3}


def test_robust_strategies_ignore_the_outlier_and_fedavg_does_not() -> None:
    """The fixed inputs are not trivial: FedAvg follows node-d's 50s, Krum/median/trimmed mean do not."""
    outcome = {
        name: flower_rounds(CHOICE.validate_python({"name": name}), 1)[0][0].max()
        for name in ("fedavg", "krum", "fedmedian")
    }
    outcome["trimmedmean"] = flower_rounds(CHOICE.validate_python({"name": "trimmedmean", "beta": 0.25}), 1)[0][0].max()
    assert outcome["fedavg"] > 4, outcome
    assert all(outcome[name] <= 1.2 for name in ("krum", "fedmedian", "trimmedmean")), outcome
