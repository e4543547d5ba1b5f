"""Differential privacy at one aggregation level: Flower's DP strategy wrappers and the privacy accounting.

Central mode wraps the level's strategy in Flower's ``DifferentialPrivacyServerSideFixedClipping`` (or
``...AdaptiveClipping`` with ``target_quantile``): every update is clipped to ``clipping_norm`` and the
aggregate gets Gaussian noise of std ``noise_multiplier x clipping_norm / n``. Updates are averaged with
equal weights there, so one learner's influence (the sensitivity) is ``clipping_norm / n`` whatever its data
size. Local mode sends the mechanism in every train message's config; each learner clips and noises its own
update before it leaves the node (:mod:`services.learner.local_dp`).

ε is computed by Google's ``dp-accounting`` (RDP): each round is a sampled Gaussian mechanism with sampling rate
``min_fit_clients / eligible learners`` (central; the learners a round asks are drawn at random among the
eligible ones) or 1 (local: the aggregator sees who took part, so sampling hides nothing), composed over rounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
    dp_adaptive_clipping,
    dp_fixed_clipping,
)

from flops_utils.privacy import DpMechanism, DpMode, PrivacySettings
from flops_utils.service_config import AggregatorConfig
from services.fl_runtime.dp_clip import adaptive_clip, clip_model_update
from services.fl_runtime.outcome import RunOutcome
from services.fl_runtime.protocol import LOCAL_DP_CLIP, LOCAL_DP_NOISE
from services.fl_runtime.tracking import Tracker

Level = Literal["learners", "clusters"]
BUDGET_REACHED = "privacy budget reached"
SAMPLE_MIN_ONLY = 1e-9  # a FedAvg fraction_train that rounds to no node, so min_train_nodes are sampled (0 skips)


@dataclass(frozen=True)
class PrivacyPlan:
    """One level's mechanism with its noise resolved, and what it costs per round."""

    mode: DpMode
    clipping_norm: float
    noise_multiplier: float
    target_quantile: float | None
    delta: float
    sampling_rate: float
    planned_rounds: int
    budget_epsilon: float | None

    def epsilon_after(self, rounds: int) -> float:
        """ε spent after ``rounds`` rounds at ``delta`` (0 before the first)."""
        return epsilon_for(self.noise_multiplier, self.sampling_rate, rounds, self.delta)

    def rounds_within_budget(self, rounds: int) -> int:
        """How many of the next ``rounds`` rounds fit the budget (all of them without one)."""
        if self.budget_epsilon is None:
            return rounds
        low, high = 0, rounds  # ε grows with the rounds: the last round that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if self.epsilon_after(middle) <= self.budget_epsilon:
                low = middle
            else:
                high = middle - 1
        return low

    def params(self, prefix: str = "dp") -> dict[str, object]:
        """What the MLflow run records as parameters."""
        values: dict[str, object] = {
            f"{prefix}.mode": self.mode,
            f"{prefix}.clipping": "adaptive" if self.target_quantile is not None else "fixed",
            f"{prefix}.clipping_norm": self.clipping_norm,
            f"{prefix}.noise_multiplier": self.noise_multiplier,
            f"{prefix}.delta": self.delta,
            f"{prefix}.sampling_rate": self.sampling_rate,
            f"{prefix}.planned_rounds": self.planned_rounds,
            f"{prefix}.accountant": "dp-accounting RDP",
        }
        if self.target_quantile is not None:
            values[f"{prefix}.target_quantile"] = self.target_quantile
        if self.budget_epsilon is not None:
            values[f"{prefix}.budget_epsilon"] = self.budget_epsilon
        return values


@lru_cache(maxsize=4096)
def epsilon_for(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` compositions of the sampled Gaussian mechanism (RDP accountant of dp-accounting)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(_round_event(noise_multiplier, sampling_rate), rounds)
    return float(accountant.get_epsilon(delta))


def _round_event(noise_multiplier: float, sampling_rate: float) -> object:
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return gaussian if sampling_rate >= 1 else dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


def noise_for_epsilon(target_epsilon: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier whose ε after ``rounds`` rounds is ``target_epsilon`` (dp-accounting's
    calibration)."""
    import dp_accounting

    return float(
        dp_accounting.calibrate_dp_mechanism(
            dp_accounting.rdp.RdpAccountant,
            lambda z: dp_accounting.SelfComposedDpEvent(_round_event(z, sampling_rate), rounds),
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        )
    )


def privacy_plan(config: AggregatorConfig, level: Level, cluster: str | None = None) -> PrivacyPlan | None:
    """The DP this aggregator applies at ``level`` (None: none). ``cluster`` defaults to the aggregator's own."""
    training = config.training
    privacy = training.privacy
    if privacy is None:
        return None
    mechanism = privacy.level_mechanism(level, cluster or config.cluster)
    if mechanism is None:
        return None
    if level == "clusters":
        sampling_rate, rounds = 1.0, training.training_cycles
    else:
        eligible = max(training.min_available_clients, training.min_fit_clients)
        sampling_rate = training.min_fit_clients / eligible
        rounds = training.training_rounds * (training.training_cycles if training.mode == "hierarchical" else 1)
    return _plan(privacy, mechanism, sampling_rate, rounds)


def _plan(privacy: PrivacySettings, mechanism: DpMechanism, sampling_rate: float, rounds: int) -> PrivacyPlan:
    mode = mechanism.effective_mode
    rate = 1.0 if mode == "local" else sampling_rate
    delta = mechanism.delta if mechanism.delta is not None else privacy.effective_delta
    assert mechanism.clipping_norm is not None  # level_mechanism returns complete mechanisms only
    if mechanism.noise_multiplier is not None:
        noise = mechanism.noise_multiplier
    else:
        assert mechanism.target_epsilon is not None
        noise = noise_for_epsilon(mechanism.target_epsilon, rate, rounds, delta)
    budget = privacy.budget.epsilon if privacy.budget is not None else None
    return PrivacyPlan(mode, mechanism.clipping_norm, noise, mechanism.target_quantile, delta, rate, rounds, budget)


# -- strategies -------------------------------------------------------------------------------------------
# Flower's server-side DP strategies call these helpers by their module names: the zero-safe ones instead.
dp_fixed_clipping.compute_clip_model_update = clip_model_update
dp_adaptive_clipping.adaptive_clip_inputs_inplace = adaptive_clip


def _equal_weights(strategy: Strategy, replies: Iterable[Message]) -> list[Message]:
    """Replies whose aggregation weight is 1: with clipping, each learner then moves the mean by at most
    ``clipping_norm / n``, the sensitivity the noise is calibrated for."""
    key = getattr(strategy, "weighted_by_key", None)
    listed = list(replies)
    if key is None:
        return listed
    for reply in listed:
        for record in reply.content.metric_records.values():
            if key in record:
                record[key] = 1
    return listed


class CentralFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping over equally weighted updates."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, _equal_weights(self.strategy, replies))


class CentralAdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping (Andrew et al.) over equally weighted updates."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, _equal_weights(self.strategy, replies))


def clipped_count_stddev(plan: PrivacyPlan, min_fit: int) -> float:
    """Noise on the count of unclipped updates (adaptive clipping). Andrew et al. suggest ``n / 20`` for large
    cohorts; with few learners that leaves no privacy for the updates themselves (Flower needs
    ``2 x stddev > noise_multiplier``), so it is at least ``noise_multiplier``: the updates then get
    ``noise_multiplier / sqrt(3/4)`` and the total is the ``noise_multiplier`` the accountant uses."""
    return max(min_fit / 20, plan.noise_multiplier)


class LocalDpRequest(Strategy):
    """Local DP: the wrapped strategy's train messages carry the mechanism the learners apply."""

    def __init__(self, strategy: Strategy, plan: PrivacyPlan) -> None:
        super().__init__()
        self.strategy = strategy
        self.clipping_norm = plan.clipping_norm
        self.noise_multiplier = plan.noise_multiplier

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for message in messages:
            for record in message.content.config_records.values():
                record[LOCAL_DP_CLIP] = self.clipping_norm
                record[LOCAL_DP_NOISE] = self.noise_multiplier
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


def with_privacy(strategy: Strategy, config: AggregatorConfig, level: Level, *, min_fit: int) -> Strategy:
    """``strategy`` with the level's DP (unchanged without one). A round asks exactly ``min_fit`` nodes drawn at
    random, which is the sampling the accountant assumes."""
    plan = privacy_plan(config, level)
    if plan is None:
        return strategy
    if isinstance(strategy, FedAvg):
        strategy.fraction_train = SAMPLE_MIN_ONLY  # sample exactly min_train_nodes (= min_fit) of the usable nodes
    if plan.mode == "local":
        return LocalDpRequest(strategy, plan)
    if plan.target_quantile is not None:
        return CentralAdaptiveClipping(
            strategy,
            plan.noise_multiplier,
            min_fit,
            initial_clipping_norm=plan.clipping_norm,
            target_clipped_quantile=plan.target_quantile,
            clipped_count_stddev=clipped_count_stddev(plan, min_fit),
        )
    return CentralFixedClipping(strategy, plan.noise_multiplier, plan.clipping_norm, min_fit)


def clipping_norm_in_effect(strategy: Strategy, plan: PrivacyPlan) -> float:
    """The bound used in the last round (adaptive clipping moves it after each round)."""
    value = getattr(strategy, "clipping_norm", None)
    return float(value) if isinstance(value, int | float) else plan.clipping_norm


def round_privacy(plan: PrivacyPlan, strategy: Strategy, rounds_done: int) -> dict[str, float]:
    """The per-round figures: ε spent so far, the noise multiplier and the clipping norm in effect."""
    return {
        "dp_epsilon": plan.epsilon_after(rounds_done),
        "dp_delta": plan.delta,
        "dp_noise_multiplier": plan.noise_multiplier,
        "dp_clipping_norm": clipping_norm_in_effect(strategy, plan),
    }


# -- budget and report ------------------------------------------------------------------------------------
def rounds_to_run(plan: PrivacyPlan | None, planned: int) -> int:
    """Rounds that fit the budget (all ``planned`` without DP or budget); raises when not even one does."""
    if plan is None:
        return planned
    allowed = plan.rounds_within_budget(planned)
    if allowed == 0:
        assert plan.budget_epsilon is not None
        raise ValueError(
            f"privacy budget ε={plan.budget_epsilon:g} is below the ε of one round ({plan.epsilon_after(1):.4g} at "
            f"δ={plan.delta:g}): raise the budget or the noise"
        )
    return allowed


def budget_note(plan: PrivacyPlan | None, allowed: int, planned: int, unit: str = "rounds") -> str | None:
    """The event line saying that the budget cuts training short, or None."""
    if plan is None or allowed >= planned:
        return None
    return (
        f"privacy budget ε={plan.budget_epsilon:g} allows {allowed} of {planned} {unit} "
        f"(ε after {allowed}: {plan.epsilon_after(allowed):.4g}, after {allowed + 1}: "
        f"{plan.epsilon_after(allowed + 1):.4g} at δ={plan.delta:g})"
    )


def with_privacy_outcome(
    outcome: RunOutcome, tracker: Tracker, epsilon: float | None, delta: float | None, stopped_by_budget: bool
) -> RunOutcome:
    """The outcome with the ε spent (also tagged on the run and the registered model version) and, when the
    budget ended training early, the reason."""
    if epsilon is None:
        return outcome
    tags = {"flops.dp.epsilon": f"{epsilon:.6g}", "flops.dp.delta": f"{delta:g}"}
    version = (outcome.registered_model, outcome.registered_version)
    tracker.set_tags(tags, model=version if version[0] and version[1] else None)  # type: ignore[arg-type]
    update: dict[str, object] = {"dp_epsilon": epsilon, "dp_delta": delta}
    if stopped_by_budget:
        update["reason"] = BUDGET_REACHED
    return outcome.model_copy(update=update)
