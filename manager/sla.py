"""The project SLA: the one JSON document a user POSTs to start a federated-learning project.

Every field, default and constraint of the reference FLOps SLA is kept (the README's
"SLA" section lists them) so existing SLAs run unchanged; the extensions
(``orchestrator``, ``repo_ref``, ``training_configuration.round_timeout_s``) are optional.
Unknown fields are rejected at every level, and every error names its field path
(:func:`describe_validation_error`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from flops_utils.aggregation import (
    STRATEGY_NAMES,
    ClusteredStrategyChoice,
    FedAvgStrategy,
    SecureAggregation,
    StrategyChoice,
    secure_aggregation_problems,
    strategy_problems,
)
from flops_utils.privacy import PrivacySettings
from flops_utils.repo_access import MAX_URL_LENGTH, RepoUrlRefused
from flops_utils.repo_access import check_repo_url as check_safe_repo_url
from flops_utils.repo_credentials import RepoCredentials, split_repo_credentials
from flops_utils.service_config import TrainingSettings

ModelFlavor = Literal["sklearn", "pytorch", "tensorflow", "keras"]
Platform = Literal["linux/amd64", "linux/arm64"]
PostTrainingStep = Literal["build_image_for_trained_model", "deploy_trained_model_image"]

BUILD_STEP: PostTrainingStep = "build_image_for_trained_model"
DEPLOY_STEP: PostTrainingStep = "deploy_trained_model_image"
DEFAULT_PLATFORMS: list[Platform] = ["linux/amd64"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DATA_TAG_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
ORCHESTRATOR_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
GIT_REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/@+-]{0,254}$"

DataTag = Annotated[str, Field(pattern=DATA_TAG_PATTERN, description="letters, digits, '.', '_', '-'")]

_URL_WITH_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")


class _Strict(BaseModel):
    """Unknown fields refused, and no surprising coercion: ``true`` is not 1 round, ``"3"`` not 3 (ints may be
    given where a number is expected)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TrainingConfiguration(_Strict):
    mode: Literal["classic", "hierarchical"] = Field(
        default="classic", description="flat FL, or a root aggregator plus one cluster aggregator per cluster"
    )
    data_tags: list[DataTag] = Field(
        default_factory=list,
        max_length=64,
        description="learners use only local data fragments whose tag matches any of these",
    )
    training_rounds: int = Field(default=3, ge=1, le=100_000, description="rounds per learner (per cycle)")
    training_cycles: int = Field(default=1, ge=1, le=100_000, description="hierarchical only: root-cluster rounds")
    min_available_clients: int = Field(
        default=1, ge=1, le=10_000, description="learners to start / wait for (per cluster in hierarchical mode)"
    )
    min_fit_clients: int = Field(default=1, ge=1, le=10_000, description="learners needed to train a round")
    min_evaluate_clients: int = Field(default=1, ge=1, le=10_000, description="learners needed to evaluate a round")
    round_timeout_s: float | None = Field(
        default=None, gt=0, le=86_400, description="extension: stragglers past this many seconds are dropped"
    )
    # -- aggregation (issue 20): one block, keep together --
    strategy: ClusteredStrategyChoice = Field(
        default_factory=FedAvgStrategy,
        description="how an aggregator combines its learners' models (Flower strategy by `name` plus its "
        "parameters); hierarchical: the cluster aggregators', with per-cluster `clusters` overrides",
    )
    root_strategy: StrategyChoice | None = Field(
        default=None, description="hierarchical only: how the root combines the cluster models (default fedavg)"
    )

    @field_validator("strategy")
    @classmethod
    def _strategy_fits(cls, choice: ClusteredStrategyChoice, info: ValidationInfo) -> ClusteredStrategyChoice:
        if choice.clusters is not None and info.data.get("mode") != "hierarchical":
            raise ValueError("per-cluster strategies (strategy.clusters) need mode 'hierarchical'")
        participants = info.data.get("min_fit_clients")
        if participants is not None:
            problems = strategy_problems(choice, participants, "strategy")
            for cluster, override in (choice.clusters or {}).items():
                problems += strategy_problems(override, participants, f"strategy.clusters.{cluster}")
            if problems:
                raise ValueError("; ".join(problems))
        return choice

    @field_validator("root_strategy")
    @classmethod
    def _root_strategy_fits(cls, choice: StrategyChoice | None, info: ValidationInfo) -> StrategyChoice | None:
        if choice is not None and info.data.get("mode") != "hierarchical":
            raise ValueError("root_strategy needs mode 'hierarchical' (classic mode has no root)")
        return choice

    secure_aggregation: SecureAggregation | None = Field(
        default=None,
        description="SecAgg+ between each aggregator and its learners: the aggregator sees only "
        "the sum of their updates (strategy fedavg or fedprox)",
    )

    @field_validator("secure_aggregation")
    @classmethod
    def _secure_aggregation_fits(
        cls, secure: SecureAggregation | None, info: ValidationInfo
    ) -> SecureAggregation | None:
        strategy, participants = info.data.get("strategy"), info.data.get("min_fit_clients")
        if secure is not None and strategy is not None and participants is not None:
            problems = secure_aggregation_problems(secure, strategy, participants)
            if problems:
                raise ValueError("secure aggregation: " + "; ".join(problems))
        return secure

    # -- end aggregation --

    privacy: PrivacySettings | None = Field(
        default=None, description="extension: differential privacy (central or local), its accounting and budget"
    )

    @field_validator("privacy")
    @classmethod
    def _privacy_fits_secure_aggregation(
        cls, privacy: PrivacySettings | None, info: ValidationInfo
    ) -> PrivacySettings | None:
        """Central DP clips each learner's update on the aggregator, which SecAgg+ hides from it."""
        secure = info.data.get("secure_aggregation")
        if privacy is None or secure is None or not secure.enabled:
            return privacy
        project_mode = privacy.mode or "central"
        central = project_mode == "central" or any(
            (override.mode or project_mode) == "central" for override in privacy.clusters.values()
        )
        if central:
            raise ValueError(
                "central differential privacy clips each learner's update on the aggregator, which "
                "secure_aggregation hides from it: use privacy.mode 'local' with secure aggregation"
            )
        return privacy

    @field_validator("min_fit_clients", "min_evaluate_clients")
    @classmethod
    def _at_most_available(cls, value: int, info: ValidationInfo) -> int:
        available = info.data.get("min_available_clients")
        if available is not None and value > available:
            raise ValueError(f"{info.field_name} ({value}) must not exceed min_available_clients ({available})")
        return value

    @field_validator("privacy")
    @classmethod
    def _levels_exist(cls, privacy: PrivacySettings | None, info: ValidationInfo) -> PrivacySettings | None:
        if privacy is not None and info.data.get("mode") == "classic" and (privacy.clusters or privacy.root):
            raise ValueError("clusters and root apply to hierarchical mode only")
        return privacy


class ResourceConstraints(_Strict):
    memory: int = Field(default=100, ge=1, le=4_194_304, description="MB per training service")
    vcpus: float = Field(default=1, gt=0, le=1024, description="CPUs per training service")
    storage: int = Field(default=0, ge=0, le=1_073_741_824, description="MB of storage per training service")


class ProjectSLA(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    customer_id: str = Field(
        default="Admin",
        alias="customerID",
        pattern=NAME_PATTERN,
        description="owner; defaults to the caller, must match the caller unless the caller is the admin",
    )
    verbose: bool = Field(default=False, description="the project's services log at DEBUG (their logs, not the events)")
    ml_repo_url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="git URL (https, ssh, git@host:path), file:// URL or local path of the ML repository",
    )
    repo_credentials: RepoCredentials | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description="extension: username and password or token of a private http(s) repository (may also be "
        "given in ml_repo_url as https://user:token@host/...; a query string such as ?token=... is kept here "
        "too); stored encrypted, never shown or logged",
    )
    repo_ref: str | None = Field(
        default=None, pattern=GIT_REF_PATTERN, description="extension: branch, tag or commit (default branch if unset)"
    )
    ml_model_flavor: ModelFlavor = Field(description="how the model is logged to and served from MLflow")
    use_devel_base_images: bool = Field(
        default=False,
        description="accepted as false only: FLOps builds its base image once and reuses it "
        "(docs/images.md), there are no separate development base images",
    )
    supported_platforms: list[Platform] = Field(
        default_factory=lambda: list(DEFAULT_PLATFORMS), min_length=1, max_length=2
    )
    training_configuration: TrainingConfiguration = Field(default_factory=TrainingConfiguration)
    post_training_steps: list[PostTrainingStep] = Field(
        default_factory=list, max_length=4, description="deploying the trained model implies building its image"
    )
    resource_constraints: ResourceConstraints = Field(default_factory=ResourceConstraints)
    orchestrator: str | None = Field(
        default=None, pattern=ORCHESTRATOR_PATTERN, description="extension: orchestrator adapter for this project"
    )

    @field_validator("ml_repo_url")
    @classmethod
    def _safe_repo_url(cls, url: str) -> str:
        return check_repo_url(url)

    @field_validator("repo_credentials")
    @classmethod
    def _credentials_for_http(cls, credentials: RepoCredentials | None, info: ValidationInfo) -> RepoCredentials | None:
        url = info.data.get("ml_repo_url")
        if credentials is None or url is None:
            return credentials
        embedded = split_repo_credentials(url)[1]
        if embedded is not None and embedded.username is not None:
            raise ValueError("the credentials are given twice, here and in ml_repo_url; give them once")
        if not _is_http(url):
            raise ValueError("credentials work with http(s) repository URLs only (ssh authenticates with keys)")
        return credentials

    @model_validator(mode="after")
    def _credentials_out_of_the_url(self) -> ProjectSLA:
        """Credentials and query strings written into an http(s) ml_repo_url move to ``repo_credentials``,
        which is never dumped."""
        self.ml_repo_url, embedded = split_repo_credentials(self.ml_repo_url)
        if self.repo_credentials is not None:
            self.repo_credentials = self.repo_credentials.with_query_of(embedded)
        elif embedded is not None:
            self.repo_credentials = embedded
        return self

    @field_validator("repo_ref")
    @classmethod
    def _safe_repo_ref(cls, ref: str | None) -> str | None:
        if ref is not None and (".." in ref or ref.endswith((".", "/", ".lock")) or "//" in ref):
            raise ValueError("repo_ref is not a valid git branch, tag or commit name")
        return ref

    @field_validator("use_devel_base_images")
    @classmethod
    def _no_devel_base_images(cls, wanted: bool) -> bool:
        if wanted:
            raise ValueError(
                "not supported: FLOps builds its base image once and reuses it (see docs/images.md); "
                "leave use_devel_base_images false"
            )
        return wanted

    @field_validator("supported_platforms")
    @classmethod
    def _platforms(cls, platforms: list[Platform]) -> list[Platform]:
        return list(dict.fromkeys(platforms))

    @field_validator("post_training_steps")
    @classmethod
    def _deploy_implies_build(cls, steps: list[PostTrainingStep]) -> list[PostTrainingStep]:
        normalised: list[PostTrainingStep] = []
        if BUILD_STEP in steps or DEPLOY_STEP in steps:
            normalised.append(BUILD_STEP)
        if DEPLOY_STEP in steps:
            normalised.append(DEPLOY_STEP)
        return normalised


def check_repo_url(url: str) -> str:
    """Return ``url`` stripped if it is a safe git URL or local path; raise ValueError naming ml_repo_url otherwise.

    The rules are :func:`flops_utils.repo_access.check_repo_url`, which the builder applies as well.
    """
    try:
        return check_safe_repo_url(url)
    except RepoUrlRefused as refused:
        raise ValueError(f"ml_repo_url {refused}") from None


def _is_http(url: str) -> bool:
    scheme = _URL_WITH_SCHEME.match(url)
    return scheme is not None and scheme["scheme"].lower() in ("http", "https")


def sla_to_training_settings(sla: ProjectSLA) -> TrainingSettings:
    """The training part of ``sla`` as the services' ``TrainingSettings``."""
    values = sla.training_configuration.model_dump(exclude_none=True)
    return TrainingSettings.model_validate(values)


def describe_validation_error(error: ValidationError) -> list[dict[str, str]]:
    """One ``{field, message}`` per error; ``field`` is a dotted path such as ``training_configuration.mode``."""
    described: list[dict[str, str]] = []
    for item in error.errors(include_url=False):
        described.append({"field": _dotted(item.get("loc", ())), "message": _message(item)})
    return described


def _dotted(loc: tuple[int | str, ...] | Any) -> str:
    parts: list[str] = []
    for part in loc:
        if _is_strategy_tag(part, parts):  # pydantic puts the discriminator's value into the path
            continue
        if isinstance(part, int) and parts:
            parts[-1] = f"{parts[-1]}[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts) or "body"


def _is_strategy_tag(part: object, parts: list[str]) -> bool:
    after_strategy = bool(parts) and parts[-1] in ("strategy", "root_strategy")
    after_cluster = len(parts) >= 2 and parts[-2] == "clusters"
    return part in STRATEGY_NAMES and (after_strategy or after_cluster)


def _message(item: Any) -> str:
    kind = item.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # a strategy without a known name
        context = item.get("ctx") or {}
        key = str(context.get("discriminator", "name")).strip("'")
        expected = ", ".join(STRATEGY_NAMES)
        if kind == "union_tag_not_found":
            return f"{key} required, one of: {expected}"
        return f"unknown {key} {str(context.get('tag'))[:60]!r}, one of: {expected}"
    message = str(item.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return message.splitlines()[0] if message else "invalid value"
