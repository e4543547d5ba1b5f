"""Accuracy against ε: the example repo (examples/sklearn_digits) trained with differential privacy.

In one process, over the real training link: a LinkServer and one LinkClient per learner, the round loop
(``FederatedRounds``) with the strategy ``round_strategy`` builds from the SLA's privacy block, and per
learner the example's own ModelManager on its share of the digits (the partitions FLOps' mock data would
give; the data server is left out). Local DP applies ``services.learner.local_dp`` as the ClientApp does.
For each target ε (at δ = 1e-5) FLOps derives the noise multiplier for the planned rounds; the global
model's accuracy is measured on a held-out 20 % of the digits after the last round (mean over seeds).

    .venv/bin/python benchmarks/dp_accuracy.py [--learners 10] [--min-fit 5] [--rounds 10] [--seeds 3]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "sklearn_digits"))

from flwr.app import Message, MetricRecord, RecordDict  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from benchmarks.common import print_json, print_table  # noqa: E402
from flops_utils.process_groups import free_port  # noqa: E402
from flops_utils.service_config import AggregatorConfig, MqttSettings, TrainingSettings  # noqa: E402
from manager.security.flower_pki import ProjectFlowerCa  # noqa: E402
from services.aggregator.privacy import privacy_plan  # noqa: E402
from services.aggregator.rounds import FederatedRounds  # noqa: E402
from services.aggregator.strategy_factory import round_strategy  # noqa: E402
from services.fl_runtime import protocol as p  # noqa: E402
from services.fl_runtime.link import frames  # noqa: E402
from services.fl_runtime.link.client import LinkClient, new_node_id  # noqa: E402
from services.fl_runtime.link.grid import LinkGrid  # noqa: E402
from services.fl_runtime.link.server import LinkServer  # noqa: E402
from services.learner.local_dp import local_dp_request, privatise  # noqa: E402
from tests.helpers import wait_until  # noqa: E402

CA = ProjectFlowerCa("p-dp-benchmark")
DELTA = 1e-5
CLIPPING_NORM = 2.0


def model_manager() -> Any:
    return importlib.import_module("model_manager").ModelManager()


def learner_handler(x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    manager = model_manager()
    manager.x_train, manager.y_train, manager.x_test, manager.y_test = x, y, x, y

    def handle(message: Message) -> Message:
        received = p.from_arrays(message.content.array_records[p.ARRAYS])
        manager.set_model_parameters([array.copy() for array in received])
        examples = manager.fit_model()
        fitted = manager.get_model_parameters()
        request = local_dp_request(message.content.config_records.get(p.CONFIG))
        if request is not None:
            fitted = privatise(received, fitted, *request)
        record = RecordDict({p.ARRAYS: p.to_arrays(fitted), p.METRICS: MetricRecord({p.NUM_EXAMPLES: examples})})
        return Message(record, reply_to=message)

    return handle


Outcome = tuple[float, float | None, float | None]


def run(privacy: dict[str, Any] | None, args: argparse.Namespace, seed: int) -> Outcome:
    """Final accuracy, noise multiplier and ε of one training."""
    digits = load_digits()
    x, x_test, y, y_test = train_test_split(digits.data / 16.0, digits.target, test_size=0.2, random_state=42)
    order = np.random.default_rng(seed).permutation(len(y))
    shares = np.array_split(order, args.learners)
    settings = TrainingSettings(
        training_rounds=args.rounds,
        min_available_clients=args.learners,
        min_fit_clients=args.min_fit,
        min_evaluate_clients=args.min_fit,
        privacy=privacy,
    )
    config = AggregatorConfig(
        project_id="bench",
        mqtt=MqttSettings(),
        training=settings,
        flavor="sklearn",
        app_dir=str(ROOT / "examples" / "sklearn_digits"),
        port=1,
        work_dir="/tmp",
    )
    server = LinkServer("127.0.0.1", free_port(), CA.for_superlink("127.0.0.1")).start()
    clients = [
        LinkClient(
            server.address,
            frames.Hello(new_node_id(), f"node-{i}"),
            learner_handler(x[s], y[s]),
            CA.for_supernode(f"node-{i}"),
        ).start()
        for i, s in enumerate(shares)
    ]
    try:
        grid = LinkGrid(server)
        wait_until(lambda: len(list(grid.get_node_ids())) == args.learners, 30, 0.05)
        strategy = round_strategy(config, "learners", min_fit=args.min_fit, min_evaluate=args.min_fit)
        rounds = FederatedRounds(
            grid,
            min_available=args.learners,
            min_fit=args.min_fit,
            min_evaluate=args.min_fit,
            timeout_s=120,
            strategy=strategy,
        )
        np.random.seed(seed)
        arrays = model_manager().get_model_parameters()
        for server_round in range(1, args.rounds + 1):
            result = rounds.train_round(server_round, arrays, {})
            assert result.arrays is not None
            arrays = result.arrays
    finally:
        for client in clients:
            client.stop()
        server.stop()
    judge = model_manager()
    judge.set_model_parameters(arrays)
    accuracy = float(judge.model.score(x_test, y_test))
    plan = privacy_plan(config, "learners")
    return accuracy, plan.noise_multiplier if plan else None, plan.epsilon_after(args.rounds) if plan else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=10)
    parser.add_argument("--min-fit", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 16.0, 64.0])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    cases: list[tuple[str, dict[str, Any] | None]] = [("none", None)]
    for mode in ("central", "local"):
        cases += [
            (mode, {"mode": mode, "clipping_norm": CLIPPING_NORM, "target_epsilon": eps, "delta": DELTA})
            for eps in args.epsilons
        ]
    rows, results = [], []
    for mode, privacy in cases:
        outcomes = [run(privacy, args, seed) for seed in range(args.seeds)]
        accuracy = float(np.mean([outcome[0] for outcome in outcomes]))
        noise, epsilon = outcomes[0][1], outcomes[0][2]
        results.append(
            {
                "mode": mode,
                "target_epsilon": privacy["target_epsilon"] if privacy else None,
                "epsilon": epsilon,
                "noise_multiplier": noise,
                "accuracy": accuracy,
            }
        )
        rows.append(
            [
                mode,
                "∞" if epsilon is None else f"{epsilon:.2f}",
                "-" if noise is None else f"{noise:.3f}",
                f"{accuracy:.3f}",
            ]
        )
    print(
        f"sklearn digits, {args.learners} learners, {args.min_fit} per round, {args.rounds} rounds, "
        f"clipping norm {CLIPPING_NORM}, δ={DELTA:g}, mean of {args.seeds} seeds"
    )
    print_table(["DP", "ε", "noise multiplier", "accuracy"], rows)
    print_json("dp_accuracy", {"results": results})


if __name__ == "__main__":
    main()
