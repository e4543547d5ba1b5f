"""Hierarchical roles.

Root: FedAvg over cluster models for ``training_cycles`` cycles, each cluster weighted
by the training examples behind it; after the last cycle the clusters evaluate the
global model on their learners.

Cluster (inner ServerApp on the cluster's own SuperLink): waits for jobs from the
bridge (see :mod:`services.aggregator.bridge`), trains its learners for
``training_rounds`` rounds per ``train`` job starting from the root's model, and
evaluates on an ``evaluate`` job, after which it ends.

Both checkpoint to their MLflow runs (the root after every cycle, a cluster after every
round). A redeployed root continues with the next cycle; a redeployed cluster joins the
root as a new node, gets the interrupted cycle again and continues after its last round.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.serverapp import Grid

from flops_utils.message_text import one_line
from flops_utils.service_config import TrainingSettings
from services.aggregator.bridge import Bridge, Job
from services.aggregator.classic import learner_rounds, resume_point
from services.aggregator.final_model import finish_training
from services.aggregator.privacy import (
    PrivacyPlan,
    privacy_plan,
    round_privacy,
    rounds_to_run,
    with_privacy_outcome,
)
from services.aggregator.rounds import FederatedRounds, RoundFailed, RoundResult
from services.aggregator.session import (
    BRIDGE_DIR,
    ServerSession,
    connect_timeout_s,
    cycle_timeout_s,
    strategy_params,
)
from services.aggregator.strategy_factory import round_strategy
from services.fl_runtime import protocol as p
from services.fl_runtime.checkpoint import Checkpoint, known
from services.fl_runtime.outcome import RunOutcome
from services.fl_runtime.user_code import initial_parameters, load_model_manager

CYCLE_SECONDS = "cycle_seconds"


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


# -- root ---------------------------------------------------------------------------
def replacement_wait_s(training: TrainingSettings) -> float:
    """How long the root waits for a redeployed cluster aggregator to join (its processes start from scratch)."""
    return connect_timeout_s(training) * 2


def run_root(grid: Grid, session: ServerSession) -> RunOutcome:
    config, training = session.config, session.config.training
    manager = load_model_manager(config.app_dir)
    arrays = initial_parameters(manager)
    clusters = max(1, len(config.expected_clusters))
    rounds = FederatedRounds(
        grid,
        min_available=clusters,
        min_fit=clusters,
        min_evaluate=clusters,
        timeout_s=cycle_timeout_s(training),
        what="cluster aggregator",
        on_lost=session.lost,
        on_back=session.back,
        on_wait=session.waiting,
        replacement_wait_s=replacement_wait_s(training),
        strategy=round_strategy(config, "clusters", min_fit=clusters, min_evaluate=clusters),
    )
    root_plan = privacy_plan(config, "clusters")
    cluster_plans = {
        name: plan
        for name in config.expected_clusters
        if (plan := privacy_plan(config, "learners", cluster=name)) is not None
    }
    try:
        last_cycle = cycles_to_run(root_plan, cluster_plans, training)
    except ValueError as error:
        raise RoundFailed(str(error)) from None
    resumed_run, checkpoint = resume_point(session)
    waited = time.monotonic()
    rounds.wait_for_nodes(clusters, connect_timeout_s(training) * 2)
    waited = time.monotonic() - waited
    session.reporter.event(f"{clusters} cluster aggregators connected after {waited:.1f} s")
    if last_cycle < training.training_cycles:
        session.reporter.event(f"the privacy budget allows {last_cycle} of {training.training_cycles} cycles")
    params = {**strategy_params(config), **(root_plan.params("dp.root") if root_plan else {})}
    for name, plan in cluster_plans.items():
        params.update(plan.params(f"dp.cluster.{name}"))
    run_id = session.tracker.start(params, resume_run_id=resumed_run)
    cycles, per_cycle = last_cycle, training.training_rounds
    first_cycle = 1
    if checkpoint is not None:
        arrays, first_cycle = checkpoint.arrays, checkpoint.cycle + 1
        _log_cycle(session, checkpoint.metrics, checkpoint.state, checkpoint.cycle, resumed=True)  # what is missing
        session.reporter.event(f"resuming MLflow run {resumed_run} from the checkpoint of cycle {checkpoint.cycle}")
    session.tracker.log_metrics({"wait_for_clusters_seconds": waited}, step=first_cycle - 1)
    final: RoundResult | None = None
    for cycle in range(first_cycle, cycles + 1):
        job: dict[str, int | float | str] = {p.CYCLE: cycle, p.TOTAL_CYCLES: cycles, p.PARENT_RUN: run_id or ""}
        trained = rounds.train_round(cycle, arrays, job)
        assert trained.arrays is not None
        arrays = trained.arrays
        # The root's global model on every learner (through the clusters); after the last cycle this is final.
        final = rounds.evaluate_round(cycle, arrays, {**job, p.FINAL: int(cycle == cycles)})
        result = trained.with_global_evaluation(final)
        privacy = hierarchical_privacy(root_plan, cluster_plans, rounds, cycle, per_cycle)
        metrics = known(
            {
                "loss": result.loss,
                "accuracy": result.accuracy,
                "train_loss": result.train_loss,
                "train_accuracy": result.train_accuracy,
                CYCLE_SECONDS: result.seconds,
                "num_examples": float(result.num_examples),
                **privacy,
            }
        )
        state = {"cluster_rounds": _cluster_rounds(result, cycle, per_cycle)}
        # Checkpoint first: a crash after it logs these values on resume, a crash before it reruns the cycle.
        session.tracker.save_checkpoint(Checkpoint(per_cycle, arrays, metrics, cycle=cycle, state=state))
        session.progress(
            result,
            cycle=cycle,
            total_cycles=cycles,
            round_=per_cycle,
            total_rounds=per_cycle,
            privacy={key: value for key, value in privacy.items() if key in PROGRESS_KEYS},
        )
        _log_cycle(session, metrics, state, cycle)
    if final is None:  # resumed after the last cycle's checkpoint
        final = rounds.evaluate_round(
            cycles, arrays, {p.CYCLE: cycles, p.TOTAL_CYCLES: cycles, p.PARENT_RUN: run_id or "", p.FINAL: 1}
        )
    outcome = finish_training(
        session, manager, arrays, final, step=cycles, rounds_completed=cycles * per_cycle, cycles_completed=cycles
    )
    final_privacy = hierarchical_privacy(root_plan, cluster_plans, rounds, cycles, per_cycle)
    return with_privacy_outcome(
        outcome,
        session.tracker,
        final_privacy.get("dp_epsilon"),
        final_privacy.get("dp_delta"),
        cycles < training.training_cycles,
    )


PROGRESS_KEYS = ("dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_clipping_norm")


def cycles_to_run(root: PrivacyPlan | None, clusters: dict[str, PrivacyPlan], training: TrainingSettings) -> int:
    """Cycles every level's budget allows: the root's (one release per cycle) and each cluster's (its rounds)."""
    cycles, per_cycle = training.training_cycles, training.training_rounds
    allowed = rounds_to_run(root, cycles)
    for name, plan in clusters.items():
        try:
            rounds = rounds_to_run(plan, cycles * per_cycle)
        except ValueError as error:
            raise ValueError(f"cluster {name}: {error}") from None
        if rounds < per_cycle:
            raise ValueError(f"cluster {name}: the privacy budget does not allow one cycle of {per_cycle} rounds")
        allowed = min(allowed, rounds // per_cycle)
    return allowed


def hierarchical_privacy(
    root: PrivacyPlan | None, clusters: dict[str, PrivacyPlan], rounds: FederatedRounds, cycle: int, per_cycle: int
) -> dict[str, float]:
    """The root's DP figures after ``cycle``: ``dp_epsilon`` is the highest ε of any level (the weakest
    guarantee a learner has), with each cluster's and the root's own under their names."""
    figures: dict[str, float] = {}
    highest: tuple[float, float] | None = None
    for name, plan in clusters.items():
        epsilon = plan.epsilon_after(cycle * per_cycle)
        figures[f"dp_epsilon/{name}"] = epsilon
        highest = max(highest or (epsilon, plan.delta), (epsilon, plan.delta))
    if root is not None:
        own = round_privacy(root, rounds.strategy, cycle)
        figures.update({f"dp_root_{key.removeprefix('dp_')}": value for key, value in own.items()})
        figures.update(dp_noise_multiplier=own["dp_noise_multiplier"], dp_clipping_norm=own["dp_clipping_norm"])
        highest = max(highest or (own["dp_epsilon"], root.delta), (own["dp_epsilon"], root.delta))
    if highest is not None:
        figures.update(dp_epsilon=highest[0], dp_delta=highest[1])
    return figures


def _cluster_rounds(result: RoundResult, cycle: int, per_cycle: int) -> list[list[Any]]:
    """Per-cluster metrics for the root run as ``[step, {name: value}]``, stepped by global round index."""
    steps: list[list[Any]] = []
    for reply in result.replies:
        name = reply.cluster or reply.name
        losses = reply.metrics.get(p.ROUND_LOSSES)
        accuracies = reply.metrics.get(p.ROUND_ACCURACIES)
        for index in range(per_cycle):
            values: dict[str, float] = {}
            if isinstance(losses, list) and index < len(losses):
                values[f"cluster/{name}/loss"] = float(losses[index])
            if isinstance(accuracies, list) and index < len(accuracies):
                values[f"cluster/{name}/accuracy"] = float(accuracies[index])
            steps.append([(cycle - 1) * per_cycle + index + 1, values])
    return steps


def _log_cycle(
    session: ServerSession, metrics: dict[str, float], state: dict[str, Any], cycle: int, resumed: bool = False
) -> None:
    """The cycle's metrics and its clusters' per-round metrics; ``resumed``: only those not logged yet
    (the previous instance may have died half-way through logging them)."""
    batches = [(int(step), dict(values)) for step, values in state.get("cluster_rounds", [])]
    batches.append((cycle, dict(metrics)))
    logged: dict[str, set[int]] = {}
    for step, values in batches:
        if resumed:
            for key in values:
                if key not in logged:
                    logged[key] = session.tracker.logged_steps(key)
            values = {key: value for key, value in values.items() if step not in logged[key]}
        if values:
            session.tracker.log_metrics(values, step=step)


# -- cluster ------------------------------------------------------------------------
def run_cluster(grid: Grid, session: ServerSession) -> RunOutcome:
    config, training = session.config, session.config.training
    bridge = Bridge(session.work_dir / BRIDGE_DIR)
    rounds = learner_rounds(grid, session)
    resumed_run, checkpoint = resume_point(session)
    waited = time.monotonic()
    nodes = rounds.wait_for_nodes(training.min_available_clients, connect_timeout_s(training))
    session.reporter.event(
        f"cluster {config.cluster}: {len(nodes)} learners connected after {time.monotonic() - waited:.1f} s"
    )
    plan = privacy_plan(config, "learners")
    params = {**strategy_params(config), **(plan.params() if plan else {})}
    if resumed_run is not None:
        session.tracker.start(params, resume_run_id=resumed_run)
        where = f"after cycle {checkpoint.cycle} round {checkpoint.round}" if checkpoint else "(no checkpoint yet)"
        session.reporter.event(f"cluster {config.cluster}: resuming MLflow run {resumed_run} {where}")
    job_wait = cycle_timeout_s(training) + connect_timeout_s(training)
    done: set[str] = set()
    cycles_done, last = 0, None
    while True:
        job = bridge.next_job(done, job_wait)
        if job is None:
            raise RoundFailed(f"cluster {config.cluster}: no work from the root aggregator for {job_wait:g} s")
        done.add(job.name)
        try:
            if session.tracker.run_id is None:
                parent = str(job.config.get(p.PARENT_RUN) or "") or None
                session.tracker.start(params, parent_run_id=parent)
            if job.kind == "evaluate":
                last = rounds.evaluate_round(int(job.config.get(p.CYCLE, 0)), job.arrays, {})
                bridge.complete(job.name, True, _evaluation_metrics(last))
                if int(job.config.get(p.FINAL, 1)):
                    break
                continue
            cycles_done = int(job.config[p.CYCLE])
            resume = checkpoint if checkpoint is not None and checkpoint.cycle == cycles_done else None
            _train_cycle(session, rounds, bridge, job, resume)
        except Exception as error:
            bridge.complete(job.name, False, {}, reason=one_line(f"cluster {config.cluster}: {error}"))
            raise
    return RunOutcome(
        ok=True,
        rounds_completed=cycles_done * training.training_rounds,
        cycles_completed=cycles_done,
        loss=last.loss if last else None,
        accuracy=last.accuracy if last else None,
        mlflow_run_id=session.tracker.run_id,
    )


def _train_cycle(
    session: ServerSession, rounds: FederatedRounds, bridge: Bridge, job: Job, resume: Checkpoint | None
) -> None:
    """The cycle's rounds; ``resume`` (this cycle's checkpoint of a crashed instance) skips the rounds done."""
    training = session.config.training
    cycle = int(job.config[p.CYCLE])
    cycles = int(job.config.get(p.TOTAL_CYCLES, training.training_cycles))
    per_cycle = training.training_rounds
    arrays, first_round = job.arrays, 1
    state: dict[str, Any] = {"round_losses": [], "round_accuracies": [], "reply": {}}
    if resume is not None:
        arrays, first_round, state = resume.arrays, resume.round + 1, dict(resume.state)
        step = (cycle - 1) * per_cycle + resume.round
        if step not in session.tracker.logged_steps("round_seconds"):  # died before logging
            session.tracker.log_metrics(dict(resume.metrics), step=step)
    for server_round in range(first_round, per_cycle + 1):
        trained = rounds.train_round(server_round, arrays, {p.CYCLE: cycle})
        assert trained.arrays is not None
        arrays = trained.arrays
        result = trained.with_global_evaluation(rounds.evaluate_round(server_round, arrays, {p.CYCLE: cycle}))
        state = {
            "round_losses": [*state["round_losses"], _number(result.loss)],
            "round_accuracies": [*state["round_accuracies"], _number(result.accuracy)],
            "reply": {
                p.NUM_EXAMPLES: result.num_examples,
                p.EVAL_EXAMPLES: result.eval_examples,
                p.LOSS: _number(result.loss),
                p.ACCURACY: _number(result.accuracy),
            },
        }
        plan = privacy_plan(session.config, "learners")
        privacy = round_privacy(plan, rounds.strategy, (cycle - 1) * per_cycle + server_round) if plan else {}
        metrics = known(
            {
                "loss": result.loss,
                "accuracy": result.accuracy,
                "train_loss": result.train_loss,
                "train_accuracy": result.train_accuracy,
                "eval_seconds": result.eval_seconds,
                "round_seconds": result.seconds,
                "participants": float(len(result.participants)),
                **privacy,
            }
        )
        session.tracker.save_checkpoint(Checkpoint(server_round, arrays, metrics, cycle=cycle, state=state))
        session.progress(
            result, cycle=cycle, total_cycles=cycles, round_=server_round, total_rounds=per_cycle, privacy=privacy
        )
        session.tracker.log_metrics(dict(metrics), step=(cycle - 1) * per_cycle + server_round)
    reply = {**state["reply"], p.ROUND_LOSSES: state["round_losses"], p.ROUND_ACCURACIES: state["round_accuracies"]}
    bridge.complete(job.name, True, reply, arrays=arrays)


def _evaluation_metrics(result: RoundResult) -> dict[str, Any]:
    return {
        p.NUM_EXAMPLES: max(result.eval_examples, 1),
        p.EVAL_EXAMPLES: result.eval_examples,
        p.LOSS: _number(result.loss),
        p.ACCURACY: _number(result.accuracy),
    }


__all__ = ["run_cluster", "run_root"]
