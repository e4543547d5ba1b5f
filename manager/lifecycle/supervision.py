"""Watching a phase's services: the report loop, and the restart policy with its limits.

:class:`ReportLoop` hands each MQTT report to the phase until it says done, and inspects
the watched services every two seconds: a crash fails the phase unless the restart
policy revives the service. :class:`RestartPolicy` decides who is started again and how
often (aggregators resume from their checkpoint, learners rejoin as new Flower nodes,
the customer's MLflow server comes back while the aggregators keep their metrics).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from flops_utils.message_text import describe
from flops_utils.mqtt_catalogue import EventLine, FlopsMessage, ReportedState, ServiceStatus
from manager.lifecycle.errors import PhaseFailed
from manager.lifecycle.waiting import QuietNotes
from orchestrator_adapters.base import ServiceInfo, ServiceState

if TYPE_CHECKING:
    from manager.lifecycle.project_run import ProjectRun

OnMessage = Callable[[FlopsMessage], bool]
Reviver = Callable[[str, str, ServiceInfo], bool]
FAILED_GRACE_S = 3.0  # time to let a service's own MQTT failure report arrive before using the adapter's
RESULT_GRACE_S = 15.0  # a one-shot service that exited 0 gets this long for its report to arrive
INSPECT_EVERY_S = 2.0
MAX_LEARNER_RESTARTS = 3  # per learner and project; a learner that keeps dying is left out after that
MAX_AGGREGATOR_RESTARTS = 2  # per aggregator and project (classic, root or cluster)
MAX_TRACKING_RESTARTS = 3  # per project: the customer's MLflow server


class ReportLoop:
    def __init__(self, run: ProjectRun) -> None:
        self.run = run

    def wait(
        self,
        on_message: OnMessage,
        watched: dict[str, str],
        timeout: float,
        what: str,
        on_inspect: Callable[[], None] | None = None,
        revive: Reviver | None = None,
        awaited: Callable[[], str] | None = None,
    ) -> None:
        """Handle reports until ``on_message`` says done; fail on crashed services or timeout.

        ``on_inspect`` runs whenever the watched services are inspected (every two seconds);
        ``revive(label, service_id, info)`` may handle a crashed watched service (True: redeployed).
        A stretch without reports gets an event saying what is awaited (``awaited()``, else ``what``).
        """
        run = self.run
        started = run.deps.clock.monotonic()
        deadline = started + timeout
        next_inspect = 0.0
        exited_at: dict[str, float] = {}
        quiet = QuietNotes(started)
        while True:
            run.check_stop()
            message = run.inbox.get(timeout=run.deps.settings.poll_interval_s)
            if message is not None:
                self.record(message)
                quiet.heard(run.deps.clock.monotonic())
                if on_message(message):
                    return
            if run.writer.pending:
                run.writer.flush()  # buffered while the database was away; fails the run after the limit
            now = run.deps.clock.monotonic()
            if quiet.due(now):
                run.event(f"waiting for {awaited() if awaited else what} ({now - started:.0f} s so far)")
            if now >= next_inspect:
                next_inspect = now + INSPECT_EVERY_S
                self.inspect(on_message, watched, exited_at, revive)
                run.observer_keeper.check()  # the observer outlives every phase's own services
                if on_inspect is not None:
                    on_inspect()
            if now > deadline:
                raise PhaseFailed(f"{what} did not finish within {timeout:.0f}s")

    def inspect(
        self, on_message: OnMessage, watched: dict[str, str], exited_at: dict[str, float], revive: Reviver | None
    ) -> None:
        """One look at the watched services (``exited_at``: when each was first seen ended)."""
        for label, service_id in watched.items():
            info = self.run.deps.adapter.inspect_service(self.run.app(), service_id)
            if info.state is ServiceState.FAILED:
                if not info.redeployable:  # e.g. the orchestrator cannot place it: no report will come
                    raise PhaseFailed(f"the {label} failed: {info.detail or 'no detail'}")
                self.drain(on_message, FAILED_GRACE_S)  # prefer the service's own one-line reason
                if revive is not None and revive(label, service_id, info):
                    continue
                raise PhaseFailed(f"the {label} failed: {info.detail or 'no detail'}")
            if info.state in (ServiceState.SUCCEEDED, ServiceState.STOPPED):
                first = exited_at.setdefault(label, self.run.deps.clock.monotonic())
                if self.run.deps.clock.monotonic() - first > RESULT_GRACE_S:
                    raise PhaseFailed(f"the {label} exited without reporting its result")

    def drain(self, on_message: OnMessage, seconds: float) -> None:
        clock = self.run.deps.clock
        deadline = clock.monotonic() + seconds
        while clock.monotonic() < deadline:
            message = self.run.inbox.get(timeout=0.2)
            if message is not None:
                self.record(message)
                on_message(message)

    def record(self, message: FlopsMessage) -> None:
        """Every report becomes a project event."""
        level = "info"
        if isinstance(message, ServiceStatus) and message.state in (ReportedState.FAILED, ReportedState.NO_DATA):
            level = "warning"
        elif isinstance(message, EventLine):
            level = message.level
        # The event id is the message's digest: a report the broker delivers twice (QoS 1 after a manager
        # restart, a retained result heard again) is stored once.
        event_id = hashlib.sha256(message.topic().encode() + b"\0" + message.to_payload()).hexdigest()[:32]
        self.run.event(describe(message), source=message.sender, level=level, event_id=event_id)


class RestartPolicy:
    """Who is started again during training, and how often (counted per project run)."""

    def __init__(self, run: ProjectRun) -> None:
        self.run = run
        self.learner_restarts: dict[str, int] = {}
        self.aggregator_restarts: dict[str, int] = {}
        self.aggregator_failures: dict[str, str] = {}  # reported by cluster aggregators
        self.retired_learners: set[str] = set()  # died too often: not started again
        self.learner_failures: dict[str, str] = {}  # a learner's own last reason (user code, data)
        self.tracking_restarts = 0

    def note_learner_failure(self, name: str, detail: str) -> None:
        """A learner reported its failure (its ModelManager or DataManager raised): the reason to show."""
        self.learner_failures[name] = detail

    def note_aggregator_failure(self, name: str, detail: str) -> None:
        """A cluster aggregator reported its failure; its reason is used when its process has ended."""
        self.aggregator_failures[name] = detail

    def revive_aggregator(self, label: str, service_id: str, info: ServiceInfo) -> bool:
        """A crashed aggregator (classic, root or cluster) is redeployed; it resumes from its last checkpoint."""
        run = self.run
        restarts = self.aggregator_restarts.get(label, 0)
        reported = self.aggregator_failures.pop(label, None)
        if restarts >= MAX_AGGREGATOR_RESTARTS:
            raise PhaseFailed(f"the {label} failed: {reported or info.detail or 'no detail'}")
        self.aggregator_restarts[label] = restarts + 1
        run.event(
            f"the {label} was lost ({reported or info.detail or 'failed'}); redeploying it, restart "
            f"{restarts + 1} of {MAX_AGGREGATOR_RESTARTS}: it resumes from its last checkpoint",
            level="warning",
        )
        run.deps.adapter.deploy_service(run.app(), service_id)
        return True

    def during_training(self) -> None:
        for note in self.run.deps.adapter.revive_data_servers():  # first: a learner started again fetches its data
            self.run.event(note, level="warning")
        self.revive_learners()
        self.revive_tracking()

    def revive_tracking(self) -> None:
        """The customer's MLflow server crashed: start it again (aggregators keep their metrics meanwhile)."""
        run = self.run
        observatory = run.state.observatory
        if observatory is None or self.tracking_restarts >= MAX_TRACKING_RESTARTS:
            return
        info = run.deps.adapter.inspect_service(observatory.app, observatory.tracking_service)
        if info.state is not ServiceState.FAILED:
            return
        if not info.redeployable:
            self.tracking_restarts = MAX_TRACKING_RESTARTS
            run.event(f"the MLflow tracking server stopped and cannot be redeployed: {info.detail}", level="warning")
            return
        self.tracking_restarts += 1
        run.event(
            f"the MLflow tracking server stopped ({info.detail or 'failed'}); redeploying it, restart "
            f"{self.tracking_restarts} of {MAX_TRACKING_RESTARTS}; the aggregators keep their "
            "metrics until it is back",
            level="warning",
        )
        run.deps.adapter.deploy_service(observatory.app, observatory.tracking_service)

    def _fail_when_too_few_learners(self, cluster: str | None, lost: str, why: str) -> None:
        """Without enough learners left the aggregator would wait until the training timeout: fail now,
        with the lost learner's reason."""
        run = self.run
        training = run.sla.training_configuration
        needed = training.min_available_clients
        if run.progress.round > 0 or run.progress.cycle > 1:  # past the start only rounds need learners
            needed = min(training.min_fit_clients, training.min_evaluate_clients)
        if training.mode != "hierarchical":  # classic learners keep their nodes' clusters but share one aggregator
            cluster = None
        left = [
            item.name
            for item in run.state.services.learners()
            if (cluster is None or item.cluster == cluster) and item.name not in self.retired_learners
        ]
        if len(left) < needed:
            where = f" in cluster {cluster}" if cluster else ""
            raise PhaseFailed(
                f"{lost} failed {MAX_LEARNER_RESTARTS + 1} times: {why}; {len(left)} learner(s) left{where}, "
                f"but the SLA needs {needed}"
            )

    def revive_learners(self) -> None:
        """A learner that crashed during training is started again; it rejoins as a new Flower node.

        Learners that exit 0 (no data, training over, stop requested) are left alone.
        """
        run = self.run
        app = run.app()
        for learner in run.state.services.learners():
            name, service_id = learner.name, learner.service_id
            if name in self.retired_learners:
                continue
            info = run.deps.adapter.inspect_service(app, service_id)
            if info.state is not ServiceState.FAILED:
                continue
            if not info.redeployable:
                raise PhaseFailed(f"{name} failed: {info.detail or 'no detail'}")
            why = self.learner_failures.get(name) or info.detail or "failed"
            restarts = self.learner_restarts.get(name, 0)
            if restarts >= MAX_LEARNER_RESTARTS:
                self.retired_learners.add(name)
                run.event(f"{name} lost for good after {restarts} restarts: {why}", level="warning")
                self._fail_when_too_few_learners(learner.cluster, name, why)
                continue
            self.learner_restarts[name] = restarts + 1
            run.event(
                f"{name} lost ({why}); redeploying it, restart {restarts + 1} of {MAX_LEARNER_RESTARTS}",
                level="warning",
            )
            run.deps.adapter.deploy_service(app, service_id)
