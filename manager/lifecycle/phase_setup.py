"""Phases OBSERVATORY, PROJECT_APP and OBSERVER: where the project's services will live and be watched."""

from __future__ import annotations

from typing import TYPE_CHECKING

from manager.lifecycle.cleanup import project_app_name
from manager.lifecycle.service_entries import entry
from manager.lifecycle.specs import OBSERVER_PORT, observer_config
from orchestrator_adapters.base import AppKind, Placement, ServiceKind

if TYPE_CHECKING:
    from manager.lifecycle.project_run import ProjectRun


def observatory(run: ProjectRun) -> None:
    """The customer's observatory (MLflow server) runs: started, or found healthy, or restarted."""
    found = run.deps.observatories.ensure(run.deps.adapter, run.customer, note=run.event)
    run.state.observatory = found
    run.update(
        tracking_url=found.tracking_url, apps={"observatory": found.app.app_id}, mlflow_experiment=run.experiment_name()
    )


def project_app(run: ProjectRun) -> None:
    """The app every service of this project (but the observer) is deployed in."""
    name = project_app_name(run.project_id)
    run.state.app = run.deps.adapter.create_app(name, AppKind.PROJECT, run.customer, run.project_id)
    run.update(apps=run.app_ids())


def observer(run: ProjectRun) -> None:
    """The project's observer, in the observatory app: it logs every report and serves them over HTTP(S)."""
    adapter, settings = run.deps.adapter, run.deps.settings
    app = run.observatory().app
    name = f"observer-{run.project_id[:8]}"
    endpoint = adapter.plan_endpoint(app, name, OBSERVER_PORT, Placement())
    tls = pki.issue(endpoint.host, "observer") if (pki := settings.tracking_pki) else None
    config = observer_config(run.facts(), settings, name, endpoint, run.work_dir("observer"), tls)
    spec = run.spec(name, ServiceKind.OBSERVER, config, ports=(OBSERVER_PORT,))
    service_id = adapter.add_service(app, spec)
    run.state.services.add(entry(name, ServiceKind.OBSERVER, service_id, app=AppKind.OBSERVATORY))
    run.store_services()
    adapter.deploy_service(app, service_id)
    url = endpoint.url if config.tls is None else "https://" + endpoint.url.split("://", 1)[-1]
    run.event(f"observer {name} deployed at {url}")
