"""Schemathesis fuzzes the running API from its own OpenAPI document: no 5xx, every 4xx says why."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode

from flops_utils.service_config import MqttSettings
from tests.api_harness import ALICE_TOKEN, RunningApi, running_api

EXAMPLES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def api(mongo_uri: str, mqtt_settings: MqttSettings) -> Iterator[RunningApi]:
    database = f"t_fuzz_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as running:
        yield running
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    client.drop_database(database)
    client.close()


def check_answer(case: Case, status: int, content_type: str, body: Any) -> None:
    where = f"{case.method} {case.formatted_path} -> {status}: {str(body)[:300]}\nreproduce: {case.as_curl_command()}"
    assert status < 500, f"server error: {where}"
    if status >= 400:
        assert content_type.startswith("application/json"), f"error without JSON: {where}"
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), where
        assert "Traceback" not in body["error"], where


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_fuzzing_finds_no_server_error(api: RunningApi, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(api.url + "/openapi/openapi.json", timeout=30)
    headers = {"Authorization": f"Bearer {ALICE_TOKEN}"}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 10
    if mode is GenerationMode.NEGATIVE:  # nothing to make invalid in an operation without inputs
        operations = [op for op in operations if list(op.body) or list(op.query) or list(op.path_parameters)]
        assert len(operations) >= 5
    calls: list[int] = []

    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same cases on every run: CI cannot flake on a lucky seed
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Case) -> None:
            response = case.call(base_url=api.url, headers=headers, timeout=30)
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            check_answer(case, response.status_code, response.headers.get("content-type", [""])[0], body)
            calls.append(response.status_code)

        fuzz()

    assert len(calls) >= len(operations)
