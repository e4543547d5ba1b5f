"""Flower without FLOps, as anchors for ``round_overhead.py``: the same model and data, two runtimes.

The model is the sklearn example's own ``ModelManager`` (``examples/sklearn_digits``: LogisticRegression,
10 lbfgs iterations per round, warm start); the data is the very partition FLOps's mock data provider pushes to
each learner (``manager.mocks.split_dataset("digits", n)``: sklearn's digits scaled to [0, 1], iid,
seed 0), split 80/20 into train and test like the example's ``DigitsData``. Every train call sets
the parameters, fits (timed: ``fit-seconds``), evaluates locally and replies, as FLOps's learners do;
no separate evaluation round.

- ``legacy``: Flower's deprecated gRPC bidirectional streaming (``flwr.compat`` ``start_server`` /
  ``start_client``), one server and one client process per learner. A benchmark anchor only.
- ``deployment``: Flower's deployment engine with its defaults: ``flower-superlink``, one
  ``flower-supernode`` per learner (a fresh ClientApp process per message), the run submitted with
  ``flwr run``; the ServerApp uses the Message-API ``FedAvg``.

Each writes ``{"rounds": [{"round", "wall_s", "slowest_fit_s", "done_at"}]}`` (``done_at``: the
wall-clock time the round's model was aggregated) where ``wall_s`` runs from
the round's train messages being ready (the nodes sampled) to the aggregated model, like FLOps's
``round_seconds``.

    python -m benchmarks.flower_anchors legacy-server|legacy-client ...   (started by run_legacy)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = REPO_ROOT / "examples" / "sklearn_digits"
NUM_EXAMPLES = "num-examples"  # the Message-API FedAvg's default weighting key
FIT_SECONDS = "fit-seconds"
TEST_FRACTION, SEED = 0.2, 42  # as examples/sklearn_digits/data_manager.py


# -- the model and data, shared by both anchors -----------------------------------
# Appended to the example's model_manager.py for the padded variant (FLOps's copy of the repo uses it
# too): the model carries one more float32 array of ``PAD`` values, sent and averaged every round.
PADDING_SOURCE = """

PAD = {pad}
_Unpadded = ModelManager


class ModelManager(_Unpadded):  # type: ignore[no-redef]
    \"\"\"The example's model plus PAD float32 parameters that ride along (a bigger model to move).\"\"\"

    def __init__(self) -> None:
        super().__init__()
        self.padding = np.zeros(PAD, dtype=np.float32)

    def get_model_parameters(self) -> list[np.ndarray]:
        return [*super().get_model_parameters(), self.padding.copy()]

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        super().set_model_parameters(list(parameters[:2]))
        self.padding = np.asarray(parameters[2], dtype=np.float32)
"""
DIGITS_PARAMETERS = 650  # coef_ 10x64 + intercept_ 10


def padding_for(parameters: int) -> int:
    """Float32 values to add so the model has ``parameters`` in all (0: the example as it is)."""
    return max(0, parameters - DIGITS_PARAMETERS) if parameters else 0


def padded_example(parameters: int, directory: Path) -> Path:
    """A git repository holding the sklearn example with a model of ``parameters`` values."""
    from tests.example_repos import commit_all, example_repo

    repo = Path(example_repo("sklearn_digits", directory))
    source = repo / "model_manager.py"
    source.write_text(source.read_text() + PADDING_SOURCE.format(pad=padding_for(parameters)))
    commit_all(repo, f"pad the model to {parameters} parameters")
    return repo


def model_class(pad: int) -> Any:
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    import model_manager as example  # type: ignore[import-not-found]

    if not pad:
        return example.ModelManager
    namespace = dict(vars(example))
    exec(PADDING_SOURCE.format(pad=pad), namespace)  # the same class FLOps's padded repo defines
    return namespace["ModelManager"]


def model_manager(partition: int, partitions: int, pad: int = 0) -> Any:
    """The example's ModelManager (``pad`` extra parameters) holding this partition's train and test split."""
    from sklearn.model_selection import train_test_split

    from manager.mocks import split_dataset

    x, y = split_dataset("digits", partitions)[partition]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SEED)
    manager = model_class(pad)()
    manager.x_train, manager.y_train, manager.x_test, manager.y_test = x_train, y_train, x_test, y_test
    return manager


def initial_parameters(pad: int = 0) -> list[np.ndarray]:
    return list(model_class(pad)().get_model_parameters())


def train_step(manager: Any, parameters: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, float]]:
    """What a FLOps learner does with a train message: set, fit (timed), evaluate; the reply's parts."""
    manager.set_model_parameters(parameters)
    started = time.perf_counter()
    examples = manager.fit_model()
    fit_seconds = time.perf_counter() - started
    loss, accuracy, _ = manager.evaluate_model()
    metrics = {NUM_EXAMPLES: int(examples), FIT_SECONDS: fit_seconds, "loss": loss, "accuracy": accuracy}
    return manager.get_model_parameters(), metrics


def write_rounds(path: str, rounds: list[dict[str, float]]) -> None:
    Path(path).write_text(json.dumps({"rounds": rounds}))


# -- legacy gRPC streaming (flwr.compat) --------------------------------------------
def legacy_server(port: int, rounds: int, learners: int, out: str, pad: int = 0) -> None:
    from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg

    timings: list[dict[str, float]] = []
    started: dict[int, float] = {}

    class TimedFedAvg(FedAvg):
        def configure_fit(
            self, server_round: int, parameters: Parameters, client_manager: ClientManager
        ) -> list[tuple[ClientProxy, FitIns]]:
            instructions = super().configure_fit(server_round, parameters, client_manager)  # waits for the clients
            started[server_round] = time.perf_counter()
            return instructions

        def aggregate_fit(
            self,
            server_round: int,
            results: list[tuple[ClientProxy, FitRes]],
            failures: list[tuple[ClientProxy, FitRes] | BaseException],
        ) -> tuple[Parameters | None, dict[str, Scalar]]:
            aggregated = super().aggregate_fit(server_round, results, failures)
            wall = time.perf_counter() - started[server_round]
            slowest = max(float(fit.metrics[FIT_SECONDS]) for _, fit in results)
            timings.append({"round": server_round, "wall_s": wall, "slowest_fit_s": slowest, "done_at": time.time()})
            return aggregated

    strategy = TimedFedAvg(
        fraction_evaluate=0.0,
        min_fit_clients=learners,
        min_available_clients=learners,
        initial_parameters=ndarrays_to_parameters(initial_parameters(pad)),
    )
    start_server(server_address=f"127.0.0.1:{port}", config=ServerConfig(num_rounds=rounds), strategy=strategy)
    write_rounds(out, timings)


def legacy_client(port: int, partition: int, partitions: int, pad: int = 0) -> None:
    from flwr.client import NumPyClient
    from flwr.compat.client.app import start_client

    manager = model_manager(partition, partitions, pad)

    class DigitsClient(NumPyClient):
        def fit(self, parameters: list[np.ndarray], config: Any) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            arrays, metrics = train_step(manager, parameters)
            return arrays, int(metrics[NUM_EXAMPLES]), metrics

    start_client(server_address=f"127.0.0.1:{port}", client=DigitsClient().to_client(), insecure=True)


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.flower_anchors", *args]


def run_legacy(
    rounds: int, learners: int, work_dir: Path, timeout: float = 600.0, parameters: int = 0
) -> list[dict[str, float]]:
    """The legacy anchor's per-round timings (server and clients as local processes)."""
    from flops_utils.process_groups import free_port
    from services.fl_runtime.processes import child_environment

    port, out = free_port(), work_dir / "legacy-rounds.json"
    env = child_environment({"PYTHONPATH": str(REPO_ROOT)})
    logs = [(work_dir / f"legacy-{name}.log").open("wb") for name in ["server", *map(str, range(learners))]]
    pad = str(padding_for(parameters))
    server = subprocess.Popen(
        _module("legacy-server", str(port), str(rounds), str(learners), str(out), pad),
        cwd=REPO_ROOT,
        env=env,
        stdout=logs[0],
        stderr=subprocess.STDOUT,
    )
    clients = [
        subprocess.Popen(
            _module("legacy-client", str(port), str(i), str(learners), pad),
            cwd=REPO_ROOT,
            env=env,
            stdout=logs[i + 1],
            stderr=subprocess.STDOUT,
        )
        for i in range(learners)
    ]
    try:
        code = server.wait(timeout)
        if code != 0 or not out.exists():
            raise RuntimeError(f"legacy server exited {code}: see {work_dir / 'legacy-server.log'}")
        return list(json.loads(out.read_text())["rounds"])
    finally:
        for process in [server, *clients]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        for log in logs:
            log.close()


# -- Flower's deployment engine (Message API) ---------------------------------------
def _server_app() -> Any:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    app = ServerApp()

    class TimedFedAvg(FedAvg):
        timings: list[dict[str, float]]
        started: dict[int, float]

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
            messages = list(super().configure_train(server_round, arrays, config, grid))  # waits for the nodes
            self.started[server_round] = time.perf_counter()
            return messages

        def aggregate_train(self, server_round: int, replies: Any) -> tuple[ArrayRecord | None, MetricRecord | None]:
            replies = list(replies)
            aggregated = super().aggregate_train(server_round, replies)
            wall = time.perf_counter() - self.started[server_round]
            slowest = max(float(m.content["metrics"][FIT_SECONDS]) for m in replies if m.has_content())  # type: ignore[arg-type]
            done = {"round": server_round, "wall_s": wall, "slowest_fit_s": slowest, "done_at": time.time()}
            self.timings.append(done)
            return aggregated

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        learners = int(context.run_config["learners"])
        strategy = TimedFedAvg(fraction_evaluate=0.0, min_train_nodes=learners, min_available_nodes=learners)
        strategy.timings, strategy.started = [], {}
        initial = initial_parameters(int(context.run_config.get("pad", 0)))
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=int(context.run_config["rounds"]))
        write_rounds(str(context.run_config["timings-file"]), strategy.timings)

    _ = Message  # the ServerApp only forwards Messages
    return app


def _client_app() -> Any:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        # The default isolation starts a fresh ClientApp process per message: the data is loaded every round.
        node = context.node_config
        manager = model_manager(
            int(node["partition-id"]), int(node["num-partitions"]), int(context.run_config.get("pad", 0))
        )
        parameters = message.content["arrays"].to_numpy_ndarrays()  # type: ignore[union-attr]
        arrays, metrics = train_step(manager, parameters)
        content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})  # type: ignore[arg-type]
        return Message(content=content, reply_to=message)

    return app


APP_MODULE = '''"""The deployment-engine anchor's Flower app: the components live in benchmarks.flower_anchors."""
from benchmarks.flower_anchors import _client_app, _server_app

server_app = _server_app()
client_app = _client_app()
'''
APP_PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "flops-overhead-anchor"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "flops"

[tool.flwr.app.components]
serverapp = "anchor_app:server_app"
clientapp = "anchor_app:client_app"

[tool.flwr.app.config]
rounds = 2
learners = 2
pad = 0
timings-file = ""
"""


def run_deployment(
    rounds: int, learners: int, work_dir: Path, timeout: float = 900.0, parameters: int = 0
) -> list[dict[str, float]]:
    """The deployment-engine anchor's per-round timings (SuperLink, SuperNodes, ``flwr run``, defaults)."""
    from flops_utils.process_groups import free_port
    from services.fl_runtime.flower import FlowerControl, SuperLink
    from services.fl_runtime.processes import ManagedProcess, child_environment, flower_binary

    app_dir = work_dir / "anchor-app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT)
    (app_dir / "anchor_app.py").write_text(APP_MODULE)
    out = work_dir / "deployment-rounds.json"
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO_ROOT)  # the SuperLink's ServerApp processes inherit it
    superlink = SuperLink("127.0.0.1", free_port(), work_dir)
    nodes: list[ManagedProcess] = []
    try:
        superlink.start()
        for i in range(learners):
            home = work_dir / f"supernode-{i}-home"
            home.mkdir(exist_ok=True)
            node_config = f"partition-id={i} num-partitions={learners}"
            command = [
                flower_binary("flower-supernode"),
                "--insecure",
                "--superlink",
                superlink.address,
                "--port",
                str(free_port()),
                "--node-config",
                node_config,
            ]
            env = child_environment({"FLWR_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)})
            nodes.append(ManagedProcess(f"supernode-{i}", command, work_dir / f"supernode-{i}.log", env).start())
        control = FlowerControl(superlink.address, work_dir)
        run_config = {"rounds": rounds, "learners": learners, "pad": padding_for(parameters), "timings-file": str(out)}
        run_id = control.start_run(str(app_dir), run_config, work_dir)
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = control.run_status(run_id)
            if status.startswith("finished"):
                break
            time.sleep(2.0)
        if status != "finished:completed" or not out.exists():
            raise RuntimeError(f"deployment-engine run {run_id} {status}: see the logs in {work_dir}")
        return list(json.loads(out.read_text())["rounds"])
    finally:
        for node in nodes:
            node.stop()
        superlink.stop()
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("legacy-server")
    for name in ("port", "rounds", "learners"):
        server.add_argument(name, type=int)
    server.add_argument("out")
    server.add_argument("pad", type=int, nargs="?", default=0)
    client = commands.add_parser("legacy-client")
    for name in ("port", "partition", "partitions"):
        client.add_argument(name, type=int)
    client.add_argument("pad", type=int, nargs="?", default=0)
    for name in ("legacy", "deployment"):
        run = commands.add_parser(name, help=f"run the {name} anchor alone and print its rounds")
        run.add_argument("--rounds", type=int, default=3)
        run.add_argument("--learners", type=int, default=2)
        run.add_argument("--parameters", type=int, default=0, help="pad the model to this many (0: as it is)")
    args = parser.parse_args()
    if args.command == "legacy-server":
        legacy_server(args.port, args.rounds, args.learners, args.out, args.pad)
    elif args.command == "legacy-client":
        legacy_client(args.port, args.partition, args.partitions, args.pad)
    else:
        runner = run_legacy if args.command == "legacy" else run_deployment
        with tempfile.TemporaryDirectory(prefix=f"flops-anchor-{args.command}-") as work:
            print(json.dumps(runner(args.rounds, args.learners, Path(work), parameters=args.parameters)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
