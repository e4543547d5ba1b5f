"""The FLOps ServerApp (``services.aggregator.server_app:app`` in the generated Flower app).

The aggregator service passes its config as a file path in the run config
(``flops-config-file``); the role in it picks classic, root or cluster behaviour.
The ServerApp writes its outcome to the work dir for the service to publish.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flops_utils.message_text import error_line
from flops_utils.service_config import AggregatorConfig
from services.aggregator.classic import run_classic
from services.aggregator.hierarchical import run_cluster, run_root
from services.aggregator.session import ServerSession, log_to_file
from services.fl_runtime.flower_app import RUN_CONFIG_KEY
from services.fl_runtime.outcome import RunOutcome, write_outcome

log = logging.getLogger("flops.server_app")

ROLES: dict[str, Callable[[Grid, ServerSession], RunOutcome]] = {
    "classic": run_classic,
    "root": run_root,
    "cluster": run_cluster,
}

app = ServerApp()


def load_run_config(context: Context) -> AggregatorConfig:
    path = str(context.run_config.get(RUN_CONFIG_KEY, ""))
    if not path:
        raise RuntimeError(f"run config {RUN_CONFIG_KEY} is not set")
    return AggregatorConfig.model_validate_json(Path(path).read_text())


def serve(grid: Grid, config: AggregatorConfig) -> RunOutcome:
    """Run the configured role; always leaves an outcome in the work dir."""
    log_to_file(Path(config.work_dir) / "server_app.log")
    session = ServerSession(config)
    try:
        session.reporter.connect()
        outcome = ROLES[config.role](grid, session)
        session.tracker.finish(ok=True)
    except Exception as error:
        reason = error_line(error)
        log.exception("ServerApp (%s) failed: %s", config.role, reason)
        session.tracker.finish(ok=False)
        write_outcome(config.work_dir, RunOutcome(ok=False, reason=reason, mlflow_run_id=session.tracker.run_id))
        raise
    finally:
        session.reporter.close()
    write_outcome(config.work_dir, outcome)
    return outcome


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, load_run_config(context))
