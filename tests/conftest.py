"""Shared fixtures: one management suite (password-protected Mosquitto + SecantusDB) per session.

Fixtures: ``suite`` (SuiteEndpoints), ``mqtt_settings`` (MqttSettings), ``mongo_uri`` (str),
``mongo_db_name`` (a fresh database name per test, dropped afterwards). Tests that need
their own suite (e.g. with a registry) call ``manager.suite.start_suite`` on a tmp dir.
The session fails when a process it started outlives it (``tests/leak_check.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pymongo
import pytest

from flops_utils.service_config import MqttSettings
from manager.suite import SuiteEndpoints, SuiteError, start_suite, stop_suite
from tests.leak_check import pytest_configure, pytest_sessionfinish  # noqa: F401 - the session's leak check
from tests.mlflow_file_store import file_tracking  # noqa: F401 - a fixture of the MLflow tests


def _stop_quietly(state_dir: Path) -> None:
    with contextlib.suppress(SuiteError, OSError):
        stop_suite(state_dir)


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # pytest turns KeyboardInterrupt into an orderly stop that still runs fixture teardown.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteEndpoints]:
    state_dir = tmp_path_factory.mktemp("suite")
    # Belt and braces: the finalizer below, atexit if pytest dies past it, SIGTERM -> teardown.
    atexit.register(_stop_quietly, state_dir)
    previous_handler = signal.getsignal(signal.SIGTERM)
    if previous_handler is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        yield start_suite(state_dir)
    finally:
        stop_suite(state_dir)
        if previous_handler is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def mqtt_settings(suite: SuiteEndpoints) -> MqttSettings:
    return suite.mqtt


@pytest.fixture(scope="session")
def mongo_uri(suite: SuiteEndpoints) -> str:
    return suite.mongo_uri


@pytest.fixture()
def mongo_db_name(request: pytest.FixtureRequest, mongo_uri: str) -> Iterator[str]:
    """A database name no other test uses; the database is dropped after the test."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    yield name
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    except pymongo.errors.PyMongoError:
        pass  # the test may have stopped the server; the suite's data dir is temporary anyway
    finally:
        client.close()
