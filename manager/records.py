"""Plain documents the manager stores and serves: projects and their events."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class ProjectStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"  # a stop was asked for; the run is undeploying its services
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def finished(self) -> bool:
        return self in (ProjectStatus.COMPLETED, ProjectStatus.FAILED, ProjectStatus.STOPPED)


class ProjectPhase(StrEnum):
    QUEUED = "queued"
    OBSERVATORY = "observatory"
    PROJECT_APP = "project_app"
    OBSERVER = "observer"
    BUILD = "build"
    TRAINING = "training"
    POST_TRAINING = "post_training"
    CLEANUP = "cleanup"
    DONE = "done"


class ServingState(StrEnum):
    RUNNING = "running"  # deployed and answering (or being redeployed after a loss)
    FAILED = "failed"  # lost more often than the manager redeploys it: down until the project is served anew
    STOPPED = "stopped"  # undeployed on request


class ServingStatus(BaseModel):
    """A completed project's model endpoint, as the manager's serving watch last saw it."""

    state: ServingState = ServingState.RUNNING
    restarts: int = Field(default=0, description="redeploys after the endpoint was lost")
    detail: str | None = Field(default=None, description="why it was last lost (one line)")


class Progress(BaseModel):
    round: int = 0
    total_rounds: int = 0
    cycle: int = 0
    total_cycles: int = 0
    loss: float | None = None
    accuracy: float | None = None
    dp_epsilon: float | None = Field(
        default=None,
        description="differential privacy: ε spent so far (at dp_delta); hierarchical: the highest of the clusters'",
    )
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    dp_clipping_norm: float | None = None
    reason: str | None = Field(
        default=None, description="why training ended before its planned rounds, e.g. 'privacy budget reached'"
    )


class RoundRecord(BaseModel):
    """One finished round as an aggregator reported it (TrainingProgress), kept with the project.

    Classic: one per round (``cluster`` None). Hierarchical: one per cluster round, plus one
    per cycle for the root's aggregation (``cluster`` None, ``round`` = rounds per cycle).
    """

    project_id: str
    round: int = Field(ge=0, description="round within the cycle")
    cycle: int = Field(default=1, ge=1)
    cluster: str | None = Field(default=None, description="None: a global (classic or root) round")
    step: int = Field(ge=0, description="global round index: (cycle - 1) * rounds per cycle + round")
    participants: int = 0
    num_examples: int = 0
    duration_s: float = Field(default=0.0, ge=0, description="the aggregator's measured round (or cycle) time")
    metrics: dict[str, float] = Field(default_factory=dict, description="loss, accuracy ... as reported")
    at: float = Field(default_factory=time.time, description="when the manager received the report")


class ServiceEntry(BaseModel):
    """One service a project deployed, typed: what it is, not what its name suggests."""

    name: str
    kind: str = Field(description="service kind (orchestrator_adapters.base.ServiceKind)")
    role: str | None = Field(default=None, description="aggregators: classic, root or cluster")
    cluster: str | None = None
    app: str = Field(default="project", description="the app it lives in: project, or observatory (the observer)")
    service_id: str = Field(description="the adapter's service id")


class ProjectRecord(BaseModel):
    project_id: str
    customer: str
    sla: dict[str, Any]
    orchestrator: str = "local"
    status: ProjectStatus = ProjectStatus.PENDING
    phase: ProjectPhase = ProjectPhase.QUEUED
    progress: Progress = Field(default_factory=Progress)
    error: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    tracking_url: str | None = None
    mlflow_run_id: str | None = None
    mlflow_experiment: str | None = Field(default=None, description="the project's MLflow experiment (its name)")
    mlflow_run_url: str | None = Field(default=None, description="the MLflow GUI page of the project's run")
    training_eta_at: float | None = Field(
        default=None,
        description="when training is expected to end (epoch s), from measured round and cycle "
        "times; updated every round",
    )
    phase_started: dict[str, float] = Field(
        default_factory=dict, description="phase -> when it began (epoch s), in the order the phases ran"
    )
    registered_model: str | None = None
    build: dict[str, Any] = Field(default_factory=dict, description="digest, cached, seconds, images")
    model_image: str | None = None
    serving_url: str | None = None
    serving: ServingStatus | None = Field(default=None, description="the serving endpoint's state, restarts and loss")
    services: dict[str, str] = Field(default_factory=dict, description="service name -> adapter service id")
    service_entries: list[ServiceEntry] = Field(
        default_factory=list,
        description="the same services, typed (records of older managers have none: "
        "manager.lifecycle.service_entries reads their names)",
    )
    apps: dict[str, str] = Field(default_factory=dict, description="app kind -> adapter app id")
    sealed: dict[str, str] = Field(
        default_factory=dict,
        exclude=True,
        description="encrypted secrets (manager.security.secret_box); stored, never served: dumps leave them out",
    )

    def storage_document(self) -> dict[str, Any]:
        """The whole record as the store keeps it: the JSON dump plus the sealed secrets."""
        return {**self.model_dump(mode="json"), "sealed": dict(self.sealed)}


class EventRecord(BaseModel):
    project_id: str
    event_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        description="unique; a write retried after a lost answer is stored once",
    )
    seq: int = 0  # assigned by the store, increasing per project
    at: float = Field(default_factory=time.time)
    source: str = "manager"
    level: str = "info"
    text: str


class ProjectTiming(BaseModel):
    """Live times of a project, computed when served (the stored record keeps only instants)."""

    elapsed_s: float = Field(description="since the project was accepted (until it finished)")
    eta_s: float | None = Field(
        default=None,
        description="seconds until training is expected to end, from measured round and cycle times "
        "(None until the first round is done; 0 once training is over)",
    )
    phase_seconds: dict[str, float] = Field(
        default_factory=dict, description="time spent in each phase so far, the current one included"
    )


TRAINING_OVER = (ProjectPhase.POST_TRAINING, ProjectPhase.CLEANUP, ProjectPhase.DONE)


def project_timing(record: ProjectRecord, now: float | None = None) -> ProjectTiming:
    now = time.time() if now is None else now
    end = record.finished_at if record.finished_at is not None else now
    phases = sorted(record.phase_started.items(), key=lambda item: item[1])
    seconds: dict[str, float] = {}
    for index, (phase, started) in enumerate(phases):
        if phase == ProjectPhase.DONE.value:
            continue
        until = phases[index + 1][1] if index + 1 < len(phases) else end
        seconds[phase] = round(max(until - started, 0.0), 3)
    eta: float | None = None
    if record.phase in TRAINING_OVER and record.training_eta_at is not None:
        eta = 0.0
    elif record.training_eta_at is not None and not record.status.finished:
        eta = round(max(record.training_eta_at - now, 0.0), 1)
    return ProjectTiming(elapsed_s=round(max(end - record.created_at, 0.0), 3), eta_s=eta, phase_seconds=seconds)
