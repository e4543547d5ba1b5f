"""Logs the aggregated model with the SLA's MLflow flavor (aggregators with a tracking server)."""

from __future__ import annotations

import time

import numpy as np

from flops_utils.ml_interfaces import ModelManager
from services.aggregator.session import ServerSession
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
    logged = session.tracker.log_model(
        model, config.flavor, config.registered_model_name, user_code_dir(config.app_dir)
    )
    session.tracker.log_metrics({"model_logging_seconds": time.monotonic() - started}, step=0)
    return logged
