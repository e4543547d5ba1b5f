"""SecAgg+ rounds (Flower's workflow and mod) over the real training link: the aggregate is the example-weighted
mean within quantisation error, the aggregator never receives a learner's parameters, a learner that drops
out after sharing its keys does not stop the round, and too many dropouts fail it with a reason."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp.strategy import FedProx

from flops_utils.aggregation import SecureAggregation
from flops_utils.process_groups import free_port
from manager.security.flower_pki import ProjectFlowerCa
from services.aggregator.rounds import FederatedRounds, RoundFailed
from services.aggregator.secure_aggregation import SecureFederatedRounds, secure_train_round
from services.fl_runtime import protocol as p
from services.fl_runtime.link import frames
from services.fl_runtime.link.client import LinkClient, new_node_id
from services.fl_runtime.link.grid import RUN_ID, LinkGrid
from services.fl_runtime.link.server import LinkServer
from services.learner.secagg_mod import secure_aggregation_mod
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

CA = ProjectFlowerCa("p-secagg")
SETTINGS = SecureAggregation(enabled=True, num_shares=4, reconstruction_threshold=2, clipping_range=4.0)
START = [np.zeros((2, 3)), np.zeros(3)]
LEARNERS = {
    "node-a": ([np.full((2, 3), 1.0), np.array([0.1, -0.2, 0.3])], 10),
    "node-b": ([np.full((2, 3), -1.5), np.array([0.2, 0.1, -0.3])], 30),
    "node-c": ([np.full((2, 3), 0.5), np.array([2.0, 0.3, 0.1])], 20),
    "node-d": ([np.full((2, 3), 3.0), np.array([-1.0, 1.0, 1.0])], 40),
}


def tolerance(settings: SecureAggregation, examples: list[int]) -> float:
    """How far SecAgg+'s aggregate may be from the exact weighted mean: each learner's update, scaled by its weight
    (examples / max_weight), is quantised with stochastic rounding to steps of 2 * clipping_range /
    quantization_range; the sum is divided by the summed weights (quantised too). Twice n steps over that sum."""
    step = 2 * settings.clipping_range / settings.quantization_range
    return 2 * len(examples) * step / (sum(examples) / settings.max_weight)


ATOL = tolerance(SETTINGS, [10, 30, 20, 40])  # 1.5e-4 (2 ** 22 levels over +-4, weights 0.01 to 0.04)


def weighted_mean(names: Iterable[str]) -> list[np.ndarray]:
    chosen = [LEARNERS[name] for name in names]
    total = sum(examples for _, examples in chosen)
    return [sum(arrays[i] * examples for arrays, examples in chosen) / total for i in range(len(START))]


ASKED_MU: set[float] = set()


def learner_app(name: str, fail_training: bool = False) -> ClientApp:
    """A FLOps-format ClientApp (arrays + metrics, as services.learner.client_app replies) under the SecAgg+ mod."""
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if fail_training:
            raise RuntimeError(f"{name} died while training")
        config = message.content.config_records[p.CONFIG]
        if p.PROXIMAL_MU in config:
            ASKED_MU.add(float(config[p.PROXIMAL_MU]))  # type: ignore[arg-type]
        arrays, examples = LEARNERS[name]
        metrics = MetricRecord({p.NUM_EXAMPLES: examples, p.LOSS: 0.5, p.ACCURACY: 0.9})
        info = ConfigRecord({p.NODE: name})
        return Message(RecordDict({p.ARRAYS: p.to_arrays(arrays), p.METRICS: metrics, p.INFO: info}), reply_to=message)

    return app


class RecordingGrid(LinkGrid):
    """The aggregator's grid, keeping every reply it receives."""

    def __init__(self, server: LinkServer) -> None:
        super().__init__(server)
        self.received: list[Message] = []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.received.extend(replies)
        return replies


@pytest.fixture()
def server() -> Iterator[LinkServer]:
    link = LinkServer("127.0.0.1", free_port(), CA.for_superlink("127.0.0.1")).start()
    try:
        yield link
    finally:
        link.stop()


def handler_of(app: ClientApp, context: Context):  # type: ignore[no-untyped-def]
    """The app with one Context for the node's life (the mod keeps its SecAgg+ state in it), as client_host does."""
    return lambda message: app(message, context)


def start_learners(server: LinkServer, failing: tuple[str, ...] = ()) -> list[LinkClient]:
    clients = []
    for name in LEARNERS:
        node_id = new_node_id()
        app = learner_app(name, fail_training=name in failing)
        context = Context(run_id=RUN_ID, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
        clients.append(
            LinkClient(
                server.address, frames.Hello(node_id, name), handler_of(app, context), CA.for_supernode(name)
            ).start()
        )
    for client in clients:
        assert client.wait_connected(10)
    return clients


def run_round(server: LinkServer) -> tuple[RecordingGrid, object]:
    clients = start_learners(server)
    try:
        grid = RecordingGrid(server)
        assert wait_until(lambda: len(list(grid.get_node_ids())) == len(LEARNERS), 10, 0.05)
        result = secure_train_round(grid, sorted(grid.get_node_ids()), START, 1, {}, SETTINGS, timeout_s=30)
        return grid, result
    finally:
        for client in clients:
            client.stop()


def test_the_secure_aggregate_is_the_weighted_mean_and_no_update_is_seen_in_the_clear(server: LinkServer) -> None:
    grid, result = run_round(server)
    assert result is not None
    expected = weighted_mean(LEARNERS)
    for got, want in zip(result.arrays, expected, strict=True):  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, want, atol=ATOL)
    assert sorted(int(r[p.NUM_EXAMPLES]) for r in result.replies) == [10, 20, 30, 40]  # type: ignore[attr-defined]

    masked = []
    for reply in grid.received:
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values()), "parameters in the clear"
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.MASKED_PARAMETERS in configs:
            masked.append([bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]])  # type: ignore[union-attr]
    assert len(masked) == len(LEARNERS)
    for arrays, _ in LEARNERS.values():
        plain = quantize(arrays, SETTINGS.clipping_range, SETTINGS.quantization_range)
        for vector in masked:  # no masked vector (weight factor first) is close to a learner's quantised parameters
            pairs = zip(vector[1:], plain, strict=True)
            same = [np.isclose(v.astype(float), q.astype(float), atol=1000).mean() for v, q in pairs]
            assert max(same) < 0.5, same


def secure_rounds(server: LinkServer, failing: tuple[str, ...], lost: list[str], strategy=None):  # type: ignore[no-untyped-def]
    grid = RecordingGrid(server)
    assert wait_until(lambda: len(list(grid.get_node_ids())) == len(LEARNERS), 10, 0.05)
    return grid, SecureFederatedRounds(
        grid,
        min_available=4,
        min_fit=3,
        min_evaluate=3,
        timeout_s=30,
        on_lost=lambda name, why: lost.append(why),
        strategy=strategy,
        secure=SETTINGS,
    )


def test_a_learner_that_drops_out_after_sharing_its_keys_does_not_stop_the_round(server: LinkServer) -> None:
    """Through SecureFederatedRounds, as the aggregator runs it: the round completes with the other three (each
    learner's mask rebuilt from 2 shares), names its participants, and reports the dropped learner as lost."""
    clients = start_learners(server, failing=("node-d",))
    try:
        lost: list[str] = []
        grid, rounds = secure_rounds(server, ("node-d",), lost, strategy=FedProx(proximal_mu=0.2))
        result = rounds.train_round(1, START, {})
    finally:
        for client in clients:
            client.stop()
    assert isinstance(rounds, FederatedRounds)
    assert result.arrays is not None
    for got, want in zip(result.arrays, weighted_mean(["node-a", "node-b", "node-c"]), strict=True):
        np.testing.assert_allclose(got, want, atol=ATOL)
    assert sorted(result.participants) == ["node-a", "node-b", "node-c"] and result.num_examples == 60
    assert lost == ["round 1: learner node-d lost (did not complete the SecAgg+ round)"], lost
    assert any(reply.has_error() and "node-d died while training" in reply.error.reason for reply in grid.received)
    assert {0.2} == ASKED_MU  # FedProx's mu reaches the learners' train messages under SecAgg+ too


def test_too_many_dropouts_fail_the_round_with_a_reason(server: LinkServer) -> None:
    clients = start_learners(server, failing=("node-c", "node-d"))
    try:
        lost: list[str] = []
        _, rounds = secure_rounds(server, ("node-c", "node-d"), lost)
        with pytest.raises(RoundFailed) as failed:
            rounds.train_round(1, START, {})
    finally:
        for client in clients:
            client.stop()
    assert "secure aggregation failed: 2 of 4 learners completed it (at least 3 needed" in str(failed.value)


USER_MODEL = """
import numpy as np
from flops_utils import ModelManager as Base

MU_SEEN = []  # every instance's fit contexts (learners in one test process may each build their own manager)


class ModelManager(Base):
    def __init__(self):
        self.w = np.zeros(3)

    def set_model_data(self):
        pass

    def get_model(self):
        return self.w

    def get_model_parameters(self):
        return [self.w.copy()]

    def set_model_parameters(self, parameters):
        self.w = np.asarray(parameters[0], dtype=float)

    def fit_model(self):
        MU_SEEN.append(self.fit_context.proximal_mu)
        self.w = self.fit_context.global_parameters[0] + 1.0
        return 10

    def evaluate_model(self):
        return 0.25, 0.75, 5
"""


def test_the_flops_client_app_trains_under_secagg_and_answers_plain_rounds_too(server: LinkServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The learners' real ClientApp (services.learner.client_app, hosted as client_host does): SecAgg+ rounds go
    through its mod, plain train and evaluate messages pass through unchanged."""
    import sys

    import services.learner.client_app as client_app
    from services.fl_runtime.client_host import client_app_handler

    (tmp_path / "model_manager.py").write_text(USER_MODEL)
    sys.modules.pop("model_manager", None)
    client_app._manager = None  # one ModelManager per process: the three learners share the module here
    clients = []
    for name in ("node-a", "node-b", "node-c"):
        node_id = new_node_id()
        node_config = {p.NODE_APP_DIR_KEY: str(tmp_path), p.NODE_NAME_KEY: name, p.NODE_ROLE_KEY: "learner"}
        handler = client_app_handler(node_config, node_id)
        clients.append(LinkClient(server.address, frames.Hello(node_id, name), handler, CA.for_supernode(name)).start())
    try:
        grid = LinkGrid(server)
        assert wait_until(lambda: len(list(grid.get_node_ids())) == 3, 10, 0.05)
        secure = SecureAggregation(enabled=True, num_shares=3, reconstruction_threshold=2)
        rounds = SecureFederatedRounds(
            grid,
            min_available=3,
            min_fit=3,
            min_evaluate=3,
            timeout_s=30,
            strategy=FedProx(proximal_mu=0.4),
            secure=secure,
        )
        trained = rounds.train_round(1, [np.zeros(3)], {})
        assert trained.arrays is not None
        np.testing.assert_allclose(trained.arrays[0], np.ones(3), atol=tolerance(secure, [10, 10, 10]))  # 1.5e-3
        assert sorted(trained.participants) == ["node-a", "node-b", "node-c"] and trained.num_examples == 30
        assert trained.loss == 0.25 and trained.accuracy == 0.75  # the post-fit metrics, in the clear
        evaluated = rounds.evaluate_round(1, trained.arrays, {})
        assert evaluated.accuracy == 0.75 and len(evaluated.participants) == 3
        plain = FederatedRounds(grid, min_available=3, min_fit=3, min_evaluate=3, timeout_s=30).train_round(
            2, trained.arrays, {}
        )
        assert plain.arrays is not None
        np.testing.assert_allclose(plain.arrays[0], trained.arrays[0] + 1.0)
        assert sys.modules["model_manager"].MU_SEEN == [0.4] * 3 + [0.0] * 3  # FedProx's mu, then plain rounds
    finally:
        for client in clients:
            client.stop()
        client_app._manager = None
        sys.modules.pop("model_manager", None)
