"""Phase POST_TRAINING: the SLA's post-training steps (an inference image, a serving endpoint)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flops_utils.mqtt_catalogue import ModelImageBuilt
from manager.lifecycle.errors import PhaseFailed
from manager.lifecycle.phase_build import run_builder
from manager.lifecycle.specs import SERVING_PORT, resolve_repo_url, sla_resources
from manager.lifecycle.specs_post_training import model_builder_config, model_image_serving_spec, serving_config
from manager.lifecycle.waiting import QuietNotes, http_ok
from manager.records import ServingStatus
from orchestrator_adapters.base import Placement, ServiceKind, ServiceState

if TYPE_CHECKING:
    from manager.lifecycle.project_run import ProjectRun


def post_training(run: ProjectRun) -> None:
    steps = set(run.sla.post_training_steps)
    if "build_image_for_trained_model" in steps:
        build_model_image(run)
    if "deploy_trained_model_image" in steps:
        serve(run)


def trained_model_uri(run: ProjectRun) -> str:
    result = run.state.result
    assert result is not None
    if result.registered_model and result.registered_version:
        return f"models:/{result.registered_model}/{result.registered_version}"
    if not result.model_uri:
        raise PhaseFailed("training reported no model")
    return result.model_uri


def build_model_image(run: ProjectRun) -> None:
    """The builder packages the trained model as an inference image (image-running orchestrators only)."""
    settings, result = run.deps.settings, run.build_result()
    if not run.deps.adapter.capabilities.runs_images:
        run.event(
            f"build_image_for_trained_model: the {run.deps.adapter.name} orchestrator runs no images; "
            "the model is served from the build's environment"
        )
        return
    if settings.registry is None:
        raise PhaseFailed("build_image_for_trained_model needs the manager's registry setting")
    repo_url = resolve_repo_url(run.sla.ml_repo_url, settings.repo_base_dir)
    config = model_builder_config(run.facts(), settings, repo_url, trained_model_uri(run), result)
    built = run_builder(
        run,
        "model-builder",
        config,
        ModelImageBuilt,
        failed="build_image_for_trained_model",
        what="the inference image build",
    )
    run.state.model_image = built
    run.update(model_image=built.pinned)
    how = "found in the registry" if built.cached else f"built in {built.total_seconds:.0f}s"
    tagged = f", tagged on MLflow run {built.run_id}" if built.run_tagged else ""
    run.event(f"inference image {built.pinned} {how}{tagged}")


def serve(run: ProjectRun) -> None:
    """The trained model behind an HTTP endpoint: its inference image, or the serving service on the build."""
    adapter, settings = run.deps.adapter, run.deps.settings
    model_uri = trained_model_uri(run)
    endpoint = adapter.plan_endpoint(run.app(), "serving", SERVING_PORT, Placement())
    if run.state.model_image is not None:
        digests = settings.tracking_access.digests(run.customer)
        spec = model_image_serving_spec(
            run.state.model_image.pinned, endpoint, adapter.capabilities.bind_host, sla_resources(run.sla), digests
        )
    else:
        config = serving_config(run.facts(), settings, model_uri, endpoint)
        build = run.state.build
        spec = run.spec(
            "serving",
            ServiceKind.SERVING,
            config,
            runtime=True,
            image=build.aggregator_image if build else None,
            ports=(SERVING_PORT,),
        )
    service = run.deploy(spec)

    run.event(f"starting the model serving endpoint at {endpoint.url}")
    began = run.deps.clock.monotonic()
    deadline = began + settings.serving_timeout_s
    quiet = QuietNotes(began)
    while not http_ok(f"{endpoint.url}/ping"):
        run.check_stop()
        if quiet.due(run.deps.clock.monotonic()):
            run.event(
                f"waiting for the model serving endpoint to answer /ping "
                f"({run.deps.clock.monotonic() - began:.0f} s so far)"
            )
        info = adapter.inspect_service(run.app(), service)
        if info.state in (ServiceState.FAILED, ServiceState.SUCCEEDED, ServiceState.STOPPED):
            raise PhaseFailed(f"the model serving endpoint failed to start: {info.detail or info.state.value}")
        if run.deps.clock.monotonic() > deadline:
            raise PhaseFailed(
                f"the model serving endpoint did not answer /ping within {settings.serving_timeout_s:.0f}s"
            )
        run.deps.clock.sleep(1.0)
    run.update(serving_url=endpoint.url, serving=ServingStatus())
    run.event(f"model {model_uri} served at {endpoint.url}/invocations")
