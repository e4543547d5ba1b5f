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


class Progress(BaseModel):
    round: int = 0
    total_rounds: int = 0
    cycle: int = 0
    total_cycles: int = 0
    loss: float | None = None
    accuracy: float | None = None


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
    registered_model: str | None = None
    build: dict[str, Any] = Field(default_factory=dict, description="digest, cached, seconds, images")
    model_image: str | None = None
    serving_url: str | None = None
    services: dict[str, str] = Field(default_factory=dict, description="service name -> adapter service id")
    apps: dict[str, str] = Field(default_factory=dict, description="app kind -> adapter app id")
    sealed: dict[str, str] = Field(
        default_factory=dict, exclude=True,
        description="encrypted secrets (manager.secret_box); stored, never served: dumps leave them out")

    def storage_document(self) -> dict[str, Any]:
        """The whole record as the store keeps it: the JSON dump plus the sealed secrets."""
        return {**self.model_dump(mode="json"), "sealed": dict(self.sealed)}


class EventRecord(BaseModel):
    project_id: str
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex,
                          description="unique; a write retried after a lost answer is stored once")  # fmt: skip
    seq: int = 0  # assigned by the store, increasing per project
    at: float = Field(default_factory=time.time)
    source: str = "manager"
    level: str = "info"
    text: str
