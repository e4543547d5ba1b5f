"""Per-customer quotas: how many projects may run at once, how many observatories (MLflow servers) may live.

An MLflow server costs about 0.6 GB, and any new ``customerID`` in an admin's POST
would start one; a customer's runaway script could start projects without end. The
checks are made before anything is created, so a refused request leaves nothing behind.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QuotaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_active_projects: int = Field(
        default=10, ge=1, description="unfinished projects one customer may have at once; more answer 429"
    )
    max_observatories: int = Field(
        default=20,
        ge=1,
        description="observatories (MLflow servers) running at once, all customers together; a customer "
        "whose observatory is not running gets 409 while the limit is reached",
    )
    observatory_idle_s: float = Field(
        default=3600.0,
        ge=0,
        description="an observatory whose customer has no unfinished project and that nobody used for this "
        "long is stopped (its store is kept; it starts again on demand); 0: never",
    )


class QuotaExceeded(Exception):
    """A request would go past a quota; ``status`` is the HTTP answer (429 or 409)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def check_active_projects(customer: str, active: int, quotas: QuotaSettings) -> None:
    if active >= quotas.max_active_projects:
        raise QuotaExceeded(
            f"customer {customer!r} already has {active} unfinished project(s), the most allowed at once "
            f"(quotas.max_active_projects = {quotas.max_active_projects}); stop one or wait until one ends",
            429,
        )


def check_observatories(customer: str, running: set[str], quotas: QuotaSettings) -> None:
    """``running``: the customers whose observatory runs now. The customer's own never counts against it."""
    if customer not in running and len(running) >= quotas.max_observatories:
        raise QuotaExceeded(
            f"no observatory can be started for {customer!r}: {len(running)} are running, the most allowed "
            f"(quotas.max_observatories = {quotas.max_observatories}); try again when an idle one has been stopped",
            409,
        )
