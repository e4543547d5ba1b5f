"""Phase BUILD: the project's environment (host processes) or images; and how a builder is run and awaited."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from flops_utils.mqtt_catalogue import BuildResult, FlopsMessage, ModelImageBuilt, ReportedState, ServiceStatus
from flops_utils.service_config import BuilderConfig
from manager.lifecycle.errors import PhaseFailed
from manager.lifecycle.service_loss import BuilderRetry
from manager.lifecycle.specs import builder_config, resolve_repo_url
from orchestrator_adapters.base import ServiceKind

if TYPE_CHECKING:
    from manager.lifecycle.project_run import ProjectRun

Answer = TypeVar("Answer", BuildResult, ModelImageBuilt)


def build(run: ProjectRun) -> None:
    """The builder turns the repository into images (image-running orchestrators) or an environment on the host."""
    settings = run.deps.settings
    repo_url = resolve_repo_url(run.sla.ml_repo_url, settings.repo_base_dir)
    images = run.deps.adapter.capabilities.runs_images
    config = builder_config(run.facts(), settings, repo_url, images=images)
    result = run_builder(run, "builder", config, BuildResult, failed="build", what="the build")
    run.state.build = result
    run.update(build=result.model_dump(exclude={"project_id", "sender", "sent_at", "type"}))


def run_builder(
    run: ProjectRun, name: str, config: BuilderConfig, answer: type[Answer], *, failed: str, what: str
) -> Answer:
    """Deploy a builder and wait for its one ``answer``; its own failure report fails the phase.

    A builder lost without a report (killed) is retried once; a second loss fails the phase."""
    service = run.deploy(run.spec(name, ServiceKind.BUILDER, config))
    answers: list[Answer] = []

    def on_message(message: FlopsMessage) -> bool:
        if isinstance(message, answer):
            answers.append(message)
            return True
        if (
            isinstance(message, ServiceStatus)
            and message.service == "builder"
            and message.state is ReportedState.FAILED
        ):
            raise PhaseFailed(f"{failed} failed: {message.detail}")
        return False

    retry = BuilderRetry(run)
    run.reports.wait(on_message, {name: service}, run.deps.settings.build_timeout_s, what, revive=retry.revive)
    return answers[0]
