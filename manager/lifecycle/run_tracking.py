"""The project's MLflow experiment as the run sees it: its run's link and learning curve, and its outcome tag."""

from __future__ import annotations

from typing import TYPE_CHECKING

from manager.learning_curve import PLOT_FILE, render_png
from manager.lifecycle.mlflow_run import ProjectTracking, TrackingCallFailed, image_tags, run_url, without_credentials
from manager.records import ProjectStatus
from manager.storage.base import StorageUnavailable

if TYPE_CHECKING:
    from manager.lifecycle.project_run import ProjectRun


def project_tracking(run: ProjectRun) -> ProjectTracking:
    token = run.deps.settings.tracking_access.service_token(run.customer)
    return ProjectTracking(run.observatory().tracking_url, token, run.deps.observatories.ca_pem())


def link_run_and_log_curve(run: ProjectRun, run_id: str) -> None:
    """The run's GUI link on the project, and the learning curve among the run's artifacts.

    Neither is worth failing a trained project for: a refusal is a warning event.
    """
    tracking = project_tracking(run)
    try:
        info = tracking.run(run_id)
        link = run_url(tracking.tracking_url, str(info["experiment_id"]), run_id)
        run.update(mlflow_run_url=link)
        run.event(f"MLflow run: {link}")
        build = run.state.build
        if build is not None and build.learner_image:
            tracking.set_run_tags(
                run_id, image_tags(build.learner_image, build.aggregator_image, build.platform_digests)
            )
        png = render_png(run.deps.store.list_rounds(run.project_id), run.experiment_name())
        tracking.log_artifact(run_id, PLOT_FILE, png)
        run.event(f"learning curve logged to the MLflow run as {PLOT_FILE} ({len(png) // 1024} KB)")
    except (TrackingCallFailed, StorageUnavailable) as error:
        run.event(f"learning curve not logged to MLflow: {error}", level="warning")


def settle_experiment(run: ProjectRun, status: ProjectStatus) -> None:
    """Tag the project's experiment with its outcome; an unfinished project's empty experiment goes."""
    if run.state.observatory is None:
        return
    tags = {
        "flops.project_id": run.project_id,
        "flops.customer": run.customer,
        "flops.repository": without_credentials(run.sla.ml_repo_url),
    }
    try:
        run.event(project_tracking(run).settle_experiment(run.experiment_name(), status.value, tags))
    except TrackingCallFailed as error:
        run.event(f"MLflow experiment not tagged {status.value}: {error}", level="warning")
