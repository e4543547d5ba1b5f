"""Where each customer's MLflow tracking server keeps its runs and artifacts.

By default under the manager's state directory, which only the local orchestrator's
processes share. On image-based orchestrators a tracking server runs in a container on
some node: its stores must live elsewhere to outlive the instance, e.g. the suite's
PostgreSQL and an artifact location the admin names.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

CUSTOMER = "{customer}"


class TrackingStore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend_store_uri: str = Field(
        description="SQLAlchemy URI of the customer's MLflow database, with {customer}, e.g. "
        "postgresql+psycopg2://mlflow:secret@db.example.org:5432/mlflow_{customer}; the tracking server "
        "creates a missing PostgreSQL database"
    )
    artifacts_destination: str = Field(
        description="the customer's artifact location, with {customer}, e.g. s3://flops-mlflow/{customer}, "
        "or a directory that survives the tracking server's container (a volume of its node)"
    )

    @field_validator("backend_store_uri", "artifacts_destination")
    @classmethod
    def _per_customer(cls, value: str) -> str:
        if CUSTOMER not in value:
            raise ValueError(f"must contain {CUSTOMER}: each customer's MLflow server keeps its own store")
        return value

    def for_customer(self, key: str) -> tuple[str, str]:
        """The backend store URI and artifact location of the customer with this key."""
        name = re.sub(r"[^a-z0-9_]", "_", key.lower())  # also a valid PostgreSQL database name
        return self.backend_store_uri.replace(CUSTOMER, name), self.artifacts_destination.replace(CUSTOMER, name)
