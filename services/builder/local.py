"""Local-mode build: repository -> cached virtualenv + augmented Flower app.

Steps, each reported as a ``BuildStep`` with its duration:

1. ``clone``        fetch the repository, resolve ``repo_ref`` to a commit
2. ``contract``     static check of model_manager.py / data_manager.py / dependency file
3. ``dependencies`` normalise the requirement list, compute the digests
4. ``environment``  the cached virtualenv ``cache_dir/envs/<environment digest>``
5. ``augment``      copy the repository and generate the Flower app ``pyproject.toml``
6. ``verify``       import the user's ModelManager inside the environment

A second build of the same commit and dependencies finds both the environment and
``cache_dir/apps/<digest>`` and only clones and checks (about a second).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flops_utils.message_text import one_line
from flops_utils.mqtt_catalogue import BuildResult, BuildStep, FlopsMessage
from flops_utils.service_config import BuilderConfig
from services.builder.augment import assemble_app, discard_app, is_app_complete, publish_app
from services.builder.cache import APPS_DIR, ENVS_DIR, WORK_DIR, entry_lock_path, mark_used
from services.builder.contract import check_contract, probe_model_manager
from services.builder.digest import build_digest, environment_digest, runtime_versions
from services.builder.environment import LOCK_TIMEOUT_S, ensure_environment, exclusive_lock
from services.builder.errors import BuildError
from services.builder.source import fetch_source

Reporter = Callable[[FlopsMessage], None]


@dataclass
class _StepState:
    outcome: Literal["done", "cached"] = "done"
    detail: str = ""


class _StepReporter:
    """Times steps and publishes one BuildStep per step (``failed`` with the one-line reason)."""

    def __init__(self, config: BuilderConfig, report: Reporter) -> None:
        self.config = config
        self.report = report
        self.sender = config.instance_name or "builder"

    def _publish(self, name: str, outcome: Literal["done", "cached", "failed"], seconds: float, detail: str) -> None:
        message = BuildStep(
            project_id=self.config.project_id,
            sender=self.sender,
            step=name,
            outcome=outcome,
            duration_s=max(0.0, seconds),
            detail=one_line(detail) if detail.strip() else "",
        )
        self.report(message)

    @contextmanager
    def step(self, name: str) -> Iterator[_StepState]:
        state = _StepState()
        started = time.monotonic()
        try:
            yield state
        except BuildError as error:
            self._publish(name, "failed", time.monotonic() - started, str(error))
            raise
        except Exception as error:
            failure = BuildError(f"{name} step crashed: {type(error).__name__}: {error}", step=name)
            self._publish(name, "failed", time.monotonic() - started, str(failure))
            raise failure from error
        self._publish(name, state.outcome, time.monotonic() - started, state.detail)


def _reuse_app(app_dir: Path) -> bool:
    """Whether a complete app is cached; marks it used under its lock, so the cache pruner keeps it."""
    with exclusive_lock(entry_lock_path(app_dir), LOCK_TIMEOUT_S):
        if not is_app_complete(app_dir):
            return False
        mark_used(app_dir)
        return True


def build_local(config: BuilderConfig, report: Reporter, *, base_dir: Path | None = None) -> BuildResult:
    """Build (or reuse) the runtime for ``config.repo_url``; report steps and the result through ``report``.

    ``base_dir`` resolves a relative local repository path (default: the working directory).
    Raises :class:`BuildError` (one-line message) when a step fails.
    """
    started = time.monotonic()
    steps = _StepReporter(config, report)
    cache_dir = Path(config.cache_dir).expanduser().resolve()
    work_root = cache_dir / WORK_DIR
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=work_root))
    try:
        with steps.step("clone") as clone:
            checkout = fetch_source(
                config.repo_url,
                config.repo_ref,
                work / "repo",
                base_dir=base_dir,
                credentials=config.repo_credentials,
                access=config.repo_access,
            )
            clone.detail = f"{checkout.kind} {checkout.commit[:12]}"

        with steps.step("contract") as contract:
            dependencies = check_contract(checkout.path)
            contract.detail = f"model_manager.py, data_manager.py and {dependencies.file} present"

        with steps.step("dependencies") as deps:
            runtime = runtime_versions()
            env_digest = environment_digest(dependencies.requirements, runtime, sys.prefix)
            digest = build_digest(checkout.commit, dependencies.requirements, runtime)
            listed = ", ".join(dependencies.requirements) or "none"
            deps.detail = f"{dependencies.file}: {listed}"

        with steps.step("environment") as env_step:
            environment = ensure_environment(cache_dir / ENVS_DIR, env_digest, dependencies.requirements)
            env_step.outcome = "cached" if environment.cached else "done"
            env_step.detail = f"{ENVS_DIR}/{env_digest[:12]}"

        app_dir = cache_dir / APPS_DIR / digest
        app_cached = environment.cached and _reuse_app(app_dir)

        if app_cached:
            with steps.step("augment") as augment:
                augment.outcome, augment.detail = "cached", f"{APPS_DIR}/{digest[:12]}"
            with steps.step("verify") as verify:
                verify.outcome, verify.detail = "cached", "checked when the app was built"
        else:
            build_info = {
                "commit": checkout.commit,
                "source": checkout.kind,
                "repo_url": config.repo_url,
                "repo_ref": config.repo_ref,
                "dependency_file": dependencies.file,
                "requirements": list(dependencies.requirements),
                "environment_digest": env_digest,
                "runtime": runtime,
            }
            with steps.step("augment") as augment:
                staged = assemble_app(checkout.path, cache_dir / APPS_DIR, digest, build_info)
                augment.detail = f"{APPS_DIR}/{digest[:12]}"
            try:
                with steps.step("verify") as verify:
                    subclass = probe_model_manager(environment.python, staged)
                    verify.detail = "ModelManager implements the interface" + (
                        "" if subclass else " (duck-typed: not a flops_utils.ModelManager subclass)"
                    )
            except BaseException:
                discard_app(staged)
                raise
            publish_app(staged, app_dir)
            with exclusive_lock(entry_lock_path(app_dir), LOCK_TIMEOUT_S):
                mark_used(app_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = BuildResult(
        project_id=config.project_id,
        sender=steps.sender,
        digest=digest,
        commit=checkout.commit,
        cached=app_cached,
        environment_dir=str(environment.path),
        app_dir=str(app_dir),
        total_seconds=round(time.monotonic() - started, 3),
    )
    report(result)
    return result
