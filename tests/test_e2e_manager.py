"""End to end: the CLI against a running manager, and a manager restarted mid-training."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import pytest

from flops_utils.mqtt_catalogue import TrainingProgress, project_filter
from flops_utils.mqtt_link import MqttLink
from flops_utils.service_config import MqttSettings
from tests.fixtures_stack import ADMIN_TOKEN, REPO_ROOT, FlopsStack, flops_stack, sla  # noqa: F401
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(900)
ROUNDS = 10


def flops(stack: FlopsStack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("flops")), "--url", stack.url, "--token", ADMIN_TOKEN, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env=dict(os.environ, FLOPS_SUITE_DIR="/nonexistent"))  # fmt: skip


def test_cli_pushes_data_starts_watches_and_lists(flops_stack: FlopsStack, tmp_path: Path) -> None:  # noqa: F811
    pushed = flops(flops_stack, "mocks", "push", "--tag", "digits-cli", "--partitions", "2", "--dirichlet", "1.0")
    assert pushed.returncode == 0, pushed.stderr
    request = sla("examples/sklearn_digits", ["digits-cli"], training_rounds=2, min_available_clients=2)
    sla_file = tmp_path / "sla.json"
    sla_file.write_text(json.dumps(request))

    started = flops(flops_stack, "--json", "project", "start", str(sla_file), "--watch")
    assert started.returncode == 0, started.stdout + started.stderr
    first_document, _ = json.JSONDecoder().raw_decode(started.stdout)
    project_id = first_document["project_id"]
    assert "round 2/2" in started.stdout + started.stderr

    listed = flops(flops_stack, "project", "list")
    assert listed.returncode == 0 and project_id[:8] in listed.stdout
    status = flops(flops_stack, "--json", "project", "status", project_id)
    assert json.loads(status.stdout)["status"] == "COMPLETED"

    unknown = flops(flops_stack, "project", "status", "does-not-exist")
    assert unknown.returncode != 0 and len(unknown.stderr.strip().splitlines()) == 1
    bad = sla_file.with_name("bad.json")
    bad.write_text(json.dumps({**request, "training_configuration": {"training_rounds": 0}}))
    refused = flops(flops_stack, "project", "start", str(bad))
    assert refused.returncode != 0 and "training_configuration.training_rounds" in refused.stderr


def test_manager_restart_mid_training_resumes_the_project(flops_stack: FlopsStack,  # noqa: F811
                                                          mqtt_settings: MqttSettings) -> None:
    flops_stack.push_mocks("digits-restart", 2)
    request = sla("examples/sklearn_digits", ["digits-restart"], training_rounds=ROUNDS, min_available_clients=2)
    project_id = flops_stack.submit(request)
    rounds: queue.Queue[int] = queue.Queue()  # what the aggregator reports, heard on the broker
    listener = MqttLink(mqtt_settings)
    listener.subscribe(project_filter(project_id), lambda _topic, message: rounds.put(message.round)
                       if isinstance(message, TrainingProgress) else None)  # fmt: skip
    listener.connect()
    try:
        assert wait_until(lambda: flops_stack.project(project_id)["progress"]["round"] >= 2, 400, interval=0.5)

        def two_rounds_pass() -> None:  # two rounds end while no manager runs
            latest = 0
            while not rounds.empty():  # heard before the kill
                latest = max(latest, rounds.get_nowait())
            target = min(latest + 2, ROUNDS)
            while latest < target:
                latest = max(latest, rounds.get(timeout=300))

        # kill -9: no orderly goodbye to the broker or the database
        flops_stack.restart_manager(kill=True, while_down=two_rounds_pass)
    finally:
        listener.close()
    listed = flops_stack.api("GET", "/api/flops/projects").json()["projects"]
    assert project_id in [project["project_id"] for project in listed]

    project = flops_stack.wait(project_id)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["progress"]["round"] == ROUNDS
    events = flops_stack.events(project_id)
    assert "manager restarted: reconnected to the running training services" in events
    # Every round exactly once, also those reported while no manager was running (the broker kept them).
    for number in range(1, ROUNDS + 1):
        reported = [text for text in events if text.startswith(f"round {number}/{ROUNDS} done")]
        assert len(reported) == 1, (number, [text for text in events if text.startswith("round ")])
