"""Phase TRAINING: place the learners, deploy the aggregators and learners, follow the rounds to the result.

A restarted manager resumes this phase (:func:`resume`): the services kept running, so
it reconnects to them from the stored record and waits for the result again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flops_utils.mqtt_catalogue import FlopsMessage, ReportedState, ServiceStatus, TrainingProgress, TrainingResult
from manager.lifecycle.data_nodes import DataServers, check_feature_widths
from manager.lifecycle.errors import PhaseFailed
from manager.lifecycle.placement import LearnerPlan, plan_learners
from manager.lifecycle.privacy_progress import privacy_progress, privacy_result
from manager.lifecycle.round_log import round_record
from manager.lifecycle.run_tracking import link_run_and_log_curve
from manager.lifecycle.specs import (
    FLEET_PORT,
    AggregatorPlace,
    aggregator_config,
    learner_config,
    registered_model_name,
    run_params,
)
from manager.lifecycle.training_clock import TrainingClock
from manager.records import Progress, ProjectPhase, ProjectRecord
from manager.security.flower_pki import cluster_identity
from manager.sla import sla_to_training_settings
from orchestrator_adapters.base import Placement, ServiceKind

if TYPE_CHECKING:
    from collections.abc import Callable

    from manager.lifecycle.project_run import ProjectRun


def train(run: ProjectRun) -> None:
    training = sla_to_training_settings(run.sla)
    for note in run.deps.adapter.revive_data_servers():  # placement asks every node's server for its rows
        run.event(note, level="warning")
    nodes = run.deps.adapter.list_nodes()
    tags = list(training.data_tags)
    plan, notes = plan_learners(nodes, training, _customer_tag_lister(run, tags))
    for note in notes:
        run.event(note, level="warning")
    check_feature_widths(plan.nodes, tags, _data_servers(run).shape_lister(run.customer, tags))
    run.event(f"learners on nodes {[node.name for node in plan.nodes]}")
    total_cycles = training.training_cycles if training.mode == "hierarchical" else 1
    run.progress = Progress(total_rounds=training.training_rounds, total_cycles=total_cycles)
    run.clock = TrainingClock(training.training_rounds, total_cycles)
    run.update(progress=run.progress)
    if training.mode == "classic":
        _deploy_classic(run, plan)
    else:
        _deploy_hierarchical(run, plan)
    run.state.training_started = True
    await_training(run)


def resume(run: ProjectRun, record: ProjectRecord) -> None:
    """The training services kept running while the manager was away: reconnect and wait for the result.

    A result published meanwhile arrives as a retained message.
    """
    run.reconnect(record)
    run.event("manager restarted: reconnected to the running training services")
    run.set_phase(ProjectPhase.TRAINING)
    await_training(run)


def can_resume(record: ProjectRecord) -> bool:
    """Whether the record holds what reconnecting needs: the build and the project app."""
    return bool(record.build and record.apps.get("project"))


def await_training(run: ProjectRun) -> None:
    services, restarts = run.state.services, run.restarts
    top = services.top_aggregator()

    def on_message(message: FlopsMessage) -> bool:
        if isinstance(message, TrainingProgress):
            _on_progress(run, message)
        elif isinstance(message, TrainingResult) and message.sender == top:
            run.state.result = message
            return True
        elif (
            isinstance(message, ServiceStatus)
            and message.service == "aggregator"
            and message.state is ReportedState.FAILED
        ):
            if message.sender == top:
                raise PhaseFailed(f"{message.sender} failed: {message.detail}")
            # A cluster aggregator's failure (often: it lost the root) is handled when its process has
            # ended: it is redeployed, and its reason is the project's if it cannot be.
            restarts.note_aggregator_failure(message.sender, message.detail or "failed")
        elif (
            isinstance(message, ServiceStatus)
            and message.service == "learner"
            and message.state is ReportedState.FAILED
        ):
            restarts.note_learner_failure(message.sender, message.detail or "failed")
        return False

    run.reports.wait(
        on_message,
        services.aggregators(),
        run.deps.settings.training_timeout_s,
        "training",
        on_inspect=restarts.during_training,
        revive=restarts.revive_aggregator,
        awaited=lambda: _awaited_round(run),
    )
    result = run.state.result
    assert result is not None
    run.progress = run.progress.model_copy(
        update={"loss": result.loss, "accuracy": result.accuracy, **privacy_result(result)}
    )
    if result.reason:
        run.event(f"training ended after {result.rounds_completed} rounds: {result.reason}")
    run.update(progress=run.progress, mlflow_run_id=result.mlflow_run_id, registered_model=result.registered_model)
    if result.mlflow_run_id:
        link_run_and_log_curve(run, result.mlflow_run_id)


def _awaited_round(run: ProjectRun) -> str:
    """What training waits for now, for the event a quiet stretch gets."""
    progress = run.progress
    total = progress.total_rounds
    if progress.round == 0 and progress.cycle <= 1:
        return f"round 1 of {total} (learners connecting and training)"
    where = f"cycle {progress.cycle} of {progress.total_cycles}, " if progress.total_cycles > 1 else ""
    eta = run.clock.estimate(time.time()) if run.clock is not None else None
    left = f", about {max(eta - time.time(), 0):.0f} s of training left" if eta is not None else ""
    return f"{where}round {min(progress.round + 1, total)} of {total}{left}"


def _on_progress(run: ProjectRun, message: TrainingProgress) -> None:
    now = time.time()
    run.writer.round(round_record(run.project_id, message, now))
    eta_at = run.clock.observe(message, now) if run.clock is not None else None
    timing = {} if eta_at is None else {"training_eta_at": eta_at}
    update: dict[str, object] = {"cycle": message.cycle, "total_cycles": message.total_cycles}
    if message.cluster is None:
        update.update(
            round=message.round, total_rounds=message.total_rounds, loss=message.loss, accuracy=message.accuracy
        )
    elif message.cycle >= run.progress.cycle:
        update.update(round=message.round, total_rounds=message.total_rounds)
    update.update(privacy_progress(run.progress, message))
    run.progress = run.progress.model_copy(update=update)
    run.update(progress=run.progress, **timing)


def _data_servers(run: ProjectRun) -> DataServers:
    return DataServers(run.deps.settings.data_access)


def _customer_tag_lister(run: ProjectRun, tags: list[str]) -> Callable[[str], dict[str, int]]:
    """Rows per tag in this project's customer's namespace only (placement counts nobody else's)."""
    servers = _data_servers(run)

    def list_tags(address: str) -> dict[str, int]:
        with servers.reader(address, run.customer, tags) as client:
            return client.list_tags(tags)

    return list_tags


def _deploy_classic(run: ProjectRun, plan: LearnerPlan) -> None:
    address = _aggregator(run, AggregatorPlace("aggregator", "classic"), Placement())
    for node in plan.nodes:
        _learner(run, node.name, node.cluster, node.data_server or "", address)


def _deploy_hierarchical(run: ProjectRun, plan: LearnerPlan) -> None:
    clusters = tuple(str(cluster) for cluster in plan.clusters)
    root_address = _aggregator(run, AggregatorPlace("root-aggregator", "root", expected_clusters=clusters), Placement())
    for cluster, members in plan.clusters.items():
        place = AggregatorPlace(f"cluster-aggregator-{cluster}", "cluster", cluster, root_address=root_address)
        address = _aggregator(run, place, Placement(cluster=cluster))
        for node in members:
            _learner(run, node.name, node.cluster, node.data_server or "", address)


def _aggregator(run: ProjectRun, place: AggregatorPlace, placement: Placement) -> str:
    """Deploy one aggregator; returns the address its learners (or cluster aggregators) connect to."""
    settings, build = run.deps.settings, run.build_result()
    endpoint = run.deps.adapter.plan_endpoint(run.app(), place.name, FLEET_PORT, placement)
    flower_tls = None
    if settings.flower_tls:
        flower_tls = run.flower_ca.for_superlink(
            endpoint.host, cluster_identity(place.cluster) if place.cluster else None
        )
    config = aggregator_config(
        run.facts(),
        place,
        endpoint,
        build,
        model_name=registered_model_name(run.project_id),
        params=run_params(run.sla, build, run.deps.adapter.name),
        work_dir=run.work_dir(place.name),
        flower_tls=flower_tls,
    )
    spec = run.spec(
        place.name,
        ServiceKind.AGGREGATOR,
        config,
        runtime=True,
        image=build.aggregator_image,
        placement=placement,
        ports=(FLEET_PORT,),
    )
    run.deploy(spec, role=place.role, cluster=place.cluster)
    return endpoint.address


def _learner(run: ProjectRun, node: str, cluster: str | None, data_server: str, aggregator_address: str) -> None:
    build, servers = run.build_result(), _data_servers(run)
    name = f"learner-{node}"
    tags = list(run.sla.training_configuration.data_tags)
    config = learner_config(
        run.facts(),
        name,
        node,
        cluster,
        build,
        aggregator_address=aggregator_address,
        data_server=data_server,
        data_token=servers.project_read_token(run.customer, run.project_id, node, tags),
        data_ca_pem=servers.ca_pem,
        work_dir=run.work_dir(name),
        flower_tls=run.flower_ca.for_supernode(node) if run.deps.settings.flower_tls else None,
    )
    placement = Placement(node=node, cluster=cluster, data_tags=tuple(config.data_tags))
    spec = run.spec(name, ServiceKind.LEARNER, config, runtime=True, image=build.learner_image, placement=placement)
    run.deploy(spec, cluster=cluster)
