"""The one catalogue of MQTT topics and messages every FLOps component uses.

Topic layout: ``flops/projects/<project_id>/<kind>`` where ``kind`` is one of
:class:`TopicKind`. Every message is a pydantic model with a ``type`` literal, so a
subscriber parses any payload with :func:`parse_message` and gets a typed object
(or a :class:`MalformedMessage` error it can log and ignore).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

TOPIC_ROOT = "flops/projects"
ALL_PROJECTS_FILTER = f"{TOPIC_ROOT}/+/+"


class TopicKind(StrEnum):
    STATUS = "status"  # a service started / succeeded / failed
    BUILD = "build"  # builder steps with durations
    PROGRESS = "progress"  # one message per finished round
    RESULT = "result"  # the final training outcome
    EVENT = "event"  # free-form human-readable lines
    CONTROL = "control"  # manager -> services (stop)


# The broker keeps the last message of these kinds per project, so a subscriber that
# (re)connects later, e.g. a restarted manager or a late learner, still learns the outcome.
RETAINED_KINDS = frozenset({TopicKind.RESULT})


def topic(project_id: str, kind: TopicKind) -> str:
    return f"{TOPIC_ROOT}/{project_id}/{kind.value}"


def project_filter(project_id: str) -> str:
    """Subscription filter for every topic of one project."""
    return f"{TOPIC_ROOT}/{project_id}/+"


def split_topic(name: str) -> tuple[str, TopicKind] | None:
    """Return ``(project_id, kind)`` for a catalogue topic, or None for anything else."""
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_ROOT:
        return None
    try:
        return parts[2], TopicKind(parts[3])
    except ValueError:
        return None


class ReportedState(StrEnum):
    """What a service says about itself in its status reports (the orchestrator's view of it is
    ``orchestrator_adapters.base.ServiceState``)."""

    STARTED = "started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NO_DATA = "no_data"  # a learner found no data for the project's tags
    STOPPED = "stopped"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: str = Field(min_length=1)
    sender: str = Field(min_length=1, description="service instance name, e.g. 'learner-node-a'")
    sent_at: float = Field(default_factory=time.time)

    @property
    def kind(self) -> TopicKind:
        raise NotImplementedError

    def topic(self) -> str:
        return topic(self.project_id, self.kind)

    def to_payload(self) -> bytes:
        return self.model_dump_json().encode()


class ServiceStatus(_Message):
    type: Literal["service_status"] = "service_status"
    service: str = Field(description="service kind: builder, aggregator, learner, observer, serving ...")
    state: ReportedState
    detail: str = ""

    @property
    def kind(self) -> TopicKind:
        return TopicKind.STATUS


class BuildStep(_Message):
    type: Literal["build_step"] = "build_step"
    step: str
    outcome: Literal["done", "cached", "failed"]
    duration_s: float = Field(ge=0)
    detail: str = ""

    @property
    def kind(self) -> TopicKind:
        return TopicKind.BUILD


class BuildResult(_Message):
    """The builder's final answer: where the learner/aggregator runtime lives."""

    type: Literal["build_result"] = "build_result"
    digest: str
    commit: str
    cached: bool
    environment_dir: str | None = Field(default=None, description="local mode: the cached virtualenv")
    app_dir: str | None = Field(default=None, description="local mode: the augmented repo (user code + FL runtime)")
    learner_image: str | None = None
    aggregator_image: str | None = None
    platform_digests: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="oci mode: image kind (learner, aggregator) -> platform (linux/arm64) -> its manifest digest",
    )
    total_seconds: float = 0.0

    @property
    def kind(self) -> TopicKind:
        return TopicKind.BUILD


class ModelImageBuilt(_Message):
    """The builder's answer to a post-training image build: the trained model's inference image."""

    type: Literal["model_image_built"] = "model_image_built"
    image: str = Field(description="registry/flops/<name>:<tag>")
    pinned: str = Field(description="registry/flops/<name>@sha256:... (what a deployment should pull)")
    digest: str
    model_uri: str
    run_id: str | None = Field(default=None, description="the MLflow run the model belongs to")
    run_tagged: bool = Field(default=False, description="the run carries the image as a tag")
    cached: bool = Field(default=False, description="found in the registry, nothing built")
    size_bytes: int | None = None
    total_seconds: float = 0.0

    @property
    def kind(self) -> TopicKind:
        return TopicKind.BUILD


class TrainingProgress(_Message):
    type: Literal["training_progress"] = "training_progress"
    cluster: str | None = Field(default=None, description="None for global (root or classic) rounds")
    cycle: int = Field(ge=1, default=1)
    total_cycles: int = Field(ge=1, default=1)
    round: int = Field(ge=0)
    total_rounds: int = Field(ge=1)
    loss: float | None = None
    accuracy: float | None = None
    num_examples: int = 0
    participants: int = 0
    round_seconds: float = 0.0
    dp_epsilon: float | None = Field(default=None, description="differential privacy: ε spent so far (at dp_delta)")
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = Field(default=None, description="the noise multiplier in effect")
    dp_clipping_norm: float | None = Field(default=None, description="the clipping norm in effect")

    @property
    def kind(self) -> TopicKind:
        return TopicKind.PROGRESS


class TrainingResult(_Message):
    type: Literal["training_result"] = "training_result"
    rounds_completed: int
    cycles_completed: int = 1
    loss: float | None = None
    accuracy: float | None = None
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    reason: str | None = Field(
        default=None, description="why training ended before its planned rounds, e.g. 'privacy budget reached'"
    )
    dp_epsilon: float | None = Field(default=None, description="differential privacy: the ε the training spent")
    dp_delta: float | None = None

    @property
    def kind(self) -> TopicKind:
        return TopicKind.RESULT


class EventLine(_Message):
    type: Literal["event_line"] = "event_line"
    level: Literal["debug", "info", "warning", "error"] = "info"
    text: str

    @property
    def kind(self) -> TopicKind:
        return TopicKind.EVENT


class ControlCommand(_Message):
    type: Literal["control_command"] = "control_command"
    command: Literal["stop"]

    @property
    def kind(self) -> TopicKind:
        return TopicKind.CONTROL


FlopsMessage = Annotated[
    ServiceStatus
    | BuildStep
    | BuildResult
    | ModelImageBuilt
    | TrainingProgress
    | TrainingResult
    | EventLine
    | ControlCommand,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[FlopsMessage] = TypeAdapter(FlopsMessage)


class MalformedMessage(ValueError):
    """A payload on a catalogue topic that is not a valid catalogue message."""


def parse_message(payload: bytes | str) -> FlopsMessage:
    try:
        return _ADAPTER.validate_json(payload)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise MalformedMessage(f"malformed FLOps message ({where}: {first['msg']})") from None
