"""Customers' MLflow stores outside the manager's host: per-customer PostgreSQL databases (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from pydantic import ValidationError

from manager.tracking_store import TrackingStore
from services.observer.tracking_server import ensure_database
from tests.postgres_server import PostgresServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_each_customer_gets_its_own_database_and_artifact_location() -> None:
    store = TrackingStore(
        backend_store_uri="postgresql+psycopg2://mlflow:pw@db:5432/mlflow_{customer}",
        artifacts_destination="s3://flops-mlflow/{customer}",
    )
    assert store.for_customer("acme-1ba6b9e0") == (
        "postgresql+psycopg2://mlflow:pw@db:5432/mlflow_acme_1ba6b9e0",
        "s3://flops-mlflow/acme_1ba6b9e0",
    )
    with pytest.raises(ValidationError, match="must contain {customer}: each customer's MLflow server keeps its own"):
        TrackingStore(backend_store_uri="postgresql+psycopg2://mlflow@db/mlflow", artifacts_destination="/a/{customer}")


def test_the_tracking_server_creates_its_database_and_runs_survive_a_new_server(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    uri = postgres.uri("mlflow_acme_1ba6b9e0")
    assert ensure_database(uri) is True
    assert ensure_database(uri) is False  # there already
    first = SqlAlchemyStore(uri, str(tmp_path / "artifacts"))  # what `mlflow server` opens: tables are created
    experiment_id = first.create_experiment("flops-p1")
    first.engine.dispose()
    replaced = SqlAlchemyStore(uri, str(tmp_path / "artifacts"))  # a tracking server started anew, anywhere
    assert replaced.get_experiment(experiment_id).name == "flops-p1"
    replaced.engine.dispose()
    assert ensure_database(uri.replace("mlflow_acme", "mlflow_other")) is True  # another customer, another database


def test_an_unreachable_database_is_one_clear_line(postgres: PostgresServer) -> None:
    wrong = postgres.uri("mlflow_x").replace("s3cret-pw", "wrong")
    with pytest.raises(SystemExit, match="cannot prepare the MLflow database mlflow_x at 127.0.0.1: .*password"):
        ensure_database(wrong)
