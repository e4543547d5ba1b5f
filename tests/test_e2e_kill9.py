"""kill -9 of the processes around training: the builder, a node's data server, the observer, the serving endpoint.

Each test kills real processes of a running project (the local adapter's) and asserts what the
product promises: the project recovers (the event log names what was lost and redeployed, the
rounds go on) or fails at once with a one-line reason naming the process; nothing the lost
process started is left running, and the manager keeps answering. Learners, aggregators, MLflow,
the broker, the database and the manager are in ``tests/test_e2e_reliability.py`` and
``tests/test_e2e_manager.py``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from flops_utils.process_groups import start_ticks
from orchestrator_adapters.base import AppKind, AppRef
from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings
from orchestrator_adapters.local_process import Spawner, descendant_pids, owned_processes, process_alive
from tests.example_repos import commit_all, example_repo
from tests.fault_injection import kill_instance
from tests.fixtures_stack import FlopsStack, flops_stack, sla  # noqa: F401
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(300)


# -- what the tests share ---------------------------------------------------------------------
def _adapter_dir(stack: FlopsStack) -> Path:
    return stack.state_dir / "local-adapter"


def _adapter(stack: FlopsStack) -> LocalAdapter:
    return LocalAdapter(LocalAdapterSettings(state_dir=str(_adapter_dir(stack))))


def _project_app(stack: FlopsStack, project_id: str) -> AppRef:
    app_id = wait_until(lambda: stack.project(project_id)["apps"].get("project"), 60, interval=0.05)
    assert app_id, stack.project(project_id)
    return AppRef(app_id, f"project-{project_id[:8]}", AppKind.PROJECT, "Admin", project_id)


def _left_running(stack: FlopsStack, app: AppRef, *service: str) -> list[tuple[int, int | None]]:
    """Live processes the local adapter started for ``app`` (its ``service``), wherever they moved."""
    return owned_processes([Spawner(_adapter_dir(stack)).owner(app.app_id, *service)])


def _assert_responsive(stack: FlopsStack) -> None:
    began = time.monotonic()
    assert stack.api("GET", "/api/flops/projects").status_code == 200
    assert requests.get(f"{stack.url}/health", timeout=5).status_code == 200
    assert time.monotonic() - began < 5, "the manager answers slowly"


def _count(events: list[str], prefix: str) -> int:
    return sum(text.startswith(prefix) for text in events)


def _reached_round(stack: FlopsStack, project_id: str, round_: int) -> bool:
    project = stack.project(project_id)
    assert project["status"] not in ("FAILED", "STOPPED"), project["error"]
    return bool(project["progress"]["round"] >= round_)


def _slow_repo(tmp_path: Path, fit_delay_s: float) -> str:
    """The sklearn example whose fit_model sleeps: rounds long enough to kill something while they go on."""
    repo = Path(example_repo("sklearn_digits", tmp_path))
    code = (repo / "model_manager.py").read_text()
    signature = "    def fit_model(self) -> int:\n"
    assert signature in code
    code = code.replace(signature, signature + f"        __import__('time').sleep({fit_delay_s})\n")
    (repo / "model_manager.py").write_text(code)
    commit_all(repo, "fit_model takes its time")
    return str(repo)


# -- the builder ------------------------------------------------------------------------------
def _kill_builder_mid_build(stack: FlopsStack, app: AppRef, seen_pids: set[int]) -> list[tuple[int, int | None]]:
    """Wait for a builder that is working through a child (git, venv, pip) and SIGKILL the builder process alone,
    as ``kill -9 <pid>`` would; returns the children it left (they run in sessions of their own)."""

    def working() -> tuple[int, list[tuple[int, int | None]]] | None:
        service = _adapter(stack).state.read().apps[app.app_id].services.get("builder")
        instance = service.instances[0] if service and service.instances else None
        if instance is None or instance.pid in seen_pids or not process_alive(instance.pid, instance.start_ticks):
            return None
        children = [(child, start_ticks(child)) for child in descendant_pids(instance.pid)]
        return (instance.pid, children) if children else None

    found = wait_until(working, 120, interval=0.02)
    assert found, f"no builder at work: {stack.events(app.project_id or '')[-5:]}"
    pid, children = found
    seen_pids.add(pid)
    os.kill(pid, signal.SIGKILL)
    return children


def _fresh_environment_repo(tmp_path: Path) -> str:
    """The sklearn example with a requirement no other build has: its build creates an environment (pip runs)."""
    repo = Path(example_repo("sklearn_digits", tmp_path))
    requirements = repo / "requirements.txt"
    requirements.write_text(requirements.read_text() + f"numpy!=0.0.{uuid.uuid4().int % 10**9}\n")
    commit_all(repo, "a requirement of its own")
    return str(repo)


def test_a_builder_killed_mid_build_is_retried_once_and_the_project_completes(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    flops_stack.push_mocks("digits-k9-build", 2)
    request = sla("examples/sklearn_digits", ["digits-k9-build"], training_rounds=2, min_available_clients=2)
    request["ml_repo_url"] = _fresh_environment_repo(tmp_path)
    project_id = flops_stack.submit(request)
    app = _project_app(flops_stack, project_id)
    orphans = _kill_builder_mid_build(flops_stack, app, set())
    retried = "builder lost (killed by SIGKILL); retrying it once"
    assert wait_until(lambda: retried in flops_stack.events(project_id), 60, interval=0.1)
    assert not any(process_alive(*orphan) for orphan in orphans), "the killed builder's children outlived it"

    project = flops_stack.wait(project_id, timeout=240)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-10:])
    assert project["progress"]["round"] == 2
    assert _count(events, "builder lost (killed by SIGKILL); retrying it once") == 1, events
    assert not any(process_alive(*orphan) for orphan in orphans), "the killed builder's children outlived it"
    assert _left_running(flops_stack, app) == []
    _assert_responsive(flops_stack)


def test_a_builder_killed_twice_fails_the_project_with_a_one_line_reason(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    request = sla("examples/sklearn_digits", ["digits-k9-build"], training_rounds=2, min_available_clients=2)
    request["ml_repo_url"] = _fresh_environment_repo(tmp_path)
    project_id = flops_stack.submit(request)
    app = _project_app(flops_stack, project_id)
    seen: set[int] = set()
    orphans = _kill_builder_mid_build(flops_stack, app, seen)
    orphans += _kill_builder_mid_build(flops_stack, app, seen)

    project = flops_stack.wait(project_id, timeout=120)
    events = flops_stack.events(project_id)
    assert project["status"] == "FAILED", events[-10:]
    assert project["error"] == "builder lost (killed by SIGKILL), also on its retry", project["error"]
    assert _count(events, "builder lost (killed by SIGKILL); retrying it once") == 1, events
    assert not any(process_alive(*orphan) for orphan in orphans), "the killed builders' children outlived them"
    assert _left_running(flops_stack, app) == []
    _assert_responsive(flops_stack)


# -- a node's data server -----------------------------------------------------------------------
def test_a_killed_data_server_is_restarted_with_its_data_and_a_redeployed_learner_fetches_again(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The data server and the learner of one node die together: the fleet restarts the server on its address with
    its data, the learner is redeployed, loads its data from it and training (which needs both learners) goes on."""
    flops_stack.push_mocks("digits-k9-data", 2)
    rounds = 30
    request = sla("examples/sklearn_digits", ["digits-k9-data"], training_rounds=rounds, min_available_clients=2)
    request["ml_repo_url"] = _slow_repo(tmp_path, 0.2)
    project_id = flops_stack.submit(request)
    assert wait_until(lambda: _reached_round(flops_stack, project_id, 1), 180, interval=0.2)
    project = flops_stack.project(project_id)
    learner = sorted(name for name in project["services"] if name.startswith("learner-"))[0]
    node = learner.removeprefix("learner-")
    adapter = _adapter(flops_stack)
    server = adapter.state.read().data_servers[node]
    os.killpg(server.pid, signal.SIGKILL)  # the data server's process group, as kill -9 -<pgid>
    kill_instance(adapter, _project_app(flops_stack, project_id), project["services"][learner])

    project = flops_stack.wait(project_id, timeout=240)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-10:])
    assert project["progress"]["round"] == rounds
    restarted = [text for text in events if text.startswith(f"data server of node {node} lost (")]
    assert len(restarted) == 1 and f"restarted at {server.address} with its data" in restarted[0], restarted
    assert _count(events, f"{learner} lost (") == 1, events
    after = events.index(restarted[0])
    assert any(" done in " in text and "with 2 learners" in text for text in events[after:]), events[after:]
    now = adapter.state.read().data_servers[node]
    assert now.address == server.address and process_alive(now.pid, now.start_ticks)
    assert _left_running(flops_stack, _project_app(flops_stack, project_id)) == []
    _assert_responsive(flops_stack)


def test_a_data_server_killed_while_its_learner_starts_is_restarted_and_training_completes(
    flops_stack: FlopsStack,  # noqa: F811
) -> None:
    """Killed while its learner is starting (waiting for it, listing the tags or loading the rows): the learner waits
    for the restarted server or is redeployed once, and the first round (which needs both learners) happens."""
    flops_stack.push_mocks("digits-k9-fetch", 2)
    request = sla("examples/sklearn_digits", ["digits-k9-fetch"], training_rounds=2, min_available_clients=2)
    project_id = flops_stack.submit(request)
    app = _project_app(flops_stack, project_id)

    def a_learner_started() -> str | None:
        services = _adapter(flops_stack).state.read().apps[app.app_id].services
        learners = sorted(name for name in services if name.startswith("learner-") and services[name].instances)
        return learners[0] if learners else None

    learner = wait_until(a_learner_started, 180, interval=0.02)
    assert learner, flops_stack.events(project_id)[-5:]
    node = learner.removeprefix("learner-")
    server = _adapter(flops_stack).state.read().data_servers[node]
    os.killpg(server.pid, signal.SIGKILL)

    project = flops_stack.wait(project_id, timeout=240)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-10:])
    assert project["progress"]["round"] == 2
    restarted = [text for text in events if text.startswith(f"data server of node {node} lost (")]
    assert len(restarted) == 1 and f"restarted at {server.address} with its data" in restarted[0], restarted
    assert _count(events, f"{learner} lost (") <= 1, events  # lost at most once, depending on what it was doing
    assert _left_running(flops_stack, app) == []
    _assert_responsive(flops_stack)


# -- the project's observer ---------------------------------------------------------------------
def _observer_events(stack: FlopsStack, url: str) -> list[str]:
    answer = requests.get(
        f"{url}/events",
        headers={"Authorization": "Bearer admin-token-for-tests"},
        verify=str(stack.tracking_ca_file),
        timeout=5,
    )
    answer.raise_for_status()
    return [str(line) for line in answer.json()["events"]]


def test_a_killed_observer_is_redeployed_without_disturbing_training(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    flops_stack.push_mocks("digits-k9-observer", 2)
    rounds = 60  # 0.2 s each at least: the redeployed observer is up long before the last
    request = sla("examples/sklearn_digits", ["digits-k9-observer"], training_rounds=rounds, min_available_clients=2)
    request["ml_repo_url"] = _slow_repo(tmp_path, 0.2)
    project_id = flops_stack.submit(request)
    assert wait_until(lambda: _reached_round(flops_stack, project_id, 1), 180, interval=0.2)
    project = flops_stack.project(project_id)
    name = f"observer-{project_id[:8]}"
    deployed = next(text for text in flops_stack.events(project_id) if text.startswith(f"observer {name} deployed at "))
    url = deployed.rsplit(" ", 1)[-1]
    before = _observer_events(flops_stack, url)
    observatory = AppRef(project["apps"]["observatory"], "observatory-admin", AppKind.OBSERVATORY, "Admin")
    kill_instance(_adapter(flops_stack), observatory, project["services"]["observer"])

    lost = f"{name} lost (killed by SIGKILL); redeploying it, restart 1 of 3"
    assert wait_until(lambda: lost in flops_stack.events(project_id), 30, interval=0.2), flops_stack.events(project_id)[
        -10:
    ]
    assert flops_stack.project(project_id)["status"] == "RUNNING"
    # The redeployed observer serves its log from where it was and goes on logging the rounds.
    grown = wait_until(lambda: len(_observer_events(flops_stack, url)) > len(before) + 2, 60, interval=0.5)
    assert grown, "the redeployed observer does not log"
    assert _observer_events(flops_stack, url)[: len(before)] == before

    project = flops_stack.wait(project_id, timeout=240)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-10:])
    assert project["progress"]["round"] == rounds
    assert _count(events, f"{name} lost") == 1, events
    done = [text.split(" done in ")[0] for text in events if text.startswith("round ") and " done in " in text]
    assert done == [f"round {n}/{rounds}" for n in range(1, rounds + 1)], done  # no round lost or repeated
    assert owned_processes([Spawner(_adapter_dir(flops_stack)).owner(observatory.app_id, name)]) == []
    _assert_responsive(flops_stack)


# -- the serving endpoint -----------------------------------------------------------------------
def _serving(stack: FlopsStack, project_id: str) -> dict[str, Any]:
    return dict(stack.project(project_id)["serving"] or {})


def test_a_killed_serving_endpoint_is_redeployed_until_its_limit_and_the_record_says_so(
    flops_stack: FlopsStack,  # noqa: F811
) -> None:
    flops_stack.push_mocks("digits-k9-serve", 2)
    request = sla("examples/sklearn_digits", ["digits-k9-serve"], training_rounds=2, min_available_clients=2)
    request["post_training_steps"] = ["deploy_trained_model_image"]
    project_id = flops_stack.submit(request)
    project = flops_stack.wait(project_id, timeout=240)
    assert project["status"] == "COMPLETED", project["error"]
    assert project["serving"] == {"state": "running", "restarts": 0, "detail": None}
    url, app = project["serving_url"], _project_app(flops_stack, project_id)
    rows = {"inputs": [[0.0] * 64]}

    kill_instance(_adapter(flops_stack), app, project["services"]["serving"])
    assert wait_until(lambda: _serving(flops_stack, project_id)["restarts"] == 1, 30, interval=0.2)
    assert wait_until(lambda: requests.get(f"{url}/ping", timeout=2).ok, 120, interval=0.5), "not redeployed"
    predicted = flops_stack.api("POST", f"/api/flops/projects/{project_id}/predict", json=rows)
    assert predicted.status_code == 200, predicted.text

    for restarts in (2, 3):  # lost again and again, each time before it answers
        kill_instance(_adapter(flops_stack), app, project["services"]["serving"])
        assert wait_until(lambda n=restarts: _serving(flops_stack, project_id)["restarts"] == n, 30, interval=0.2)
    kill_instance(_adapter(flops_stack), app, project["services"]["serving"])
    assert wait_until(lambda: _serving(flops_stack, project_id)["state"] == "failed", 30, interval=0.2)
    assert _serving(flops_stack, project_id) == {"state": "failed", "restarts": 3, "detail": "killed by SIGKILL"}
    events = flops_stack.events(project_id)
    assert [text for text in events if text.startswith("the model serving endpoint was lost")] == [
        *(
            f"the model serving endpoint was lost (killed by SIGKILL); redeploying it, restart {n} of 3"
            for n in (1, 2, 3)
        ),
        "the model serving endpoint was lost (killed by SIGKILL) after 3 restarts; it is not redeployed again",
    ]
    time.sleep(4)  # one more turn of the watch: no further redeploy
    assert _left_running(flops_stack, app) == []
    refused = flops_stack.api("POST", f"/api/flops/projects/{project_id}/predict", json=rows)
    assert refused.status_code == 503 and "\n" not in refused.json()["error"], refused.text
    assert "serving endpoint" in refused.json()["error"] and "killed by SIGKILL" in refused.json()["error"]
    _assert_responsive(flops_stack)


# -- the manager, during the build ---------------------------------------------------------------
def test_a_manager_killed_during_the_build_starts_the_project_over_and_leaves_no_builder_behind(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The builder outlives a kill -9 of the manager (it runs in a session of its own); the next manager stops it and
    what it started, and runs the project from the beginning (the phase table's START_OVER for the build)."""
    flops_stack.push_mocks("digits-k9-manager", 2)
    request = sla("examples/sklearn_digits", ["digits-k9-manager"], training_rounds=2, min_available_clients=2)
    request["ml_repo_url"] = _fresh_environment_repo(tmp_path)
    project_id = flops_stack.submit(request)
    app = _project_app(flops_stack, project_id)
    builder = wait_until(lambda: _left_running(flops_stack, app, "builder"), 120, interval=0.02)
    assert builder, flops_stack.events(project_id)[-5:]

    flops_stack.restart_manager(kill=True)
    assert not any(process_alive(*process) for process in builder), "the first builder outlived the restart"
    project = flops_stack.wait(project_id, timeout=240)
    events = flops_stack.events(project_id)
    assert project["status"] == "COMPLETED", (project["error"], events[-10:])
    assert project["progress"]["round"] == 2
    restarted = events.index("manager restarted: the project starts again from the beginning")
    assert _count(events[restarted:], "phase build") == 1, events
    assert _left_running(flops_stack, app) == []
    _assert_responsive(flops_stack)
