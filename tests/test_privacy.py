"""Differential privacy: the SLA block, the mechanisms as they run over the real training link, and the ε.

The mechanism tests run the round loop (FederatedRounds) with the strategy ``round_strategy`` builds, over a
LinkServer with LinkClients in this process; the learners' handlers stand in for user code (their update is
chosen by the test) and, for local DP, apply the same function the FLOps ClientApp applies to its reply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import dp_accounting
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from pydantic import ValidationError

from flops_utils.privacy import PrivacySettings
from flops_utils.process_groups import free_port
from flops_utils.service_config import AggregatorConfig, MqttSettings, TrainingSettings
from manager.security.flower_pki import ProjectFlowerCa
from manager.sla import ProjectSLA, describe_validation_error, sla_to_training_settings
from services.aggregator.privacy import (
    CentralAdaptiveClipping,
    CentralFixedClipping,
    LocalDpRequest,
    privacy_plan,
    rounds_to_run,
    with_privacy,
)
from services.aggregator.rounds import FederatedRounds
from services.aggregator.strategy_factory import round_strategy
from services.fl_runtime import protocol as p
from services.fl_runtime.link import frames
from services.fl_runtime.link.client import LinkClient, new_node_id
from services.fl_runtime.link.grid import LinkGrid
from services.fl_runtime.link.server import LinkServer
from services.learner.local_dp import local_dp_request, privatise
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(180)

CA = ProjectFlowerCa("p-privacy")
SIZE = 4000


def sla(privacy: dict[str, object], **training: object) -> ProjectSLA:
    return ProjectSLA.model_validate(
        {
            "ml_repo_url": "https://git.example.org/ml.git",
            "ml_model_flavor": "sklearn",
            "training_configuration": {**training, "privacy": privacy},
        }
    )


def config(privacy: dict[str, object], *, cluster: str | None = None, **training: object) -> AggregatorConfig:
    settings = TrainingSettings.model_validate({**training, "privacy": privacy})
    return AggregatorConfig(
        project_id="p",
        mqtt=MqttSettings(),
        training=settings,
        flavor="sklearn",
        app_dir="/nonexistent",
        port=1,
        work_dir="/tmp",
        cluster=cluster,
        role="cluster" if cluster else "classic",
    )


def sla_errors(privacy: dict[str, object], **training: object) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as error:
        sla(privacy, **training)
    return describe_validation_error(error.value)


# -- the SLA block --------------------------------------------------------------------------------------------
def test_the_privacy_block_reaches_the_aggregators_settings() -> None:
    project = sla({"clipping_norm": 1, "noise_multiplier": 1.1, "budget": {"epsilon": 3, "delta": 1e-5}})
    privacy = sla_to_training_settings(project).privacy
    assert privacy is not None and privacy.clipping_norm == 1.0 and privacy.noise_multiplier == 1.1
    assert privacy.budget is not None and privacy.budget.epsilon == 3.0 and privacy.effective_delta == 1e-5


@pytest.mark.parametrize(
    ("privacy", "training", "field", "message"),
    [
        ({"clipping_norm": 1}, {}, "training_configuration.privacy", "noise_multiplier or target_epsilon is required"),
        (
            {"clipping_norm": -1, "noise_multiplier": 1},
            {},
            "training_configuration.privacy.clipping_norm",
            "greater than 0",
        ),
        (
            {"clipping_norm": 1, "noise_multiplier": 1, "target_epsilon": 2},
            {},
            "training_configuration.privacy",
            "give noise_multiplier or target_epsilon, not both",
        ),
        (
            {"mode": "local", "clipping_norm": 1, "noise_multiplier": 1, "target_quantile": 0.5},
            {},
            "training_configuration.privacy",
            "target_quantile (adaptive clipping) works in central mode only",
        ),
        (
            {"mode": "federated", "clipping_norm": 1, "noise_multiplier": 1},
            {},
            "training_configuration.privacy.mode",
            "'central' or 'local'",
        ),
        (
            {"clipping_norm": 1, "noise_multiplier": 1, "budget": {"epsilon": 0}},
            {},
            "training_configuration.privacy.budget.epsilon",
            "greater than 0",
        ),
        (
            {"clipping_norm": 1, "noise_multiplier": 1, "clusters": {"a": {"noise_multiplier": 2}}},
            {},
            "training_configuration.privacy",
            "clusters and root apply to hierarchical mode only",
        ),
        (
            {"clusters": {"a": {"clipping_norm": 1}}},
            {"mode": "hierarchical"},
            "training_configuration.privacy",
            "clusters.a: noise_multiplier or target_epsilon is required",
        ),
        (
            {"clipping_norm": 1, "noise_multiplier": 1, "root": {"mode": "local"}},
            {"mode": "hierarchical"},
            "training_configuration.privacy",
            "root: the root's DP is central",
        ),
        (
            {"clipping_norm": 1, "noise_multiplier": 1, "epsilon": 2},
            {},
            "training_configuration.privacy.epsilon",
            "unknown field",
        ),
    ],
)
def test_a_bad_privacy_block_is_refused_naming_its_field(
    privacy: dict[str, object], training: dict[str, object], field: str, message: str
) -> None:
    errors = sla_errors(privacy, **training)
    assert any(error["field"] == field and message in error["message"] for error in errors), errors


def test_cluster_overrides_merge_with_the_project_wide_fields() -> None:
    privacy = PrivacySettings.model_validate(
        {
            "clipping_norm": 1.0,
            "noise_multiplier": 1.0,
            "clusters": {"a": {"noise_multiplier": 3.0}, "b": {"mode": "local", "target_epsilon": 8.0}},
        }
    )
    a, b, c = privacy.mechanism("a"), privacy.mechanism("b"), privacy.mechanism("c")
    assert (a.effective_mode, a.clipping_norm, a.noise_multiplier) == ("central", 1.0, 3.0)
    assert (b.effective_mode, b.noise_multiplier, b.target_epsilon) == ("local", None, 8.0)
    assert (c.effective_mode, c.noise_multiplier) == ("central", 1.0)


# -- ε ----------------------------------------------------------------------------------------------------------
def independent_epsilon(noise: float, rate: float, rounds: int, delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(noise)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(rate, event) if rate < 1 else event, rounds)
    return float(accountant.get_epsilon(delta))


def test_epsilon_is_the_rdp_accountants_for_the_sampling_rate_and_rounds() -> None:
    aggregator = config(
        {"clipping_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5},
        training_rounds=20,
        min_available_clients=10,
        min_fit_clients=3,
    )
    plan = privacy_plan(aggregator, "learners")
    assert plan is not None and plan.sampling_rate == pytest.approx(0.3)
    for rounds in (1, 7, 20):
        assert plan.epsilon_after(rounds) == pytest.approx(independent_epsilon(1.1, 0.3, rounds, 1e-5), rel=1e-9)
    assert plan.epsilon_after(20) > plan.epsilon_after(7) > plan.epsilon_after(1) > 0
    local = privacy_plan(
        config(
            {"mode": "local", "clipping_norm": 1.0, "noise_multiplier": 1.1},
            training_rounds=20,
            min_available_clients=10,
            min_fit_clients=3,
        ),
        "learners",
    )
    assert local is not None and local.sampling_rate == 1.0  # the aggregator sees who took part: no amplification
    assert local.epsilon_after(20) == pytest.approx(independent_epsilon(1.1, 1.0, 20, 1e-5), rel=1e-9)


def test_a_target_epsilon_gives_the_noise_that_spends_it_over_the_planned_rounds() -> None:
    aggregator = config(
        {"clipping_norm": 1.0, "target_epsilon": 4.0, "delta": 1e-5},
        training_rounds=10,
        min_available_clients=4,
        min_fit_clients=2,
    )
    plan = privacy_plan(aggregator, "learners")
    assert plan is not None and plan.noise_multiplier > 0
    assert independent_epsilon(plan.noise_multiplier, 0.5, 10, 1e-5) == pytest.approx(4.0, rel=1e-3)
    assert independent_epsilon(plan.noise_multiplier * 0.95, 0.5, 10, 1e-5) > 4.0  # the smallest such noise


def test_the_budget_allows_the_rounds_whose_epsilon_fits() -> None:
    aggregator = config(
        {"clipping_norm": 1.0, "noise_multiplier": 3.0, "budget": {"epsilon": 5.0, "delta": 1e-5}},
        training_rounds=50,
        min_available_clients=2,
        min_fit_clients=2,
    )
    plan = privacy_plan(aggregator, "learners")
    assert plan is not None
    allowed = rounds_to_run(plan, 50)
    assert allowed == 9  # ε after 9 rounds ~4.8, after 10 ~5.02
    assert independent_epsilon(3.0, 1.0, allowed, 1e-5) <= 5.0 < independent_epsilon(3.0, 1.0, allowed + 1, 1e-5)
    tiny = privacy_plan(
        config({"clipping_norm": 1.0, "noise_multiplier": 0.3, "budget": {"epsilon": 0.01, "delta": 1e-5}}), "learners"
    )
    with pytest.raises(ValueError, match=r"privacy budget ε=0.01 is below the ε of one round"):
        rounds_to_run(tiny, 3)


def test_round_strategy_wraps_the_levels_strategy_in_flowers_dp_wrappers() -> None:
    central = round_strategy(
        config({"clipping_norm": 1.0, "noise_multiplier": 1.0}), "learners", min_fit=1, min_evaluate=1
    )
    adaptive = round_strategy(
        config({"clipping_norm": 1.0, "noise_multiplier": 1.0, "target_quantile": 0.5}),
        "learners",
        min_fit=1,
        min_evaluate=1,
    )
    local = round_strategy(
        config({"mode": "local", "clipping_norm": 1.0, "noise_multiplier": 1.0}), "learners", min_fit=1, min_evaluate=1
    )
    plain = round_strategy(
        config({"clusters": {"a": {"clipping_norm": 1.0, "noise_multiplier": 1.0}}}, mode="hierarchical"),
        "learners",
        min_fit=1,
        min_evaluate=1,
    )
    assert isinstance(central, CentralFixedClipping) and isinstance(adaptive, CentralAdaptiveClipping)
    assert isinstance(local, LocalDpRequest) and type(plain) is FedAvg  # a cluster with no DP of its own
    in_a = round_strategy(
        config({"clusters": {"a": {"clipping_norm": 2.0, "noise_multiplier": 1.0}}}, mode="hierarchical", cluster="a"),
        "learners",
        min_fit=1,
        min_evaluate=1,
    )
    assert isinstance(in_a, CentralFixedClipping) and in_a.clipping_norm == 2.0


# -- the mechanisms over the training link ---------------------------------------------------------------------
class RecordingFedAvg(FedAvg):
    """FedAvg that keeps the updates it is given to average (after the DP wrapper's clipping)."""

    def __init__(self, min_fit: int) -> None:
        super().__init__(min_train_nodes=min_fit, min_evaluate_nodes=min_fit, min_available_nodes=min_fit)
        self.updates: list[list[np.ndarray]] = []
        self.current: list[np.ndarray] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: object
    ) -> Iterable[Message]:
        self.current = p.from_arrays(arrays)
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[arg-type]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        listed = list(replies)
        for reply in listed:
            arrays = p.from_arrays(reply.content.array_records[p.ARRAYS])
            self.updates.append([a.astype(np.float64) - c for a, c in zip(arrays, self.current, strict=True)])
        return super().aggregate_train(server_round, listed)


def norm(update: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(array))) for array in update))


def learner(step: np.ndarray, examples: int, local_dp: bool = False):  # type: ignore[no-untyped-def]
    """A learner whose fit adds ``step`` to the model; with ``local_dp`` it treats its reply as the ClientApp
    does (services.learner.local_dp)."""

    def handle(message: Message) -> Message:
        received = p.from_arrays(message.content.array_records[p.ARRAYS])
        fitted = [received[0] + step.astype(received[0].dtype)]
        request = local_dp_request(message.content.config_records.get(p.CONFIG))
        if local_dp and request is not None:
            fitted = privatise(received, fitted, *request)
        metrics = MetricRecord({p.NUM_EXAMPLES: examples})
        return Message(RecordDict({p.ARRAYS: p.to_arrays(fitted), p.METRICS: metrics}), reply_to=message)

    return handle


@pytest.fixture()
def link() -> Iterator[tuple[LinkServer, list[LinkClient]]]:
    server = LinkServer("127.0.0.1", free_port(), CA.for_superlink("127.0.0.1"), heartbeat_patience_s=5).start()
    started: list[LinkClient] = []
    try:
        yield server, started
    finally:
        for client in started:
            client.stop()
        server.stop()


def join(link: tuple[LinkServer, list[LinkClient]], handlers: list) -> LinkGrid:  # type: ignore[type-arg]
    server, started = link
    for index, handler in enumerate(handlers):
        name = f"node-{index}"
        client = LinkClient(
            server.address, frames.Hello(new_node_id(), name), handler, CA.for_supernode(name), heartbeat_s=0.5
        ).start()
        started.append(client)
    grid = LinkGrid(server)
    assert wait_until(lambda: len(list(grid.get_node_ids())) == len(handlers), 15, 0.05)
    return grid


def rounds_over(grid: LinkGrid, strategy: object, n: int) -> FederatedRounds:
    return FederatedRounds(grid, min_available=n, min_fit=n, min_evaluate=n, timeout_s=30, strategy=strategy)  # type: ignore[arg-type]


def test_central_dp_clips_every_update_and_averages_them_equally(link) -> None:  # type: ignore[no-untyped-def]
    steps = [np.full(SIZE, 0.5), np.full(SIZE, -0.01), np.linspace(-3, 3, SIZE)]  # norms ~31.6, 0.63, ~110
    grid = join(link, [learner(step, examples) for step, examples in zip(steps, (10, 1000, 5), strict=True)])
    recording = RecordingFedAvg(3)
    aggregator = config({"clipping_norm": 2.0, "noise_multiplier": 0.0}, min_available_clients=3, min_fit_clients=3)
    strategy = with_privacy(recording, aggregator, "learners", min_fit=3)
    start = [np.zeros(SIZE, dtype=np.float64)]
    result = rounds_over(grid, strategy, 3).train_round(1, start, {})
    assert len(recording.updates) == 3
    norms = sorted(norm(update) for update in recording.updates)
    assert norms[0] == pytest.approx(norm([steps[1]]), rel=1e-6)  # small enough: untouched
    assert norms[1] == pytest.approx(2.0, rel=1e-6) and norms[2] == pytest.approx(2.0, rel=1e-6)
    assert all(value <= 2.0 + 1e-9 for value in norms)
    expected = sum(update[0] for update in recording.updates) / 3  # equal weights, whatever the example counts
    assert result.arrays is not None
    np.testing.assert_allclose(result.arrays[0], expected, atol=1e-9)


@pytest.mark.parametrize(("n", "noise", "clip"), [(3, 1.5, 2.0), (2, 0.8, 1.0)])
def test_central_dp_noise_has_std_noise_multiplier_times_clip_over_n(link, n: int, noise: float, clip: float) -> None:  # type: ignore[no-untyped-def]
    tiny = 1e-6  # each learner moves every weight by this: the aggregate minus it is the noise
    grid = join(link, [learner(np.full(SIZE, tiny), 1) for _ in range(n)])
    aggregator = config({"clipping_norm": clip, "noise_multiplier": noise}, min_available_clients=n, min_fit_clients=n)
    rounds = rounds_over(grid, round_strategy(aggregator, "learners", min_fit=n, min_evaluate=n), n)
    np.random.seed(20261206)  # Flower draws its noise from numpy's global generator
    draws, model = [], [np.zeros(SIZE, dtype=np.float64)]
    for server_round in range(1, 11):
        result = rounds.train_round(server_round, model, {})
        assert result.arrays is not None
        draws.append(result.arrays[0] - model[0] - tiny)
        model = result.arrays
    samples = np.concatenate(draws)  # 40,000 draws
    expected = noise * clip / n
    assert abs(float(np.mean(samples))) < 0.02 * expected
    assert float(np.std(samples)) == pytest.approx(expected, rel=0.02)  # the std of this estimate is ~0.35 %
    other = noise * clip / (n + 1)
    assert abs(float(np.std(samples)) - other) > 0.1 * expected  # n is really in the calibration


def test_local_dp_updates_arrive_clipped_and_noised(link) -> None:  # type: ignore[no-untyped-def]
    step = np.full(SIZE, 0.8)  # norm ~50.6
    grid = join(link, [learner(step, 10, local_dp=True), learner(step, 20, local_dp=True)])
    recording = RecordingFedAvg(2)
    aggregator = config(
        {"mode": "local", "clipping_norm": 1.0, "noise_multiplier": 0.5}, min_available_clients=2, min_fit_clients=2
    )
    rounds = rounds_over(grid, with_privacy(recording, aggregator, "learners", min_fit=2), 2)
    rounds.train_round(1, [np.zeros(SIZE, dtype=np.float64)], {})
    clipped = step / np.linalg.norm(step) * 1.0
    assert len(recording.updates) == 2
    for update in recording.updates:
        residual = update[0] - clipped  # what the learner added after clipping
        assert float(np.std(residual)) == pytest.approx(0.5 * 1.0, rel=0.05)
        assert abs(float(np.mean(residual))) < 0.05
    no_noise = config(
        {"mode": "local", "clipping_norm": 1.0, "noise_multiplier": 0.0}, min_available_clients=2, min_fit_clients=2
    )
    recording = RecordingFedAvg(2)
    rounds = rounds_over(grid, with_privacy(recording, no_noise, "learners", min_fit=2), 2)
    rounds.train_round(1, [np.zeros(SIZE, dtype=np.float64)], {})
    assert [norm(update) for update in recording.updates] == pytest.approx([1.0, 1.0], rel=1e-6)


# -- the project's progress ------------------------------------------------------------------------------------
def test_the_projects_progress_shows_the_highest_cluster_epsilon_and_the_results_reason() -> None:
    from flops_utils.mqtt_catalogue import TrainingProgress, TrainingResult, parse_message
    from manager.lifecycle.privacy_progress import privacy_progress, privacy_result
    from manager.records import Progress

    def report(cluster: str | None, eps: float) -> TrainingProgress:
        sent = TrainingProgress(
            project_id="p",
            sender="a",
            cluster=cluster,
            cycle=1,
            total_cycles=2,
            round=1,
            total_rounds=2,
            dp_epsilon=eps,
            dp_delta=1e-5,
            dp_noise_multiplier=1.0,
            dp_clipping_norm=2.0,
        )
        parsed = parse_message(sent.to_payload())  # what the manager receives from the broker
        assert isinstance(parsed, TrainingProgress)
        return parsed

    progress = Progress(cycle=1)
    progress = progress.model_copy(update=privacy_progress(progress, report("cluster-a", 3.0)))
    progress = progress.model_copy(update=privacy_progress(progress, report("cluster-b", 1.5)))
    assert progress.dp_epsilon == 3.0 and progress.dp_clipping_norm == 2.0
    assert privacy_progress(progress, TrainingProgress(project_id="p", sender="a", round=1, total_rounds=2)) == {}
    result = TrainingResult(
        project_id="p", sender="a", rounds_completed=2, reason="privacy budget reached", dp_epsilon=2.5, dp_delta=1e-5
    )
    assert privacy_result(result) == {"dp_epsilon": 2.5, "dp_delta": 1e-5, "reason": "privacy budget reached"}


def test_local_dp_noises_an_unchanged_model_too() -> None:
    np.random.seed(3)
    received = [np.ones(SIZE, dtype=np.float32)]
    sent = privatise(received, [received[0].copy()], clipping_norm=1.0, noise_multiplier=0.5)
    assert sent[0].dtype == np.float32
    assert float(np.std(sent[0] - received[0])) == pytest.approx(0.5, rel=0.05)


def test_the_cli_shows_the_epsilon_spent() -> None:
    from manager.cli.main import _privacy_text
    from manager.cli.watch import progress_line

    progress = {
        "round": 2,
        "total_rounds": 5,
        "dp_epsilon": 1.2345,
        "dp_delta": 1e-5,
        "dp_noise_multiplier": 3.0,
        "dp_clipping_norm": 5.0,
        "reason": "privacy budget reached",
    }
    line = progress_line({"status": "RUNNING", "phase": "training", "progress": progress}, times=False)
    assert line.endswith("round 2/5  ε 1.23"), line
    assert _privacy_text(progress) == "ε=1.234 (δ=1e-05), noise multiplier 3, clipping norm 5"
    assert _privacy_text({"round": 2}) is None


def test_the_root_runs_the_cycles_every_clusters_budget_allows() -> None:
    from services.aggregator.hierarchical import cycles_to_run

    privacy = {
        "clipping_norm": 1.0,
        "noise_multiplier": 3.0,
        "budget": {"epsilon": 5.0, "delta": 1e-5},
        "clusters": {"a": {"noise_multiplier": 6.0}, "b": {}},
    }
    root = config(
        privacy, mode="hierarchical", training_rounds=2, training_cycles=10, min_available_clients=2, min_fit_clients=2
    )
    plans = {name: privacy_plan(root, "learners", cluster=name) for name in ("a", "b")}
    assert plans["a"] is not None and plans["b"] is not None
    assert plans["a"].noise_multiplier == 6.0 and plans["b"].noise_multiplier == 3.0
    # cluster b (noise 3) fits 9 rounds of 2 per cycle: 4 cycles; cluster a would allow all 10
    assert cycles_to_run(None, {k: v for k, v in plans.items() if v}, root.training) == 4
    tight = config(
        {**privacy, "budget": {"epsilon": 1.5, "delta": 1e-5}},
        mode="hierarchical",
        training_rounds=2,
        training_cycles=10,
        min_available_clients=2,
        min_fit_clients=2,
    )
    tight_plans = {name: plan for name in ("a", "b") if (plan := privacy_plan(tight, "learners", cluster=name))}
    with pytest.raises(ValueError, match="cluster b: the privacy budget does not allow one cycle of 2 rounds"):
        cycles_to_run(None, tight_plans, tight.training)


def test_central_dp_is_refused_with_secure_aggregation_and_local_dp_is_not() -> None:
    from manager.sla import ProjectSLA

    training: dict[str, object] = {
        "data_tags": ["d"],
        "min_available_clients": 3,
        "min_fit_clients": 3,
        "min_evaluate_clients": 3,
        "secure_aggregation": {"enabled": True},
        "privacy": {"noise_multiplier": 1.0, "clipping_norm": 1.0},
    }
    request = {
        "ml_repo_url": "https://example.org/r.git",
        "ml_model_flavor": "sklearn",
        "training_configuration": training,
    }
    with pytest.raises(ValidationError) as refused:
        ProjectSLA.model_validate(request)
    error = refused.value.errors()[0]
    assert error["loc"] == ("training_configuration", "privacy") and "secure_aggregation hides" in error["msg"]
    training["privacy"] = {"mode": "local", "noise_multiplier": 1.0, "clipping_norm": 1.0}
    assert ProjectSLA.model_validate(request).training_configuration.privacy is not None


@pytest.mark.parametrize(
    "mechanism",
    [
        {"clipping_norm": 2.0, "noise_multiplier": 0.0},
        {"clipping_norm": 2.0, "noise_multiplier": 0.0, "target_quantile": 0.5},
    ],
)
def test_central_dp_takes_an_unchanged_model_in_its_average(link, mechanism: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """A learner whose fit moved nothing sends a zero update: Flower's clip divided by its norm (ZeroDivisionError,
    the round lost); it is within every clipping norm and counts in the equal-weight average."""
    grid = join(link, [learner(np.zeros(SIZE), 10), learner(np.full(SIZE, 0.01), 10)])
    aggregator = config(mechanism, min_available_clients=2, min_fit_clients=2)
    rounds = rounds_over(grid, round_strategy(aggregator, "learners", min_fit=2, min_evaluate=2), 2)
    result = rounds.train_round(1, [np.ones(SIZE, dtype=np.float64)], {})
    assert result.arrays is not None
    np.testing.assert_allclose(result.arrays[0], np.full(SIZE, 1.005), atol=1e-9)
