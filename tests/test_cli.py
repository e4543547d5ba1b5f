"""The real ``flops`` console script, run as a subprocess against the running API (and a real suite)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests

from flops_utils.process_groups import free_port
from flops_utils.repo_credentials import RepoCredentials
from flops_utils.service_config import MqttSettings
from manager.cli import defaults as cli_defaults
from manager.cli.client import FlopsClient
from manager.cli.main import _serving_text
from manager.cli.main import main as cli_main
from manager.cli.watch import watch_project
from manager.settings import DEFAULT_PORT
from manager.suite.suite import STATE_DIR_ENV
from tests.api_harness import ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, PRUNED_MANIFEST, RunningApi, running_api
from tests.helpers import wait_until

FLOPS = str(Path(sys.executable).with_name("flops"))
SLA: dict[str, Any] = {"ml_repo_url": "https://example.org/ml/mnist.git", "ml_model_flavor": "sklearn"}


@pytest.fixture(scope="module")
def api(mongo_uri: str, mqtt_settings: MqttSettings) -> Iterator[RunningApi]:
    database = f"t_cli_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as running:
        yield running
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    client.drop_database(database)
    client.close()


@pytest.fixture()
def sla_file(tmp_path: Path) -> Iterator[Any]:
    def write(**changes: Any) -> Path:
        path = tmp_path / f"sla-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({**SLA, **changes}))
        return path

    yield write


def flops(
    *args: str, url: str | None = None, token: str | None = None, suite_dir: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOPS_")}
    env["FLOPS_SUITE_DIR"] = str(suite_dir or Path("/nonexistent-flops-suite"))
    if url is not None:
        env["FLOPS_URL"] = url
    if token is not None:
        env["FLOPS_TOKEN"] = token
    return subprocess.run([FLOPS, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def one_error_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flops: ") and "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def started_id(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("started project ") and first.endswith("(PENDING)"), done.stdout
    return first.split()[2]


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        [],
        ["project"],
        ["project", "start"],
        ["project", "list"],
        ["project", "status"],
        ["project", "watch"],
        ["project", "stop"],
        ["project", "predict"],
        ["project", "metrics"],
        ["tracking"],
        ["mocks"],
        ["mocks", "push"],
        ["db"],
        ["db", "reset"],
        ["cache"],
        ["cache", "prune"],
        ["suite"],
        ["suite", "up"],
        ["suite", "down"],
        ["suite", "status"],
        ["suite", "registry-gc"],
        ["data"],
        ["data", "push"],
        ["data", "list"],
        ["data", "delete"],
        ["data", "token"],
        ["data", "server-config"],
    ]
    for command in commands:  # in-process: 19 interpreter start-ups would cost more than the rest of this file
        with pytest.raises(SystemExit) as exited:
            cli_main([*command, "--help"])
        assert exited.value.code == 0, command
        assert capsys.readouterr().out.startswith("usage: flops"), command
    script = subprocess.run([FLOPS, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert script.returncode == 0 and "project" in script.stdout and "suite" in script.stdout
    group = flops("project")
    assert group.returncode == 2 and "usage: flops project" in group.stderr


def test_registry_gc_without_a_suite_registry_is_one_clear_line(tmp_path: Path) -> None:
    line = one_error_line(flops("suite", "registry-gc", suite_dir=tmp_path / "no-suite"), "registry's garbage")
    assert "no suite in" in line and "start it first" in line, line


def test_cli_defaults_agree_with_the_manager_and_suite() -> None:
    assert cli_defaults.DEFAULT_PORT == DEFAULT_PORT
    assert cli_defaults.SUITE_DIR_ENV == STATE_DIR_ENV


def test_start_list_status_stop(api: RunningApi, sla_file: Any) -> None:
    project_id = started_id(flops("project", "start", str(sla_file()), url=api.url, token=ALICE_TOKEN))
    listed = flops("project", "list", url=api.url, token=ALICE_TOKEN)
    assert listed.returncode == 0 and project_id in listed.stdout and "PENDING" in listed.stdout
    assert project_id not in flops("project", "list", url=api.url, token=BOB_TOKEN).stdout
    as_json = json.loads(flops("--json", "project", "list", url=api.url, token=ALICE_TOKEN).stdout)
    assert project_id in [p["project_id"] for p in as_json["projects"]]

    status = flops("project", "status", project_id, url=api.url, token=ALICE_TOKEN)
    assert status.returncode == 0 and f"project:     {project_id}" in status.stdout
    assert "status:      PENDING" in status.stdout and "round 0/3" in status.stdout

    stopped = flops("project", "stop", project_id, url=api.url, token=ALICE_TOKEN)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"project {project_id} STOPPING"  # in the background
    assert wait_until(
        lambda: "status:      STOPPED" in flops("project", "status", project_id, url=api.url, token=ALICE_TOKEN).stdout,
        30,
        interval=0.2,
    )
    one_error_line(flops("project", "stop", project_id, url=api.url, token=ALICE_TOKEN), "already STOPPED", "409")
    one_error_line(flops("project", "status", project_id, url=api.url, token=BOB_TOKEN), "no project", "404")


def test_a_private_repository_token_comes_from_the_environment_and_is_never_shown(
    api: RunningApi, sla_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("MODEL_REPO_TOKEN", token)
    path = sla_file(ml_repo_url="https://git.example.org/ml/private.git")
    done = flops(
        "--json",
        "project",
        "start",
        str(path),
        "--repo-user",
        "alice",
        "--repo-token-env",
        "MODEL_REPO_TOKEN",
        url=api.url,
        token=ALICE_TOKEN,
    )
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["sla"]["ml_repo_url"] == "https://git.example.org/ml/private.git"
    assert "repo_credentials" not in record["sla"]
    started = [argument[0] for name, argument in api.control.calls if name == "start_project"]
    assert started[-1].repo_credentials == RepoCredentials(username="alice", password=token)

    one_error_line(
        flops("project", "start", str(path), "--repo-user", "alice", url=api.url, token=ALICE_TOKEN),
        "--repo-user and --repo-token-env go together",
    )
    one_error_line(
        flops(
            "project",
            "start",
            str(path),
            "--repo-user",
            "a",
            "--repo-token-env",
            "NO_SUCH_VARIABLE_X",
            url=api.url,
            token=ALICE_TOKEN,
        ),
        "NO_SUCH_VARIABLE_X is not set",
    )


def test_start_watch_shows_progress_and_events_until_completed(api: RunningApi, sla_file: Any) -> None:
    path = sla_file(ml_repo_url="https://example.org/simulate.git", training_configuration={"training_rounds": 4})
    done = flops("project", "start", str(path), "--watch", url=api.url, token=ALICE_TOKEN)
    project_id = started_id(done)
    lines = done.stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in lines if "aggregator: " in line] == [
        f"round {n} done" for n in range(1, 5)
    ]
    assert any("round 4/4" in line and "100%" in line for line in lines), done.stdout
    assert lines[-1] == f"project {project_id} COMPLETED: accuracy 0.5400"
    # Not a terminal: each progress state is printed once, however often it was polled or events came between.
    progress = [line for line in lines if line.startswith("[")]
    states = [line.split("  elapsed ")[0] for line in progress]
    assert len(states) == len(set(states)), done.stdout
    for number in range(1, 5):
        assert sum(f"round {number}/4 " in line for line in progress) == 1, done.stdout
    assert "\r" not in done.stdout and "\x1b" not in done.stdout
    assert all("  elapsed " in line for line in progress), done.stdout
    assert any("  ETA " in line for line in progress if "round 1/4" in line), done.stdout

    status = flops("project", "status", project_id, url=api.url, token=ALICE_TOKEN)
    assert "elapsed:" in status.stdout and "phases:      training " in status.stdout, status.stdout


def test_watch_on_a_terminal_redraws_one_progress_line_in_place(api: RunningApi, sla_file: Any) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    path = sla_file(ml_repo_url="https://example.org/simulate.git", training_configuration={"training_rounds": 3})
    project_id = started_id(flops("project", "start", str(path), url=api.url, token=ALICE_TOKEN))
    out = Terminal()
    answer = watch_project(FlopsClient(api.url, ALICE_TOKEN), project_id, out, interval_s=0.05)
    assert answer["status"] == "COMPLETED"
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3  # redrawn in place
    pieces = [piece for chunk in text.split("\r\x1b[K") for piece in chunk.split("\n")]
    assert all(piece.count("] ") <= 1 for piece in pieces), text  # never two bars on one line
    assert any("round 3/3" in piece and "100%" in piece and "elapsed " in piece for piece in pieces), text
    assert text.endswith(f"project {project_id} COMPLETED: accuracy 0.5300\n")


def test_metrics_prints_the_rounds_as_a_table_or_csv(api: RunningApi, sla_file: Any) -> None:
    path = sla_file(ml_repo_url="https://example.org/simulate.git", training_configuration={"training_rounds": 2})
    project_id = started_id(flops("project", "start", str(path), "--watch", url=api.url, token=ALICE_TOKEN))
    table = flops("project", "metrics", project_id, url=api.url, token=ALICE_TOKEN)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["STEP", "CYCLE", "ROUND", "CLUSTER", "LEARNERS", "SECONDS", "ACCURACY", "LOSS"]
    assert [line.split() for line in lines[1:3]] == [
        ["1", "1", "1", "(global)", "2", "0.2", "0.5100", "0.4900"],
        ["2", "1", "2", "(global)", "2", "0.2", "0.5200", "0.4800"],
    ]
    assert lines[3] == f"learning curve: /api/flops/projects/{project_id}/rounds/plot.png"
    as_csv = flops("project", "metrics", project_id, "--csv", url=api.url, token=ALICE_TOKEN)
    assert as_csv.returncode == 0 and as_csv.stdout.splitlines()[0] == (
        "step,cycle,round,cluster,participants,num_examples,duration_s,accuracy,loss,at"
    )
    assert [row.split(",")[:3] for row in as_csv.stdout.splitlines()[1:]] == [["1", "1", "1"], ["2", "1", "2"]]
    as_json = json.loads(flops("--json", "project", "metrics", project_id, url=api.url, token=ALICE_TOKEN).stdout)
    assert len(as_json["rounds"]) == 2
    one_error_line(flops("project", "metrics", project_id, "--csv", url=api.url, token=BOB_TOKEN), "no project", "404")


def test_watch_exits_non_zero_when_the_project_fails(api: RunningApi, sla_file: Any) -> None:
    path = sla_file(ml_repo_url="https://example.org/simulate-fail.git", training_configuration={"training_rounds": 2})
    project_id = started_id(flops("project", "start", str(path), url=api.url, token=BOB_TOKEN))
    watched = flops("project", "watch", project_id, url=api.url, token=BOB_TOKEN)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "round 2 done" in watched.stdout
    assert watched.stdout.splitlines()[-1].startswith(f"project {project_id} FAILED")
    assert "simulated failure" in watched.stdout
    one_error_line(flops("project", "watch", project_id, url=api.url, token=ALICE_TOKEN), "404")


def test_clear_one_line_errors(api: RunningApi, sla_file: Any, tmp_path: Path) -> None:
    bad = sla_file(training_configuration={"min_available_clients": 1, "min_fit_clients": 2})
    one_error_line(
        flops("project", "start", str(bad), url=api.url, token=ALICE_TOKEN),
        "training_configuration.min_fit_clients",
        "422",
    )
    one_error_line(flops("project", "list", url=api.url, token="wrong-token"), "invalid bearer token", "401")
    one_error_line(flops("project", "list", url=api.url), "missing bearer token", "401")
    dead = f"http://127.0.0.1:{free_port()}"
    assert one_error_line(flops("project", "list", url=dead, token=ALICE_TOKEN)) == (
        f"flops: cannot reach the FLOps manager at {dead}"
    )
    one_error_line(flops("project", "start", str(tmp_path / "missing.json"), url=api.url), "cannot read SLA file")
    (tmp_path / "broken.json").write_text("{")
    one_error_line(flops("project", "start", str(tmp_path / "broken.json"), url=api.url), "not valid JSON")
    one_error_line(flops("project", "status", "nope", url=api.url, token=ALICE_TOKEN), "no project 'nope'")


def test_tracking_mocks_and_predict(api: RunningApi, sla_file: Any, tmp_path: Path) -> None:
    tracking = flops("tracking", url=api.url, token=BOB_TOKEN)
    assert tracking.returncode == 0 and tracking.stdout.strip() == "http://127.0.0.1:5999/bob"

    pushed = flops(
        "mocks", "push", "--tag", "digits", "--partitions", "2", "--dirichlet", "0.3", url=api.url, token=ALICE_TOKEN
    )
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.splitlines() == ["pushed tag digits to 2 node(s)", "  node-0: 100 rows", "  node-1: 101 rows"]
    request = [arg for name, arg in api.control.calls if name == "push_mock_data"][-1]
    configuration = request.mock_data_configuration
    assert (configuration.distribution, configuration.dirichlet_alpha) == ("dirichlet", 0.3)
    assert request.customer_id == "alice"
    one_error_line(flops("mocks", "push", "--tag", "../x", "--partitions", "0", url=api.url, token=ALICE_TOKEN), "422")

    project_id = started_id(flops("project", "start", str(sla_file()), url=api.url, token=ALICE_TOKEN))
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([[1.0, 2.0]]))
    one_error_line(
        flops("project", "predict", project_id, "--input", str(inputs), url=api.url, token=ALICE_TOKEN),
        "no serving endpoint",
        "409",
    )


def test_db_reset_is_admin_only(mongo_uri: str, mqtt_settings: MqttSettings, sla_file: Any) -> None:
    database = f"t_cli_reset_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as api:
        started_id(flops("project", "start", str(sla_file()), url=api.url, token=ALICE_TOKEN))
        one_error_line(flops("db", "reset", url=api.url, token=ALICE_TOKEN), "only the admin", "403")
        assert len(api.store.list_projects()) == 1
        done = flops("db", "reset", "--yes", url=api.url, token=ADMIN_TOKEN)
        assert done.returncode == 0 and done.stdout.strip() == "database reset"
        assert api.store.list_projects() == []
    pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000).drop_database(database)


def test_cache_prune_sends_the_limit_and_prints_the_answer(api: RunningApi) -> None:
    one_error_line(flops("cache", "prune", url=api.url, token=ALICE_TOKEN), "only the admin", "403")
    done = flops("cache", "prune", "--older-than-days", "7", "--dry-run", url=api.url, token=ADMIN_TOKEN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("would remove 0 cache entries (0.0 MB); kept 0 in use"), done.stdout
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        "images: would remove 1 from the registry, 0 from local storage; kept 0 in use, 2 recent, 0 busy",
        f"  {PRUNED_MANIFEST}",
        "  note: local images not pruned: no storage",
    ], done.stdout
    sent = [argument for name, argument in api.control.calls if name == "prune_cache"][-1]
    assert (sent.older_than_days, sent.dry_run) == (7.0, True)


def test_suite_up_with_manager_then_down(tmp_path: Path) -> None:
    """The real flops-manager, started detached with a generated config; the CLI finds it by itself."""
    suite_dir = tmp_path / "suite"
    try:
        up = flops("suite", "up", "--manager", suite_dir=suite_dir, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        manager_line = next(line for line in up.stdout.splitlines() if line.startswith("manager: "))
        assert manager_line.startswith("manager: https://127.0.0.1:")  # secure by default, like the broker
        config = json.loads((suite_dir / "manager" / "config.json").read_text())
        assert (suite_dir / "manager" / "config.json").stat().st_mode & 0o077 == 0

        listed = flops("project", "list", suite_dir=suite_dir)  # URL, admin token and CA from the suite's config
        assert listed.returncode == 0 and listed.stdout.strip() == "no projects", listed.stderr
        url = manager_line.split()[1]
        with pytest.raises(requests.ConnectionError):  # plain HTTP gets no answer
            requests.get(url.replace("https://", "http://") + "/health", timeout=10)
        with pytest.raises(requests.exceptions.SSLError):  # nor a client that does not trust the suite's CA
            requests.get(url + "/health", timeout=10)
        assert requests.get(url + "/health", timeout=10, verify=config["tls_ca_file"]).status_code == 200
        one_error_line(flops("project", "list", url=url, token=config["admin_token"]), "TLS check", "--ca-file")
        trusted = flops("project", "list", "--ca-file", config["tls_ca_file"], url=url, token=config["admin_token"])
        assert trusted.returncode == 0 and trusted.stdout.strip() == "no projects", trusted.stderr
        status = flops("suite", "status", suite_dir=suite_dir)
        assert status.returncode == 0 and "manager: up" in status.stdout and "mosquitto: up" in status.stdout
        again = flops("suite", "up", "--manager", suite_dir=suite_dir, timeout=120)  # idempotent
        assert again.returncode == 0 and manager_line in again.stdout
        assert json.loads((suite_dir / "manager" / "config.json").read_text())["admin_token"] == config["admin_token"]
    finally:
        log_file = suite_dir / "manager" / "manager.log"
        down = flops("suite", "down", suite_dir=suite_dir, timeout=180)
    assert down.returncode == 0, down.stderr
    assert "FLOps manager stopping" in log_file.read_text()  # SIGTERM led to an orderly shutdown
    one_error_line(flops("project", "list", suite_dir=suite_dir), "cannot reach the FLOps manager")


def test_flops_manager_exits_2_with_a_clear_line_when_the_database_is_down(tmp_path: Path) -> None:
    config = tmp_path / "manager.json"
    config.write_text(
        json.dumps(
            {
                "admin_token": "a-long-admin-token",
                "port": free_port(),
                "state_dir": str(tmp_path / "state"),
                "mongo_uri": f"mongodb://127.0.0.1:{free_port()}",
                "db_timeout_s": 0.5,
            }
        )
    )
    manager = str(Path(sys.executable).with_name("flops-manager"))
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOPS_")}
    done = subprocess.run([manager, "--config", str(config)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("flops-manager: cannot reach the database at mongodb://127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1
    bad = subprocess.run(
        [manager, "--config", str(tmp_path / "nope.json")], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 2 and "cannot read the manager config" in bad.stderr


def test_project_status_shows_a_lost_serving_endpoint_with_its_restarts_and_reason() -> None:
    url = "http://127.0.0.1:9001"
    assert _serving_text({"serving_url": url, "serving": {"state": "running", "restarts": 0}}) == url
    assert (
        _serving_text({"serving_url": url, "serving": {"state": "running", "restarts": 1}})
        == f"{url} (running, 1 restart)"
    )
    failed = {"state": "failed", "restarts": 3, "detail": "killed by SIGKILL"}
    assert _serving_text({"serving_url": url, "serving": failed}) == f"{url} (failed, 3 restarts: killed by SIGKILL)"
    assert _serving_text({"serving_url": None, "serving": {"state": "stopped"}}) == "stopped"
    assert _serving_text({}) is None
