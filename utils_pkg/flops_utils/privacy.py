"""The SLA's ``training_configuration.privacy`` block: differential privacy for a project.

One model serves the SLA (validated, every error naming its field) and the aggregators' TrainingSettings.
``mode``: ``central`` (the aggregator clips every update and noises the aggregate) or ``local`` (each learner
clips and noises its own update). The noise is set by ``noise_multiplier`` or derived from ``target_epsilon``
(at ``delta``) for the planned rounds; ``budget`` ends training before a round that would exceed it.
Hierarchical projects may override any of these per cluster (``clusters``) and noise the root's aggregation of
cluster models (``root``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_DELTA = 1e-5
DpMode = Literal["central", "local"]


class PrivacyBudget(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    epsilon: float = Field(gt=0, le=1_000, description="training stops before a round that would spend more")
    delta: float = Field(gt=0, lt=1, description="the delta the budget's epsilon is for")


class DpMechanism(BaseModel):
    """The mechanism at one aggregation level; every field optional so a cluster override names only changes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: DpMode | None = Field(default=None, description="'central' (default) or 'local'")
    clipping_norm: float | None = Field(
        default=None, gt=0, le=1e6, description="L2 bound of each update (the initial bound with target_quantile)"
    )
    target_quantile: float | None = Field(
        default=None, gt=0, lt=1, description="adaptive clipping (central mode): the share of updates left unclipped"
    )
    noise_multiplier: float | None = Field(
        default=None, ge=0, le=1_000, description="noise std = noise_multiplier x clipping_norm (per update)"
    )
    target_epsilon: float | None = Field(
        default=None, gt=0, le=1_000, description="instead of noise_multiplier: derive it for the planned rounds"
    )
    delta: float | None = Field(default=None, gt=0, lt=1, description="the delta epsilon is reported for")

    @model_validator(mode="after")
    def _one_way_to_set_noise(self) -> DpMechanism:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("give noise_multiplier or target_epsilon, not both")
        if self.target_quantile is not None and self.mode == "local":
            raise ValueError("target_quantile (adaptive clipping) works in central mode only")
        return self

    def merged(self, override: DpMechanism | None) -> DpMechanism:
        """This mechanism with the fields ``override`` sets; noise_multiplier and target_epsilon replace each
        other."""
        if override is None:
            return self
        values = self.model_dump(exclude_none=True)
        changes = override.model_dump(exclude_none=True)
        if "noise_multiplier" in changes:
            values.pop("target_epsilon", None)
        if "target_epsilon" in changes:
            values.pop("noise_multiplier", None)
        return DpMechanism.model_validate({**values, **changes})

    def problem(self) -> str | None:
        """Why this mechanism cannot run as a level's effective setting, or None."""
        if self.clipping_norm is None:
            return "clipping_norm is required (the initial bound when target_quantile is set)"
        if self.noise_multiplier is None and self.target_epsilon is None:
            return "noise_multiplier or target_epsilon is required"
        return None

    @property
    def effective_mode(self) -> DpMode:
        return self.mode or "central"


class PrivacySettings(DpMechanism):
    budget: PrivacyBudget | None = Field(default=None, description="the epsilon (at delta) training may spend")
    clusters: dict[str, DpMechanism] = Field(
        default_factory=dict, max_length=256, description="hierarchical: per-cluster overrides of the fields above"
    )
    root: DpMechanism | None = Field(
        default=None, description="hierarchical: clip and noise the root's aggregation of cluster models (central)"
    )

    @model_validator(mode="after")
    def _complete_levels(self) -> PrivacySettings:
        if self.budget is not None and self.delta is not None and self.budget.delta != self.delta:
            raise ValueError(f"delta ({self.delta:g}) differs from budget.delta ({self.budget.delta:g}); give one")
        if not self.clusters:
            problem = self.problem()
            if problem:
                raise ValueError(problem)
        for name in self.clusters:
            problem = self.mechanism(name).problem()
            if problem:
                raise ValueError(f"clusters.{name}: {problem}")
        if self.root is not None:
            if self.root.mode == "local":
                raise ValueError("root: the root's DP is central (it clips and noises cluster models)")
            problem = self.root.problem()
            if problem:
                raise ValueError(f"root: {problem}")
        return self

    @property
    def effective_delta(self) -> float:
        if self.budget is not None:
            return self.budget.delta
        return self.delta if self.delta is not None else DEFAULT_DELTA

    def mechanism(self, cluster: str | None = None) -> DpMechanism:
        """The mechanism a learners-level aggregator applies (its cluster's override merged in)."""
        base = DpMechanism.model_validate(self.model_dump(include=set(DpMechanism.model_fields), exclude_none=True))
        return base.merged(self.clusters.get(cluster) if cluster else None)

    def level_mechanism(self, level: Literal["learners", "clusters"], cluster: str | None) -> DpMechanism | None:
        """The effective mechanism at one aggregation level, or None when that level adds no DP."""
        if level == "clusters":
            return self.root
        mechanism = self.mechanism(cluster)
        return None if mechanism.problem() else mechanism
