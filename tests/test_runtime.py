"""Learner service behaviour with real Mosquitto and data servers (no manager).

Whole training runs (classic, hierarchical, a learner killed mid-training) are covered
through the real API in tests/test_e2e_training.py and tests/test_e2e_reliability.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flops_utils.mqtt_catalogue import (
    ControlCommand,
    ReportedState,
    ServiceStatus,
)
from flops_utils.mqtt_link import MqttLink
from flops_utils.process_groups import free_port
from manager.suite import SuiteEndpoints
from tests.runtime_helpers import (
    Inbox,
    Services,
    digits_partitions,
    learner_config,
    push_digits,
    start_data_servers,
    write_app_dir,
)

pytestmark = pytest.mark.timeout(900)

TAG = "digits"
RESULT_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def data_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Four data servers, each holding a quarter of digits under the tag ``digits``."""
    root = tmp_path_factory.mktemp("data")
    services = Services(root / "logs")
    try:
        addresses = start_data_servers(services, [f"data-{index}" for index in range(4)], root)
        for address, (x, y) in zip(addresses, digits_partitions(4), strict=True):
            push_digits(address, TAG, x, y)
        yield addresses
    finally:
        services.stop_all()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services(tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()


def _project(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _status(inbox: Inbox, sender: str) -> list[ReportedState]:
    return [m.state for m in inbox.of(ServiceStatus) if isinstance(m, ServiceStatus) and m.sender == sender]


def test_learner_without_data_reports_no_data(
    suite: SuiteEndpoints, data_servers: list[str], services: Services, tmp_path: Path
) -> None:
    project_id = _project("nodata")
    app_dir = write_app_dir(tmp_path / "app", project_id)
    inbox = Inbox(suite.mqtt, project_id)
    tags = ["absent", "more"]  # the server only holds "digits"
    config = learner_config(project_id, suite.mqtt, "node-empty", app_dir, 1, data_servers[0], tags, tmp_path / "l")
    learner = services.start("learner", "services.learner.main", config, cwd=app_dir)
    assert learner.process.wait(60) == 0, learner.log()
    status = inbox.wait_for(lambda m: isinstance(m, ServiceStatus) and m.state is ReportedState.NO_DATA, 10)
    assert isinstance(status, ServiceStatus), inbox.dump()
    assert status.detail == "no data for tags [absent, more] on node node-empty"


def test_learner_stops_on_stop_command(
    suite: SuiteEndpoints, data_servers: list[str], services: Services, tmp_path: Path
) -> None:
    project_id = _project("stop")
    app_dir = write_app_dir(tmp_path / "app", project_id)
    inbox = Inbox(suite.mqtt, project_id)
    nobody = free_port()  # no SuperLink there: the learner waits for its aggregator
    config = learner_config(project_id, suite.mqtt, "node-s", app_dir, nobody, data_servers[1], [TAG], tmp_path / "l")
    learner = services.start("learner", "services.learner.main", config, cwd=app_dir)
    started = inbox.wait_for(lambda m: isinstance(m, ServiceStatus) and m.state is ReportedState.STARTED, 60)
    assert started is not None, learner.log()
    link = MqttLink(suite.mqtt).connect()
    try:
        link.publish(ControlCommand(project_id=project_id, sender="manager", command="stop"))
        assert learner.process.wait(60) == 0, learner.log()
    finally:
        link.close()
    assert _status(inbox, "learner-node-s")[-1] is ReportedState.STOPPED
