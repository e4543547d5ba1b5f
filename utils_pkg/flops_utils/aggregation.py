"""How an aggregator combines its participants' models: the SLA's ``training_configuration.strategy``.

One pydantic model per Flower 1.41 Message-API strategy, told apart by ``name``; unknown parameters are
refused and every bound names its field. The SLA (manager) and the aggregators (``TrainingSettings``)
share these models, so what the manager accepted is exactly what the aggregator builds
(``services/aggregator/strategies.py``). Parameter names and defaults are Flower's.

``strategy`` (a ``ClusteredStrategyChoice``) may carry ``clusters: {"<cluster>": {...}}``: per-cluster overrides
in hierarchical mode (each cluster aggregator uses its own entry, or ``strategy`` itself when it has none).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Choice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def params(self) -> dict[str, Any]:
        """The strategy's parameters (without ``name`` and ``clusters``): what Flower's constructor gets."""
        return self.model_dump(exclude={"name", "clusters"})


class FedAvgChoice(_Choice):
    """Example-weighted averaging (McMahan et al.), FLOps' default."""

    name: Literal["fedavg"] = "fedavg"


class FedProxChoice(_Choice):
    """FedAvg whose learners add ``proximal_mu / 2 * ||w - w_global||^2`` to their loss (the user's
    ``fit_model`` reads ``self.fit_context.proximal_mu``)."""

    name: Literal["fedprox"]
    proximal_mu: float = Field(ge=0, le=1e6, description="weight of the proximal term")


class _FedOptParams(_Choice):
    eta: float = Field(default=0.1, gt=0, le=1e6, description="server-side learning rate")
    tau: float = Field(default=1e-3, gt=0, le=1e6, description="adaptivity (added to the second moment's root)")


class FedAdamChoice(_FedOptParams):
    name: Literal["fedadam"]
    beta_1: float = Field(default=0.9, ge=0, lt=1, description="first-moment decay")
    beta_2: float = Field(default=0.99, ge=0, lt=1, description="second-moment decay")


class FedYogiChoice(_FedOptParams):
    name: Literal["fedyogi"]
    eta: float = Field(default=0.01, gt=0, le=1e6, description="server-side learning rate")
    beta_1: float = Field(default=0.9, ge=0, lt=1, description="first-moment decay")
    beta_2: float = Field(default=0.99, ge=0, lt=1, description="second-moment decay")


class FedAdagradChoice(_FedOptParams):
    name: Literal["fedadagrad"]


class FedAvgMChoice(_Choice):
    name: Literal["fedavgm"]
    server_learning_rate: float = Field(default=1.0, gt=0, le=1e6, description="server-side learning rate")
    server_momentum: float = Field(default=0.0, ge=0, lt=1, description="server-side momentum")


class KrumChoice(_Choice):
    """The one update closest to its neighbours (Blanchard et al.)."""

    name: Literal["krum"]
    num_malicious_nodes: int = Field(default=0, ge=0, le=10_000, description="participants that may be faulty")


class MultiKrumChoice(_Choice):
    """Example-weighted average of the ``num_nodes_to_select`` updates Krum scores best."""

    name: Literal["multikrum"]
    num_malicious_nodes: int = Field(default=0, ge=0, le=10_000, description="participants that may be faulty")
    num_nodes_to_select: int = Field(default=1, ge=1, le=10_000, description="updates averaged")


class TrimmedMeanChoice(_Choice):
    """Coordinate-wise mean without the lowest and highest ``beta`` fraction (Flower's FedTrimmedAvg)."""

    name: Literal["trimmedmean"]
    beta: float = Field(default=0.2, ge=0, lt=0.5, description="fraction cut at each end")


class FedMedianChoice(_Choice):
    """Coordinate-wise median."""

    name: Literal["fedmedian"]


StrategyChoice = Annotated[
    FedAvgChoice
    | FedProxChoice
    | FedAdamChoice
    | FedYogiChoice
    | FedAdagradChoice
    | FedAvgMChoice
    | KrumChoice
    | MultiKrumChoice
    | TrimmedMeanChoice
    | FedMedianChoice,
    Field(discriminator="name"),
]

STRATEGY_NAMES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
    "krum",
    "multikrum",
    "trimmedmean",
    "fedmedian",
)


class _WithClusters(BaseModel):
    """``training_configuration.strategy`` itself: a choice plus per-cluster overrides (which have none)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    clusters: dict[str, StrategyChoice] | None = Field(
        default=None,
        description="hierarchical mode: a different strategy for some clusters "
        '(`{"cluster-a": {"name": "krum", "num_malicious_nodes": 1}}`)',
    )

    @field_validator("clusters")
    @classmethod
    def _cluster_names(cls, clusters: dict[str, StrategyChoice] | None) -> dict[str, StrategyChoice] | None:
        for cluster in clusters or {}:
            if not re.match(CLUSTER_NAME_PATTERN, cluster):
                raise ValueError(f"cluster name {cluster[:80]!r} is not a valid cluster name")
        return clusters

    def for_cluster(self, cluster: str | None) -> StrategyChoice:
        """The choice a cluster aggregator of ``cluster`` uses (this one unless the cluster has an override)."""
        chosen = (self.clusters or {}).get(cluster or "")
        return chosen if chosen is not None else self  # type: ignore[return-value]


# The same strategies with ``clusters`` (two sets of classes keep the schema free of recursion).
class FedAvgStrategy(FedAvgChoice, _WithClusters): ...


class FedProxStrategy(FedProxChoice, _WithClusters): ...


class FedAdamStrategy(FedAdamChoice, _WithClusters): ...


class FedYogiStrategy(FedYogiChoice, _WithClusters): ...


class FedAdagradStrategy(FedAdagradChoice, _WithClusters): ...


class FedAvgMStrategy(FedAvgMChoice, _WithClusters): ...


class KrumStrategy(KrumChoice, _WithClusters): ...


class MultiKrumStrategy(MultiKrumChoice, _WithClusters): ...


class TrimmedMeanStrategy(TrimmedMeanChoice, _WithClusters): ...


class FedMedianStrategy(FedMedianChoice, _WithClusters): ...


ClusteredStrategyChoice = Annotated[
    FedAvgStrategy
    | FedProxStrategy
    | FedAdamStrategy
    | FedYogiStrategy
    | FedAdagradStrategy
    | FedAvgMStrategy
    | KrumStrategy
    | MultiKrumStrategy
    | TrimmedMeanStrategy
    | FedMedianStrategy,
    Field(discriminator="name"),
]


def strategy_problems(choice: StrategyChoice, participants: int, where: str) -> list[str]:
    """Why ``choice`` cannot work with ``participants`` replies per round (``where`` names the SLA field)."""
    problems = []
    if isinstance(choice, KrumChoice | MultiKrumChoice) and 2 * choice.num_malicious_nodes >= participants:
        problems.append(
            f"{where}.num_malicious_nodes ({choice.num_malicious_nodes}): Krum needs an honest majority, "
            f"fewer than half of the {participants} participants per round (min_fit_clients)"
        )
    if isinstance(choice, MultiKrumChoice) and choice.num_nodes_to_select > participants:
        problems.append(
            f"{where}.num_nodes_to_select ({choice.num_nodes_to_select}) must not exceed the "
            f"{participants} participants per round (min_fit_clients)"
        )
    return problems


class SecureAggregation(BaseModel):
    """SecAgg+ (Flower's workflow and ``secaggplus_mod``): the aggregator learns only the sum of its learners'
    updates. Parameters as Flower's ``SecAggPlusWorkflow``; an int counts learners, a float is a fraction."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    enabled: bool = Field(default=False, description="aggregate the learners' updates under SecAgg+")
    num_shares: int | float = Field(
        default=1.0,
        union_mode="left_to_right",
        description="learners each learner shares its secrets with "
        "(an integer >= 3, or a fraction in (0, 1] of the round's learners)",
    )
    reconstruction_threshold: int | float = Field(
        default=0.66,
        union_mode="left_to_right",
        description="shares needed to rebuild a dropped learner's mask "
        "(an integer >= 2, or a fraction in (0, 1] of num_shares); learners may drop out as long as this many of "
        "each one's neighbours remain",
    )

    @field_validator("num_shares", "reconstruction_threshold")
    @classmethod
    def _count_or_fraction(cls, value: int | float, info: Any) -> int | float:
        smallest = 3 if info.field_name == "num_shares" else 2
        if isinstance(value, int) and not smallest <= value <= 10_000:
            raise ValueError(f"as an integer (learners) it must be between {smallest} and 10000")
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("as a fraction it must be greater than 0 and at most 1")
        return value

    clipping_range: float = Field(default=8.0, gt=0, le=1e6, description="parameters are clipped to +-this")
    quantization_range: int = Field(default=4_194_304, ge=2, lt=2**32, description="quantisation levels")
    max_weight: float = Field(default=1000.0, gt=0, le=1e9, description="example counts above this are clipped")


SECURE_STRATEGIES = ("fedavg", "fedprox")


def secure_aggregation_problems(
    secure: SecureAggregation, strategy: ClusteredStrategyChoice, participants: int
) -> list[str]:
    """Why ``secure`` cannot run with ``strategy`` and ``participants`` learners per round."""
    if not secure.enabled:
        return []
    problems = []
    choices = [("strategy", strategy), *((f"strategy.clusters.{c}", o) for c, o in (strategy.clusters or {}).items())]
    for where, choice in choices:
        if choice.name not in SECURE_STRATEGIES:
            why = (
                "needs each learner's update, and secure aggregation reveals only their sum"
                if choice.name in ("krum", "multikrum", "trimmedmean", "fedmedian")
                else "is not available with it (Flower's SecAgg+ workflow aggregates with FedAvg)"
            )
            problems.append(f"{where} '{choice.name}' {why}; use fedavg or fedprox")
    if participants < 3:
        problems.append(
            f"needs min_fit_clients >= 3 (with {participants}, a learner could subtract its own update "
            "from the sum it gets back as the global model)"
        )
    if isinstance(secure.num_shares, int) and secure.num_shares > participants:
        problems.append(f"num_shares ({secure.num_shares}) must not exceed min_fit_clients ({participants})")
    threshold = secure.reconstruction_threshold
    if isinstance(threshold, int) and isinstance(secure.num_shares, int) and threshold >= secure.num_shares:
        problems.append(f"reconstruction_threshold ({threshold}) must be less than num_shares ({secure.num_shares})")
    elif isinstance(threshold, int) and threshold > participants:
        problems.append(f"reconstruction_threshold ({threshold}) must not exceed min_fit_clients ({participants})")
    return problems
