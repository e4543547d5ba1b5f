"""Aggregator service entry (``flops-aggregator``): a link server, the round loop in-process, one report.

1. start the link server (:mod:`services.fl_runtime.link`) on ``bind_host:port``;
2. cluster role only: join the root's link server as a node whose messages are cluster cycles;
3. run the FLOps ServerApp code (``server_app.serve``) on the link's Flower ``Grid`` in this process;
4. publish ``TrainingResult`` (classic/root) and ``succeeded``, or ``failed`` with a one-line reason.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from flops_utils.message_text import error_line
from flops_utils.mqtt_catalogue import (
    ControlCommand,
    FlopsMessage,
    ReportedState,
    ServiceStatus,
    TopicKind,
    TrainingResult,
    topic,
)
from flops_utils.service_config import AggregatorConfig, load_config, log_level
from services.aggregator.cluster_node import root_link_handler
from services.aggregator.server_app import serve
from services.aggregator.session import BRIDGE_DIR, cycle_timeout_s, sender_name
from services.fl_runtime.link.client import LinkClient, new_node_id
from services.fl_runtime.link.frames import Hello
from services.fl_runtime.link.grid import LinkGrid
from services.fl_runtime.link.server import LinkServer
from services.fl_runtime.outcome import RunOutcome, clear_outcome
from services.fl_runtime.reporter import Reporter

log = logging.getLogger("flops.aggregator")

POLL_S = 0.2


class AggregatorService:
    def __init__(self, config: AggregatorConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self.work_dir = Path(config.work_dir)
        self.stop_requested = threading.Event()
        self.root_finished = threading.Event()
        self.server: LinkServer | None = None
        self.root_link: LinkClient | None = None

    # -- entry -------------------------------------------------------------------
    def listen(self) -> None:
        """Subscribe before reporting ``started``: a stop sent after that is never missed."""
        for kind in (TopicKind.CONTROL, TopicKind.RESULT, TopicKind.STATUS):
            self.reporter.subscribe(topic(self.config.project_id, kind), self._on_message)

    def run(self) -> int:
        try:
            outcome = self._train()
            if outcome is not None and outcome.ok and self.config.role == "cluster":
                self._await_root()
        except (OSError, ValueError) as error:
            self.reporter.failed(error)
            return 1
        finally:
            self._shutdown()
        if outcome is None:
            self.reporter.stopped("stop requested")
            return 0
        if not outcome.ok:
            self.reporter.failed(outcome.reason)
            return 1
        if self.config.role != "cluster":
            self.reporter.publish(self._result(outcome))
        self.reporter.succeeded(f"{outcome.rounds_completed} rounds")
        return 0

    def _on_message(self, _topic: str, message: FlopsMessage) -> None:
        if isinstance(message, ControlCommand) and message.command == "stop":
            self.stop_requested.set()
        elif isinstance(message, TrainingResult):
            self.root_finished.set()
        elif (
            isinstance(message, ServiceStatus)
            and message.service == "aggregator"
            and message.state in (ReportedState.FAILED, ReportedState.STOPPED)
            and message.sender != self.reporter.sender
        ):
            self.root_finished.set()  # the root (or a sibling) gave up: nobody needs our link any more

    def _await_root(self) -> None:
        """Keep the link to the root until it has our last reply (it publishes the result after that)."""
        deadline = time.monotonic() + cycle_timeout_s(self.config.training)
        while not (self.root_finished.is_set() or self.stop_requested.is_set()) and time.monotonic() < deadline:
            time.sleep(POLL_S)

    # -- steps -------------------------------------------------------------------
    def _train(self) -> RunOutcome | None:
        config = self.config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        clear_outcome(self.work_dir)
        # A redeployed instance starts with an empty bridge: the root sends the interrupted cycle again.
        shutil.rmtree(self.work_dir / BRIDGE_DIR, ignore_errors=True)
        self.server = LinkServer(config.bind_host, config.port, config.flower_tls).start()
        grid = LinkGrid(self.server)
        if config.role == "cluster":
            self.root_link = self._join_root()
        finished = threading.Event()
        box: dict[str, RunOutcome] = {}

        def run() -> None:
            try:
                box["outcome"] = serve(grid, config)
            except Exception as error:  # serve() has logged it and left the outcome in the work dir
                box["outcome"] = RunOutcome(ok=False, reason=error_line(error))
            finally:
                finished.set()

        threading.Thread(target=run, name="round-loop", daemon=True).start()
        while not finished.wait(POLL_S):
            if self.stop_requested.is_set():
                return None
        return box["outcome"]

    def _join_root(self) -> LinkClient:
        if not self.config.root_address:
            raise ValueError("a cluster aggregator needs root_address")
        cluster = self.config.cluster or ""
        hello = Hello(new_node_id(), f"cluster {cluster}", cluster, role="cluster")
        handler = root_link_handler(self.work_dir / BRIDGE_DIR, cluster)
        return LinkClient(self.config.root_address, hello, handler, self.config.flower_tls).start()

    def _result(self, outcome: RunOutcome) -> TrainingResult:
        return TrainingResult(
            project_id=self.config.project_id,
            sender=self.reporter.sender,
            rounds_completed=outcome.rounds_completed,
            cycles_completed=outcome.cycles_completed,
            loss=outcome.loss,
            accuracy=outcome.accuracy,
            mlflow_run_id=outcome.mlflow_run_id,
            model_uri=outcome.model_uri,
            registered_model=outcome.registered_model,
            registered_version=outcome.registered_version,
            reason=outcome.reason or None,
            dp_epsilon=outcome.dp_epsilon,
            dp_delta=outcome.dp_delta,
        )

    def _shutdown(self) -> None:
        if self.root_link is not None:
            self.root_link.stop()
        if self.server is not None:
            self.server.stop()


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    logging.basicConfig(level=log_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(AggregatorConfig)
    reporter = Reporter(config.mqtt, config.project_id, sender_name(config), "aggregator").connect()
    role = f"{config.role} aggregator" + (f" of cluster {config.cluster}" if config.cluster else "")
    service = AggregatorService(config, reporter)
    service.listen()
    reporter.started(f"{role} on {config.bind_host}:{config.port}")
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        code = service.run()
    except KeyboardInterrupt:
        service._shutdown()
        reporter.stopped("terminated")
        code = 0
    finally:
        reporter.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
