"""Hierarchical roles.

Root: FedAvg over cluster models for ``training_cycles`` cycles, each cluster weighted
by the training examples behind it; after the last cycle the clusters evaluate the
global model on their learners.

Cluster (inner ServerApp on the cluster's own SuperLink): waits for jobs from the
bridge (see :mod:`services.aggregator.bridge`), trains its learners for
``training_rounds`` rounds per ``train`` job starting from the root's model, and
evaluates on an ``evaluate`` job, after which it ends.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.serverapp import Grid

from services.aggregator.bridge import Bridge, Job
from services.aggregator.classic import learner_rounds
from services.aggregator.final_model import log_final_model
from services.aggregator.rounds import FederatedRounds, RoundFailed, RoundResult
from services.aggregator.session import (
    BRIDGE_DIR,
    ServerSession,
    connect_timeout_s,
    cycle_timeout_s,
    strategy_params,
)
from services.fl_runtime import protocol as p
from services.fl_runtime.outcome import RunOutcome
from services.fl_runtime.reporter import one_line
from services.fl_runtime.user_code import load_model_manager


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


# -- root ---------------------------------------------------------------------------
def run_root(grid: Grid, session: ServerSession) -> RunOutcome:
    config, training = session.config, session.config.training
    manager = load_model_manager(config.app_dir)
    arrays = manager.get_model_parameters()
    clusters = max(1, len(config.expected_clusters))
    rounds = FederatedRounds(
        grid,
        min_available=clusters,
        min_fit=clusters,
        min_evaluate=clusters,
        timeout_s=cycle_timeout_s(training),
        what="cluster aggregator",
        on_lost=session.lost,
    )
    waited = time.monotonic()
    rounds.wait_for_nodes(clusters, connect_timeout_s(training) * 2)
    waited = time.monotonic() - waited
    session.reporter.event(f"{clusters} cluster aggregators connected after {waited:.1f} s")
    run_id = session.tracker.start(strategy_params(config))
    session.tracker.log_metrics({"wait_for_clusters_seconds": waited}, step=0)
    cycles, per_cycle = training.training_cycles, training.training_rounds
    for cycle in range(1, cycles + 1):
        job = {p.CYCLE: cycle, p.TOTAL_CYCLES: cycles, p.PARENT_RUN: run_id or ""}
        result = rounds.train_round(cycle, arrays, job)
        assert result.arrays is not None
        arrays = result.arrays
        session.progress(result, cycle=cycle, total_cycles=cycles, round_=per_cycle, total_rounds=per_cycle)
        metrics: dict[str, float | None] = {
            "loss": result.loss,
            "accuracy": result.accuracy,
            "cycle_seconds": result.seconds,
            "num_examples": float(result.num_examples),
        }
        session.tracker.log_metrics(metrics, step=cycle)
        _log_cluster_rounds(session, result, cycle, per_cycle)
    final = rounds.evaluate_round(cycles, arrays, {p.CYCLE: cycles, p.TOTAL_CYCLES: cycles, p.PARENT_RUN: run_id or ""})
    session.tracker.log_metrics({"final_loss": final.loss, "final_accuracy": final.accuracy}, step=cycles)
    logged = log_final_model(session, manager, arrays)
    return RunOutcome(
        ok=True,
        rounds_completed=cycles * per_cycle,
        cycles_completed=cycles,
        loss=final.loss,
        accuracy=final.accuracy,
        mlflow_run_id=session.tracker.run_id,
        model_uri=logged.model_uri if logged else None,
        registered_model=logged.registered_model if logged else None,
        registered_version=logged.registered_version if logged else None,
    )


def _log_cluster_rounds(session: ServerSession, result: RoundResult, cycle: int, per_cycle: int) -> None:
    """Per-cluster metrics in the root run, stepped by global round index."""
    for reply in result.replies:
        name = reply.cluster or reply.name
        losses = reply.metrics.get(p.ROUND_LOSSES)
        accuracies = reply.metrics.get(p.ROUND_ACCURACIES)
        for index in range(per_cycle):
            step = (cycle - 1) * per_cycle + index + 1
            values: dict[str, float | None] = {}
            if isinstance(losses, list) and index < len(losses):
                values[f"cluster/{name}/loss"] = float(losses[index])
            if isinstance(accuracies, list) and index < len(accuracies):
                values[f"cluster/{name}/accuracy"] = float(accuracies[index])
            session.tracker.log_metrics(values, step=step)


# -- cluster ------------------------------------------------------------------------
def run_cluster(grid: Grid, session: ServerSession) -> RunOutcome:
    config, training = session.config, session.config.training
    bridge = Bridge(session.work_dir / BRIDGE_DIR)
    rounds = learner_rounds(grid, session)
    waited = time.monotonic()
    nodes = rounds.wait_for_nodes(training.min_available_clients, connect_timeout_s(training))
    session.reporter.event(
        f"cluster {config.cluster}: {len(nodes)} learners connected after {time.monotonic() - waited:.1f} s"
    )
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
                session.tracker.start(strategy_params(config), parent_run_id=parent)
            if job.kind == "evaluate":
                last = rounds.evaluate_round(int(job.config.get(p.CYCLE, 0)), job.arrays, {})
                bridge.complete(job.name, True, _evaluation_metrics(last))
                break
            cycles_done = int(job.config[p.CYCLE])
            _train_cycle(session, rounds, bridge, job)
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


def _train_cycle(session: ServerSession, rounds: FederatedRounds, bridge: Bridge, job: Job) -> None:
    training = session.config.training
    cycle = int(job.config[p.CYCLE])
    cycles = int(job.config.get(p.TOTAL_CYCLES, training.training_cycles))
    per_cycle = training.training_rounds
    arrays, losses, accuracies = job.arrays, [], []
    result: RoundResult | None = None
    for server_round in range(1, per_cycle + 1):
        result = rounds.train_round(server_round, arrays, {p.CYCLE: cycle})
        assert result.arrays is not None
        arrays = result.arrays
        losses.append(_number(result.loss))
        accuracies.append(_number(result.accuracy))
        session.progress(result, cycle=cycle, total_cycles=cycles, round_=server_round, total_rounds=per_cycle)
        step = (cycle - 1) * per_cycle + server_round
        session.tracker.log_metrics(
            {
                "loss": result.loss,
                "accuracy": result.accuracy,
                "round_seconds": result.seconds,
                "participants": float(len(result.participants)),
            },
            step=step,
        )
    assert result is not None
    metrics: dict[str, Any] = {
        p.NUM_EXAMPLES: result.num_examples,
        p.EVAL_EXAMPLES: result.eval_examples,
        p.LOSS: _number(result.loss),
        p.ACCURACY: _number(result.accuracy),
        p.ROUND_LOSSES: losses,
        p.ROUND_ACCURACIES: accuracies,
    }
    bridge.complete(job.name, True, metrics, arrays=arrays)


def _evaluation_metrics(result: RoundResult) -> dict[str, Any]:
    return {
        p.NUM_EXAMPLES: max(result.eval_examples, 1),
        p.EVAL_EXAMPLES: result.eval_examples,
        p.LOSS: _number(result.loss),
        p.ACCURACY: _number(result.accuracy),
    }


__all__ = ["run_cluster", "run_root"]
