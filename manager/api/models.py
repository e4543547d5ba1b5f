"""Request and response documents of the REST API (they make up its OpenAPI description)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from manager.records import (
    EventRecord,
    Progress,
    ProjectPhase,
    ProjectRecord,
    ProjectStatus,
    ProjectTiming,
    RoundRecord,
    project_timing,
)

MAX_SEQUENCE = 2**63 - 1  # event sequence numbers are the database's signed 64-bit integers


class ErrorDetail(BaseModel):
    field: str = Field(description="dotted path of the offending field, e.g. training_configuration.min_fit_clients")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="one line saying what went wrong")
    details: list[ErrorDetail] = Field(default_factory=list)


class ProjectPath(BaseModel):
    project_id: str = Field(min_length=1, max_length=200)


class ServiceConfigPath(BaseModel):
    config_id: str = Field(min_length=1, max_length=64)


class EventsQuery(BaseModel):
    after: int = Field(default=0, ge=0, le=MAX_SEQUENCE, description="return events with a sequence number above this")
    limit: int = Field(default=1000, ge=1, le=1000)


class ProjectList(BaseModel):
    projects: list[ProjectRecord]


class ProjectView(ProjectRecord, ProjectTiming):
    """A project as served: the stored record plus its live times (elapsed, ETA, per phase)."""

    @classmethod
    def of(cls, record: ProjectRecord) -> ProjectView:
        return cls.model_validate({**record.model_dump(), **project_timing(record).model_dump()})


class EventsResponse(BaseModel):
    project_id: str
    status: ProjectStatus
    phase: ProjectPhase
    finished: bool = Field(description="the project reached COMPLETED, FAILED or STOPPED")
    progress: Progress
    elapsed_s: float = Field(description="since the project was accepted (until it finished)")
    eta_s: float | None = Field(default=None, description="seconds until training is expected to end")
    mlflow_run_url: str | None = None
    error: str | None = None
    events: list[EventRecord]


class RoundsResponse(BaseModel):
    project_id: str
    rounds: list[RoundRecord] = Field(description="ordered by step; a cycle's cluster rounds before the root's")
    plot_url: str = Field(description="the learning curve (PNG) of these rounds")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: list[list[float]] = Field(min_length=1, max_length=10_000, description="rows of model input features")


class PredictResponse(BaseModel):
    project_id: str
    predictions: list[Any]


class TrackingResponse(BaseModel):
    customer: str
    tracking_url: str
    ca_pem: str | None = Field(
        default=None,
        description="the CA to verify an HTTPS tracking server with "
        "(MLFLOW_TRACKING_SERVER_CERT_PATH for MLflow clients)",
    )


class ResetResponse(BaseModel):
    status: Literal["reset"] = "reset"


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    broker: bool
