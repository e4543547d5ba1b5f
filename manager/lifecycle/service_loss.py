"""How a lost service is named in events and reasons, and the small restart rules of the builder and the observer.

The learners, aggregators and the MLflow server have their restart rules in
:mod:`manager.lifecycle.supervision`; the rules here are for the services around them: a
builder that dies without reporting gets one more try, and the project's observer (stateless
but for what the broker retains) is started again a few times without touching training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from manager.lifecycle.errors import PhaseFailed
from orchestrator_adapters.base import ServiceInfo, ServiceState, killing_signal

if TYPE_CHECKING:
    from manager.lifecycle.project_run import ProjectRun

MAX_BUILDER_RETRIES = 1  # per build: a second loss fails the project
MAX_OBSERVER_RESTARTS = 3  # per project run: after that the project goes on without its observer


def lost_reason(info: ServiceInfo) -> str:
    """Why a service ended, in a few words: the signal that killed it, else the orchestrator's one line."""
    for instance in info.instances:
        name = killing_signal(instance.exit_code) if instance.exit_code is not None else None
        if name:
            return f"killed by {name}"
    return info.detail or "failed"


class BuilderRetry:
    """A builder that ended without a report (killed, out of memory) is deployed once more; a second loss fails."""

    def __init__(self, run: ProjectRun) -> None:
        self.run = run
        self.retries = 0

    def revive(self, label: str, service_id: str, info: ServiceInfo) -> bool:
        why = lost_reason(info)
        if self.retries >= MAX_BUILDER_RETRIES:
            raise PhaseFailed(f"{label} lost ({why}), also on its retry")
        self.retries += 1
        self.run.deps.adapter.deploy_service(self.run.app(), service_id)  # what the lost one started goes first
        self.run.event(f"{label} lost ({why}); retrying it once", level="warning")
        return True


class ObserverKeeper:
    """The project's observer is started again when it ends unasked (it keeps no state of its own)."""

    def __init__(self, run: ProjectRun) -> None:
        self.run = run
        self.restarts = 0
        self.given_up = False

    def check(self) -> None:
        run = self.run
        observer, observatory = run.state.services.observer(), run.state.observatory
        if observer is None or observatory is None or self.given_up:
            return
        info = run.deps.adapter.inspect_service(observatory.app, observer.service_id)
        if info.state is not ServiceState.FAILED:
            return
        why = lost_reason(info)
        if not info.redeployable or self.restarts >= MAX_OBSERVER_RESTARTS:
            self.given_up = True
            run.event(
                f"{observer.name} lost for good ({why}) after {self.restarts} restarts; the project goes on without it",
                level="warning",
            )
            return
        self.restarts += 1
        run.event(
            f"{observer.name} lost ({why}); redeploying it, restart {self.restarts} of {MAX_OBSERVER_RESTARTS}",
            level="warning",
        )
        run.deps.adapter.deploy_service(observatory.app, observer.service_id)
