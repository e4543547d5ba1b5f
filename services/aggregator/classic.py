"""Classic role: FedAvg over the learners for ``training_rounds`` rounds."""

from __future__ import annotations

import time
from functools import partial

from flwr.serverapp import Grid

from services.aggregator.final_model import finish_training
from services.aggregator.privacy import budget_note, privacy_plan, round_privacy, rounds_to_run, with_privacy_outcome
from services.aggregator.rounds import FederatedRounds, RoundFailed, RoundResult
from services.aggregator.secure_aggregation import SecureFederatedRounds
from services.aggregator.session import ServerSession, connect_timeout_s, strategy_params
from services.aggregator.strategy_factory import round_strategy
from services.fl_runtime import protocol as p
from services.fl_runtime.checkpoint import Checkpoint, known
from services.fl_runtime.outcome import RunOutcome
from services.fl_runtime.user_code import initial_parameters, load_model_manager


def learner_rounds(grid: Grid, session: ServerSession) -> FederatedRounds:
    training = session.config.training
    secure = training.secure_aggregation
    rounds = partial(SecureFederatedRounds, secure=secure) if secure and secure.enabled else FederatedRounds
    return rounds(
        grid,
        min_available=training.min_available_clients,
        min_fit=training.min_fit_clients,
        min_evaluate=training.min_evaluate_clients,
        timeout_s=training.round_timeout_s,
        what="learner",
        on_lost=session.lost,
        on_back=session.back,
        on_wait=session.waiting,
        strategy=round_strategy(
            session.config, "learners", min_fit=training.min_fit_clients, min_evaluate=training.min_evaluate_clients
        ),
    )


def slowest_fit_seconds(result: RoundResult) -> float | None:
    """The slowest learner's ``fit_model`` time in a round (round_seconds minus this is control-plane time)."""
    return max((t for reply in result.replies if (t := reply.scalar(p.FIT_SECONDS)) is not None), default=None)


def resume_point(session: ServerSession) -> tuple[str | None, Checkpoint | None]:
    """The run and checkpoint an earlier, crashed instance of this aggregator left, if any."""
    run_id = session.tracker.find_unfinished_run()
    if run_id is None:
        return None, None
    return run_id, session.tracker.load_checkpoint(run_id)


def round_metrics(result: RoundResult) -> dict[str, float | None]:
    """``loss``/``accuracy``: the new global model on the participants' test splits (example-weighted);
    ``train_*``: each learner's freshly fitted local model on its own test split."""
    return {
        "loss": result.loss,
        "accuracy": result.accuracy,
        "train_loss": result.train_loss,
        "train_accuracy": result.train_accuracy,
        "eval_seconds": result.eval_seconds,
        "round_seconds": result.seconds,
        "slowest_fit_seconds": slowest_fit_seconds(result),
        "participants": float(len(result.participants)),
        "num_examples": float(result.num_examples),
    }


def run_classic(grid: Grid, session: ServerSession) -> RunOutcome:
    config, training = session.config, session.config.training
    manager = load_model_manager(config.app_dir)
    arrays = initial_parameters(manager)
    rounds = learner_rounds(grid, session)
    plan = privacy_plan(config, "learners")
    try:
        last_round = rounds_to_run(plan, training.training_rounds)
    except ValueError as error:
        raise RoundFailed(str(error)) from None
    resumed_run, checkpoint = resume_point(session)
    waited = time.monotonic()
    nodes = rounds.wait_for_nodes(training.min_available_clients, connect_timeout_s(training))
    waited = time.monotonic() - waited
    session.reporter.event(f"{len(nodes)} learners connected after {waited:.1f} s")
    if note := budget_note(plan, last_round, training.training_rounds):
        session.reporter.event(note)
    session.tracker.start({**strategy_params(config), **(plan.params() if plan else {})}, resume_run_id=resumed_run)
    first_round = 1
    if checkpoint is not None:
        arrays, first_round = checkpoint.arrays, checkpoint.round + 1
        if "accuracy" in checkpoint.metrics and checkpoint.round not in session.tracker.logged_steps("accuracy"):
            session.tracker.log_metrics(dict(checkpoint.metrics), step=checkpoint.round)  # died before logging
        session.reporter.event(f"resuming MLflow run {resumed_run} from the checkpoint of round {checkpoint.round}")
    elif resumed_run is not None:
        session.reporter.event(f"resuming MLflow run {resumed_run} from round 1 (no checkpoint yet)")
    session.tracker.log_metrics({"wait_for_learners_seconds": waited}, step=first_round - 1)
    total = training.training_rounds
    final: RoundResult | None = None
    for server_round in range(first_round, last_round + 1):
        trained = rounds.train_round(server_round, arrays, {})
        assert trained.arrays is not None
        arrays = trained.arrays
        final = rounds.evaluate_round(server_round, arrays, {})  # the new global model, on every learner
        result = trained.with_global_evaluation(final)
        privacy = round_privacy(plan, rounds.strategy, server_round) if plan else {}
        metrics = {**round_metrics(result), **privacy}
        # Checkpoint first: a crash after it re-logs these metrics on resume, a crash before it reruns the round.
        session.tracker.save_checkpoint(Checkpoint(server_round, arrays, known(metrics)))
        session.progress(result, cycle=1, total_cycles=1, round_=server_round, total_rounds=total, privacy=privacy)
        session.tracker.log_metrics(metrics, step=server_round)
    if final is None:  # resumed after the last round's checkpoint
        final = rounds.evaluate_round(last_round, arrays, {})
    outcome = finish_training(
        session, manager, arrays, final, step=last_round, rounds_completed=last_round, cycles_completed=1
    )
    epsilon = plan.epsilon_after(last_round) if plan else None
    return with_privacy_outcome(outcome, session.tracker, epsilon, plan.delta if plan else None, last_round < total)
