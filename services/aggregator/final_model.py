"""The end of a training run: final metrics, the aggregated model in MLflow, the run's outcome."""

from __future__ import annotations

import time

import numpy as np

from flops_utils.ml_interfaces import ModelManager
from services.aggregator.rounds import RoundResult
from services.aggregator.session import ServerSession
from services.fl_runtime.outcome import RunOutcome
from services.fl_runtime.tracking import LoggedModel
from services.fl_runtime.user_code import UserCodeError, user_code_dir


def log_final_model(session: ServerSession, manager: ModelManager, arrays: list[np.ndarray]) -> LoggedModel | None:
    if not session.tracker.enabled:
        return None
    try:
        manager.set_model_parameters(arrays)
        model = manager.get_model()
    except Exception as error:
        raise UserCodeError(
            f"ModelManager cannot take the aggregated parameters: {type(error).__name__}: {error}"
        ) from None
    started = time.monotonic()
    config = session.config
    megabytes = sum(np.asarray(array).nbytes for array in arrays) / 1e6
    session.reporter.event(
        f"logging the final model ({megabytes:.1f} MB of parameters) to MLflow"
        + (f" as {config.registered_model_name}" if config.registered_model_name else "")
    )
    logged = session.tracker.log_model(
        model, config.flavor, config.registered_model_name, user_code_dir(config.app_dir)
    )
    session.tracker.log_metrics({"model_logging_seconds": time.monotonic() - started}, step=0)
    return logged


def finish_training(
    session: ServerSession,
    manager: ModelManager,
    arrays: list[np.ndarray],
    final: RoundResult,
    *,
    step: int,
    rounds_completed: int,
    cycles_completed: int,
) -> RunOutcome:
    """Log the final evaluation (at ``step``) and the model; the outcome the aggregator reports."""
    session.tracker.log_metrics({"final_loss": final.loss, "final_accuracy": final.accuracy}, step=step)
    logged = log_final_model(session, manager, arrays)
    return RunOutcome(
        ok=True,
        rounds_completed=rounds_completed,
        cycles_completed=cycles_completed,
        loss=final.loss,
        accuracy=final.accuracy,
        mlflow_run_id=session.tracker.run_id,
        model_uri=logged.model_uri if logged else None,
        registered_model=logged.registered_model if logged else None,
        registered_version=logged.registered_version if logged else None,
    )
