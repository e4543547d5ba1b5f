"""The phase table: every phase of a project, in order, with what it needs and what a restarted manager does.

The run (:meth:`ProjectRun.run`), the restart pick-up (``LifecycleService``) and resume
(:meth:`ProjectRun.resume`) all read :data:`PHASES`. What happens in a phase is in the
module its ``action`` comes from. CLEANUP and DONE follow every run, whatever its outcome
(:meth:`ProjectRun._finish`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from manager.lifecycle import phase_build, phase_post_training, phase_setup, phase_training
from manager.records import ProjectPhase, ProjectRecord

if TYPE_CHECKING:
    from manager.lifecycle.project_run import ProjectRun


class OnRestart(StrEnum):
    """What a restarted manager does with a project its predecessor left in a phase."""

    START_OVER = "start over"  # nothing lasting runs yet: undeploy the leftovers and run from the first phase
    RESUME = "resume"  # the phase's services kept running: reconnect to them and go on
    FAIL = "fail"  # the project fails (its services are undeployed)


@dataclass(frozen=True)
class Phase:
    phase: ProjectPhase
    action: Callable[[ProjectRun], None]
    needs: str  # what must be there before it starts (what earlier phases made)
    on_restart: OnRestart
    resume: Callable[[ProjectRun, ProjectRecord], None] | None = None  # for RESUME
    can_resume: Callable[[ProjectRecord], bool] | None = None  # the record holds what resume needs


PHASES: tuple[Phase, ...] = (
    Phase(ProjectPhase.OBSERVATORY, phase_setup.observatory, "the orchestrator", OnRestart.START_OVER),
    Phase(ProjectPhase.PROJECT_APP, phase_setup.project_app, "the orchestrator", OnRestart.START_OVER),
    Phase(
        ProjectPhase.OBSERVER,
        phase_setup.observer,
        "the observatory; a broker account (granted here)",
        OnRestart.START_OVER,
    ),
    Phase(ProjectPhase.BUILD, phase_build.build, "the project app", OnRestart.START_OVER),
    Phase(
        ProjectPhase.TRAINING,
        phase_training.train,
        "the build; learner nodes holding the data tags",
        OnRestart.RESUME,
        resume=phase_training.resume,
        can_resume=phase_training.can_resume,
    ),
    Phase(ProjectPhase.POST_TRAINING, phase_post_training.post_training, "the training result", OnRestart.FAIL),
)


def on_restart(record: ProjectRecord) -> OnRestart:
    """What a restarted manager does with ``record`` (a queued project simply starts over)."""
    if record.phase is ProjectPhase.QUEUED:
        return OnRestart.START_OVER
    for step in PHASES:
        if step.phase is record.phase:
            if step.on_restart is OnRestart.RESUME and step.can_resume is not None and not step.can_resume(record):
                return OnRestart.FAIL
            return step.on_restart
    return OnRestart.FAIL


def restartable_phases() -> frozenset[ProjectPhase]:
    """The phases a restarted manager may start over from the beginning."""
    return frozenset({ProjectPhase.QUEUED} | {step.phase for step in PHASES if step.on_restart is OnRestart.START_OVER})


def run_all(run: ProjectRun) -> None:
    """Every phase from the first."""
    for step in PHASES:
        run.enter(step.phase)
        step.action(run)


def resume(run: ProjectRun, record: ProjectRecord) -> None:
    """Go on with the phase the record was left in (which resumes), then every later phase."""
    index = next(i for i, step in enumerate(PHASES) if step.phase is record.phase)
    current = PHASES[index]
    if current.resume is None:
        raise ValueError(f"phase {record.phase.value} cannot be resumed")
    current.resume(run, record)
    for step in PHASES[index + 1 :]:
        run.enter(step.phase)
        step.action(run)
