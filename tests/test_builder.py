"""The local-mode builder: real git, real virtualenvs, real pip, the service against real Mosquitto."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from flops_utils.mqtt_catalogue import (
    BuildResult,
    BuildStep,
    FlopsMessage,
    ReportedState,
    ServiceStatus,
    project_filter,
)
from flops_utils.mqtt_link import MqttLink
from flops_utils.process_groups import free_port
from flops_utils.repo_access import DEFAULT_DENIED_HOSTS, RepoAccessPolicy
from flops_utils.repo_credentials import RepoCredentials
from flops_utils.service_config import BuilderConfig, MqttSettings, config_environment
from manager.suite import SuiteEndpoints
from services.builder.environment import ensure_environment
from services.builder.errors import BuildError
from services.builder.local import build_local
from services.builder.source import fetch_source
from tests.example_repos import EXAMPLES_DIR, commit_all, example_repo, git
from tests.git_http_server import private_git_host

STEPS = ["clone", "contract", "dependencies", "environment", "augment", "verify"]
UNUSED_MQTT = MqttSettings(host="127.0.0.1", port=1)  # build_local never connects


@dataclass
class Build:
    result: BuildResult
    messages: list[FlopsMessage]
    seconds: float

    def steps(self) -> dict[str, BuildStep]:
        return {m.step: m for m in self.messages if isinstance(m, BuildStep)}


def _config(
    repo: str,
    cache_dir: Path,
    project_id: str = "p-build",
    mqtt: MqttSettings = UNUSED_MQTT,
    instance_name: str = "",
    **extra: object,
) -> BuilderConfig:
    return BuilderConfig.model_validate(
        {
            "project_id": project_id,
            "mqtt": mqtt,
            "instance_name": instance_name,
            "repo_url": repo,
            "flavor": "sklearn",
            "cache_dir": str(cache_dir),
            **extra,
        }
    )


def _build(repo: str, cache_dir: Path) -> Build:
    messages: list[FlopsMessage] = []
    started = time.monotonic()
    result = build_local(_config(repo, cache_dir), messages.append)
    return Build(result, messages, time.monotonic() - started)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("builder-cache")


@pytest.fixture(scope="module")
def sklearn_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    return example_repo("sklearn_digits", tmp_path_factory.mktemp("repos"))


@pytest.fixture(scope="module")
def first_build(sklearn_repo: str, cache_dir: Path) -> Build:
    return _build(sklearn_repo, cache_dir)


def test_first_build_creates_environment_and_app(first_build: Build, sklearn_repo: str) -> None:
    result = first_build.result
    steps = first_build.steps()
    assert list(steps) == STEPS
    assert all(step.outcome == "done" for step in steps.values()), steps
    assert first_build.messages[-1] == result
    assert result.commit == git(sklearn_repo, "rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{64}", result.digest)
    assert result.cached is False
    assert result.environment_dir and result.app_dir
    env, app = Path(result.environment_dir), Path(result.app_dir)
    assert app.name == result.digest
    assert (app / "model_manager.py").read_text() == (EXAMPLES_DIR / "sklearn_digits/model_manager.py").read_text()
    assert not (app / ".git").exists()
    pyproject = (app / "pyproject.toml").read_text()
    assert 'serverapp = "services.aggregator.server_app:app"' in pyproject
    assert 'clientapp = "services.learner.client_app:app"' in pyproject
    assert json.loads((app / "flops_build.json").read_text())["commit"] == result.commit
    assert steps["dependencies"].detail == "requirements.txt: numpy, scikit-learn>=1.4"
    assert result.total_seconds >= sum(step.duration_s for step in steps.values()) - 0.01

    # The environment runs the user's ModelManager next to the FL runtime, from the app directory.
    probe = (
        "import flwr, flops_utils, services, model_manager; m = model_manager.ModelManager(); "
        "print([a.shape for a in m.get_model_parameters()])"
    )
    completed = subprocess.run(
        [str(env / "bin" / "python"), "-c", probe], cwd=app, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[(10, 64), (10,)]"
    # Flower's entry points run with the environment's interpreter (its subprocesses see the user's packages).
    assert (env / "bin" / "flower-supernode").read_text().startswith(f"#!{env / 'bin' / 'python'}\n")


def test_generated_pyproject_is_a_valid_flower_app(first_build: Build) -> None:
    import tomllib

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.config import validate_config

    app = Path(str(first_build.result.app_dir))
    valid, errors, _warnings = validate_config(tomllib.loads((app / "pyproject.toml").read_text()), check_module=False)
    assert valid, errors
    assert len(build_fab_from_disk(app)) > 0


def test_second_build_of_the_same_commit_is_cached(first_build: Build, sklearn_repo: str, cache_dir: Path) -> None:
    second = _build(sklearn_repo, cache_dir)
    assert second.seconds < 5.0
    assert second.result.cached is True
    assert (second.result.digest, second.result.environment_dir, second.result.app_dir) == (
        first_build.result.digest,
        first_build.result.environment_dir,
        first_build.result.app_dir,
    )
    outcomes = {name: step.outcome for name, step in second.steps().items()}
    assert outcomes == {
        "clone": "done",
        "contract": "done",
        "dependencies": "done",
        "environment": "cached",
        "augment": "cached",
        "verify": "cached",
    }


def test_code_only_change_reuses_the_environment(
    first_build: Build, tmp_path: Path, cache_dir: Path, sklearn_repo: str
) -> None:
    repo = tmp_path / "changed"
    shutil.copytree(sklearn_repo, repo)
    model = repo / "model_manager.py"
    model.write_text(model.read_text().replace("LOCAL_ITERATIONS = 10", "LOCAL_ITERATIONS = 12"))
    new_commit = commit_all(repo, "more iterations")
    build = _build(str(repo), cache_dir)
    assert build.result.commit == new_commit != first_build.result.commit
    assert build.result.environment_dir == first_build.result.environment_dir
    assert build.result.app_dir != first_build.result.app_dir
    assert build.steps()["environment"].outcome == "cached"
    assert build.steps()["verify"].outcome == "done"
    assert build.result.cached is False
    assert "LOCAL_ITERATIONS = 12" in (Path(str(build.result.app_dir)) / "model_manager.py").read_text()


def _build_error(repo: str, cache_dir: Path) -> tuple[str, list[FlopsMessage]]:
    messages: list[FlopsMessage] = []
    with pytest.raises(BuildError) as caught:
        build_local(_config(repo, cache_dir), messages.append)
    reason = str(caught.value)
    assert "\n" not in reason
    return reason, messages


def test_unreachable_repositories_fail_with_gits_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo"
    reason, messages = _build_error(str(missing), tmp_path / "cache")
    assert reason == f"cannot clone {missing}: repository '{missing}' does not exist"
    failed = messages[-1]
    assert isinstance(failed, BuildStep) and (failed.step, failed.outcome, failed.detail) == ("clone", "failed", reason)

    url = f"http://127.0.0.1:{free_port()}/repo.git"
    reason, _ = _build_error(url, tmp_path / "cache")
    assert reason.startswith(f"cannot clone {url}: unable to access '{url}/': ")


def test_malicious_repo_urls_are_refused_before_git_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    reason, _ = _build_error(f"--upload-pack=touch {marker}", tmp_path / "cache")
    url = f"--upload-pack=touch {marker}"
    assert reason == f"refused repo URL {url!r}: it must not start with '-' (it would be read as a git option)"
    reason, _ = _build_error(f"ext::sh -c touch% {marker}", tmp_path / "cache")
    assert reason.endswith("must not use a git transport helper such as 'ext::'")
    reason, _ = _build_error("file:///tmp/../etc", tmp_path / "cache")
    assert reason.endswith("must not contain '..' path segments; use an absolute path")
    reason, _ = _build_error("ftp://example.invalid/repo.git", tmp_path / "cache")
    assert reason.endswith("scheme 'ftp' is not supported (use https, http, ssh, git or file)")
    with pytest.raises(BuildError, match="refused repo_ref '--orphan'"):
        fetch_source(str(tmp_path), "--orphan", tmp_path / "checkout")
    assert not marker.exists()


def test_a_customers_repository_reaches_only_what_the_policy_allows_and_failures_say_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "repos"
    base.mkdir()
    inside = Path(example_repo("sklearn_digits", base))
    (base / "escape").symlink_to("/etc")
    customer = RepoAccessPolicy(
        local_roots=[str(base)], deny_hosts=list(DEFAULT_DENIED_HOSTS), detailed_errors=False, follow_redirects=False
    )
    assert fetch_source(str(inside), None, tmp_path / "ok", access=customer).commit == git(inside, "rev-parse", "HEAD")
    with private_git_host(inside, tmp_path / "host", "alice", "pw") as host:
        port = host.url.split(":")[2].split("/")[0]
        refused = [
            "/etc",
            "file:///etc",
            "/etc/passwd",
            str(base / "escape"),
            str(base / "no-such-repo"),
            host.url,
            host.url.replace("127.0.0.1", "localhost"),
            f"http://2130706433:{port}/model.git",
            f"http://[::ffff:127.0.0.1]:{port}/model.git",
            "https://169.254.169.254/latest/meta-data",
        ]
        for number, url in enumerate(refused):
            with pytest.raises(BuildError) as caught:
                fetch_source(
                    url,
                    None,
                    tmp_path / f"refused-{number}",
                    access=customer,
                    credentials=RepoCredentials(username="alice", password="pw"),
                )
            assert str(caught.value) == "cannot reach the repository", url
        assert not host.requests, "git reached the loopback host"
        # The admin may allow a host (here: a git server on this machine).
        allowed = customer.model_copy(update={"allow_hosts": ["127.0.0.1"]})
        cloned = fetch_source(
            host.url,
            None,
            tmp_path / "allowed",
            access=allowed,
            credentials=RepoCredentials(username="alice", password="pw"),
        )
        assert cloned.commit == host.commit
    # The builder service takes the policy from its configuration; its failure report says one line too.
    messages: list[FlopsMessage] = []
    with pytest.raises(BuildError, match="^cannot reach the repository$"):
        build_local(_config("/etc", tmp_path / "cache", repo_access=customer.model_dump()), messages.append)
    failed = messages[-1]
    assert isinstance(failed, BuildStep) and (failed.step, failed.detail) == ("clone", "cannot reach the repository")
    assert "outside the folders repositories may be read from" in caplog.text  # the detail is in the log
    assert "is denied by the repository access policy (127.0.0.0/8)" in caplog.text
    assert "does not exist" in caplog.text


def test_a_query_string_token_reaches_git_but_no_message_or_argument(tmp_path: Path) -> None:
    secret = "tok-9d2e7b41-query"
    repo = Path(example_repo("sklearn_digits", tmp_path))
    # The test host serves files: it ignores what follows '?', so the clone fails after git sent the token.
    with private_git_host(repo, tmp_path / "host", "alice", "pw") as host, pytest.raises(BuildError) as failed:
        fetch_source(
            f"{host.url}?token={secret}",
            None,
            tmp_path / "clone",
            credentials=RepoCredentials(username="alice", password="pw"),
        )
    assert any(f"?token={secret}" in path for path, _ in host.requests), host.requests  # git sent it
    assert secret not in str(failed.value) and str(failed.value).startswith(f"cannot clone {host.url}: "), failed.value


def test_a_private_repository_is_cloned_with_credentials_that_never_reach_urls_or_files(tmp_path: Path) -> None:
    password = "tok-3f9a6c1e-private"
    repo = Path(example_repo("sklearn_digits", tmp_path))
    with private_git_host(repo, tmp_path / "host", "alice", password) as host:
        with pytest.raises(BuildError) as anonymous:
            fetch_source(host.url, None, tmp_path / "anonymous")
        assert str(anonymous.value) == (
            f"cannot clone {host.url}: could not read Username for "
            f"'{host.url.removesuffix('/model.git')}': terminal prompts disabled"
        )
        wrong = RepoCredentials(username="alice", password="not-the-token")
        with pytest.raises(BuildError, match=f"cannot clone {host.url}: Authentication failed for '{host.url}/'"):
            fetch_source(host.url, None, tmp_path / "wrong", credentials=wrong)

        given = fetch_source(
            host.url, None, tmp_path / "given", credentials=RepoCredentials(username="alice", password=password)
        )
        # Credentials written into the URL are taken out of it and used the same way.
        embedded = fetch_source(host.url_with_credentials(), "main", tmp_path / "embedded")
        assert given.commit == embedded.commit == host.commit
        assert any(header.startswith("Basic ") for _, header in host.requests)
        for checkout in (given, embedded):
            assert git(checkout.path, "remote", "get-url", "origin") == host.url
            assert subprocess.run(["grep", "-r", "-q", password, str(checkout.path)]).returncode == 1

    config = BuilderConfig(
        project_id="p",
        mqtt=UNUSED_MQTT,
        repo_url=host.url_with_credentials(),
        flavor="sklearn",
        cache_dir=str(tmp_path),
    )
    assert config.repo_url == host.url and config.repo_credentials is not None
    assert config.repo_credentials.password == password and password not in repr(config)


def test_local_sources_refs_and_plain_directories(tmp_path: Path) -> None:
    repo = Path(example_repo("broken_contract", tmp_path))
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    (repo / "README.md").write_text("second version\n")
    second = commit_all(repo, "second")
    (repo / "uncommitted.py").write_text("print('not committed')\n")

    head = fetch_source(str(repo), None, tmp_path / "head")
    assert (head.commit, head.kind) == (second, "git")
    assert not (head.path / "uncommitted.py").exists()  # a work tree is cloned, never copied
    assert fetch_source(f"file://{repo}", "v1", tmp_path / "tag").commit == first
    assert fetch_source(str(repo), first, tmp_path / "sha").commit == first
    with pytest.raises(BuildError, match=r"^cannot check out 'nope' in .*: "):
        fetch_source(str(repo), "nope", tmp_path / "bad-ref")

    plain = tmp_path / "plain"
    shutil.copytree(EXAMPLES_DIR / "broken_contract", plain)
    copied = fetch_source(str(plain), None, tmp_path / "copy")
    assert copied.kind == "directory" and re.fullmatch(r"[0-9a-f]{64}", copied.commit)
    assert fetch_source(str(plain), None, tmp_path / "copy-again").commit == copied.commit
    (plain / "README.md").write_text("changed\n")
    assert fetch_source(str(plain), None, tmp_path / "copy-changed").commit != copied.commit


def _run_service(config: BuilderConfig, mqtt: MqttSettings, timeout: float = 90) -> tuple[int, list[FlopsMessage], str]:
    received: queue.Queue[FlopsMessage] = queue.Queue()
    listener = MqttLink(mqtt)
    listener.subscribe(project_filter(config.project_id), lambda _topic, message: received.put(message))
    listener.connect(timeout=30)
    try:
        env = {**os.environ, **config_environment(config)}
        completed = subprocess.run(
            [sys.executable, "-m", "services.builder.main"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        messages: list[FlopsMessage] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                message = received.get(timeout=0.5)
            except queue.Empty:
                continue
            messages.append(message)
            if isinstance(message, ServiceStatus) and message.state in (ReportedState.SUCCEEDED, ReportedState.FAILED):
                break
        return completed.returncode, messages, completed.stderr
    finally:
        listener.close()


def test_service_publishes_the_build_over_mqtt(
    suite: SuiteEndpoints, first_build: Build, sklearn_repo: str, cache_dir: Path
) -> None:
    config = _config(sklearn_repo, cache_dir, project_id="p-builder-ok", mqtt=suite.mqtt, instance_name="builder-1")
    code, messages, stderr = _run_service(config, suite.mqtt)
    assert code == 0, stderr
    kinds = [type(message).__name__ for message in messages]
    assert kinds == ["ServiceStatus"] + ["BuildStep"] * len(STEPS) + ["BuildResult", "ServiceStatus"], kinds
    started, finished = messages[0], messages[-1]
    assert isinstance(started, ServiceStatus) and started.state is ReportedState.STARTED
    assert isinstance(finished, ServiceStatus) and finished.state is ReportedState.SUCCEEDED
    assert finished.detail == ""  # not "unknown error": a success has nothing to explain
    assert not any("unknown error" in getattr(message, "detail", "") for message in messages)
    assert {message.sender for message in messages} == {"builder-1"}
    result = messages[-2]
    assert isinstance(result, BuildResult)
    assert (result.digest, result.cached, result.app_dir) == (
        first_build.result.digest,
        True,
        first_build.result.app_dir,
    )


def test_service_reports_a_broken_contract_in_one_line(suite: SuiteEndpoints, tmp_path: Path) -> None:
    repo = example_repo("broken_contract", tmp_path)
    config = _config(repo, tmp_path / "cache", project_id="p-builder-broken", mqtt=suite.mqtt)
    code, messages, stderr = _run_service(config, suite.mqtt)
    assert code == 1, stderr
    reason = "model_manager.py: class ModelManager is missing methods fit_model, evaluate_model"
    failed_step, failed = messages[-2], messages[-1]
    assert isinstance(failed_step, BuildStep) and (failed_step.step, failed_step.outcome) == ("contract", "failed")
    assert isinstance(failed, ServiceStatus) and failed.state is ReportedState.FAILED
    assert failed.service == "builder" and failed.detail == reason
    assert "Traceback" not in stderr


def test_service_refuses_a_model_image_without_a_registry_in_one_line(suite: SuiteEndpoints, tmp_path: Path) -> None:
    config = _config(
        str(tmp_path),
        tmp_path / "cache",
        project_id="p-builder-model",
        mqtt=suite.mqtt,
        task="model_image",
        model_uri="models:/m/1",
    )
    code, messages, stderr = _run_service(config, suite.mqtt)
    assert code == 1, stderr
    failed = messages[-1]
    assert isinstance(failed, ServiceStatus) and failed.state is ReportedState.FAILED
    assert failed.detail == "an inference image needs an OCI build with a registry (mode 'oci' and registry settings)"


def _tiny_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel on disk, so installing a dependency needs no network."""
    wheel = folder / "tinypkg-1.0-py3-none-any.whl"
    info = "tinypkg-1.0.dist-info"
    files = {
        "tinypkg/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: flops-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def _minimal_repo(tmp_path: Path, requirements: str) -> str:
    """The broken example, completed, importing ``tinypkg``: a cheap repository to build."""
    repo = Path(example_repo("broken_contract", tmp_path))
    model = repo / "model_manager.py"
    model.write_text(
        model.read_text().replace("import numpy as np\n", "import numpy as np\nimport tinypkg\n")
        + "\n    def fit_model(self) -> int:\n        return tinypkg.VALUE\n\n"
        "    def evaluate_model(self) -> tuple[float, float, int]:\n        return 0.0, 0.0, 0\n"
    )
    (repo / "requirements.txt").write_text(requirements)
    commit_all(repo, "complete the contract, depend on tinypkg")
    return str(repo)


def test_missing_dependencies_are_installed_into_the_environment_only(tmp_path: Path) -> None:
    wheel = _tiny_wheel(tmp_path)
    build = _build(_minimal_repo(tmp_path, f"numpy\ntinypkg @ {wheel.as_uri()}\n"), tmp_path / "cache")
    env = Path(str(build.result.environment_dir))
    assert list((env / "lib").glob("python3.*/site-packages/tinypkg/__init__.py"))
    assert not list((env / "lib").glob("python3.*/site-packages/numpy"))  # already satisfied by the runtime
    completed = subprocess.run([sys.executable, "-c", "import tinypkg"], capture_output=True, timeout=60, check=False)
    assert completed.returncode != 0  # the builder's own environment is untouched


def test_failed_install_leaves_no_environment_behind(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "tinypkg-1.0-py3-none-any.whl"
    repo = _minimal_repo(tmp_path, f"tinypkg @ {missing.as_uri()}\n")
    reason, messages = _build_error(repo, tmp_path / "cache")
    assert reason.startswith("cannot install the repository's dependencies: ")
    failed = messages[-1]
    assert isinstance(failed, BuildStep) and (failed.step, failed.outcome) == ("environment", "failed")
    assert [path.name for path in (tmp_path / "cache" / "envs").iterdir() if path.is_dir()] == []


def test_a_pin_against_the_runtimes_numpy_names_the_runtime_version(tmp_path: Path) -> None:
    """pip alone said only 'Cannot install numpy==1.26.4 because these package versions have conflicting
    dependencies'; a newcomer could not tell the conflict is with FLOps' own runtime."""
    from importlib import metadata

    runtime = metadata.version("numpy")
    repo = _minimal_repo(tmp_path, "scikit-learn\nnumpy==1.26.4\n")
    reason, messages = _build_error(repo, tmp_path / "cache")
    assert reason == (
        f"cannot install the repository's dependencies: the repository asks for numpy==1.26.4 but the FL runtime "
        f"runs numpy {runtime} (numpy, pyarrow, protobuf, grpcio, pydantic, paho-mqtt are the runtime's own): "
        f"allow numpy {runtime}"
    )
    failed = messages[-1]
    assert isinstance(failed, BuildStep) and (failed.step, failed.outcome) == ("environment", "failed")
    assert [path.name for path in (tmp_path / "cache" / "envs").iterdir() if path.is_dir()] == []


def test_concurrent_builders_build_an_environment_once(tmp_path: Path) -> None:
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            outcomes.append(ensure_environment(tmp_path / "envs", "same-digest", []).cached)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert sorted(outcomes) == [False, True]
