"""Schemathesis fuzzes the running API from its own OpenAPI document, as an outside probe would.

Every check (``--checks all``: no 5xx, status codes, content types, headers and bodies as
documented, negative data refused, positive data accepted, authentication not ignored, ...)
but one in every phase (examples, coverage, fuzzing and the stateful phase, which chains calls
through the ``Location`` of a created project), once with the admin's token and once with a
customer's. The run is deterministic so CI cannot flake on a lucky case. ``tests/schemathesis.toml``
says what the API documents that a generic check cannot know (413 for large bodies; 422 for the
SLA's rules across fields). The one check left out, ``use_after_free``, expects a resource to be
gone after its DELETE: ``DELETE /projects/<id>`` stops a project and keeps its record (STOPPED,
with its events) for reading, as documented.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from flops_utils.service_config import MqttSettings
from tests.api_harness import ADMIN_TOKEN, ALICE_TOKEN, RunningApi, running_api

MAX_EXAMPLES = 40
CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")
SEED = 20261206


@pytest.fixture(scope="module")
def api(mongo_uri: str, mqtt_settings: MqttSettings) -> Iterator[RunningApi]:
    database = f"t_fuzz_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as running:
        yield running
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    client.drop_database(database)
    client.close()


@pytest.mark.parametrize("token", [ADMIN_TOKEN, ALICE_TOKEN], ids=["admin", "customer"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    api: RunningApi, token: str, tmp_path: Path
) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG_FILE),
        "run",
        f"{api.url}/openapi/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "use_after_free",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",
        "--request-timeout",
        "30",
        "--max-failures",
        "20",
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = done.stdout + done.stderr
    (tmp_path / "schemathesis.txt").write_text(output)  # the whole report, for a failure's reader
    assert done.returncode == 0, f"{tmp_path / 'schemathesis.txt'}:\n{output[-12_000:]}"
    assert "No issues found" in output or " passed" in output, output[-3_000:]
    assert "Stateful" in output, output[-3_000:]  # the stateful phase ran
