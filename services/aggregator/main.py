"""Aggregator service entry (``flops-aggregator``): a SuperLink, one Flower run, one report.

1. start ``flower-superlink`` (Fleet/Control/Runtime API on ``bind_host:port``);
2. submit the generated Flower app (``flwr run``) with this config as run config;
3. cluster role only: join the root's SuperLink as a SuperNode (the bridge node);
4. wait for the ServerApp's outcome, publish ``TrainingResult`` (classic/root) and
   ``succeeded``, or ``failed`` with a one-line reason; stop everything.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from flops_utils.mqtt_catalogue import (
    ControlCommand,
    FlopsMessage,
    ServiceState,
    ServiceStatus,
    TopicKind,
    TrainingResult,
    topic,
)
from flops_utils.service_config import AggregatorConfig, load_config
from services.aggregator.session import BRIDGE_DIR, cycle_timeout_s, sender_name
from services.fl_runtime import protocol as p
from services.fl_runtime.flower import FlowerControl, FlowerError, SuperLink, SuperNode, TlsFiles, write_tls_files
from services.fl_runtime.flower_app import RUN_CONFIG_KEY
from services.fl_runtime.outcome import RunOutcome, alive_recently, clear_outcome, read_outcome
from services.fl_runtime.reporter import Reporter

log = logging.getLogger("flops.aggregator")

STATUS_CHECK_S = 30.0  # asking Flower costs a CLI process; only when the ServerApp looks silent
POLL_S = 0.3
ROOT_WAIT_S = 600.0  # then the root link keeps retrying by itself


class AggregatorService:
    def __init__(self, config: AggregatorConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self.work_dir = Path(config.work_dir)
        self.stop_requested = threading.Event()
        self.root_finished = threading.Event()
        self.superlink: SuperLink | None = None
        self.root_link: SuperNode | None = None
        self.tls: TlsFiles | None = None

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
        except (FlowerError, OSError, ValueError) as error:
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
            and message.state in (ServiceState.FAILED, ServiceState.STOPPED)
            and message.sender != self.reporter.sender
        ):
            self.root_finished.set()  # the root (or a sibling) gave up: nobody needs our link any more

    def _await_root(self) -> None:
        """Keep the link to the root until it has our last reply (it publishes the result after that)."""
        deadline = time.monotonic() + cycle_timeout_s(self.config.training)
        while not (self.root_finished.is_set() or self.stop_requested.is_set()) and time.monotonic() < deadline:
            if self.root_link is not None and not self.root_link.alive():
                return
            time.sleep(POLL_S)

    # -- steps -------------------------------------------------------------------
    def _train(self) -> RunOutcome | None:
        config = self.config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        clear_outcome(self.work_dir)
        # A redeployed instance starts with an empty bridge: the root sends the interrupted cycle again.
        shutil.rmtree(self.work_dir / BRIDGE_DIR, ignore_errors=True)
        config_file = self.work_dir / "aggregator-config.json"
        config_file.write_text(config.model_dump_json())
        os.chmod(config_file, 0o600)
        self.tls = write_tls_files(config.flower_tls, self.work_dir / "tls")
        self.superlink = SuperLink(config.bind_host, config.port, self.work_dir, tls=self.tls).start()
        control = FlowerControl(self.superlink.address, self.work_dir, ca_file=self.tls.ca_file if self.tls else None)
        run_id = control.start_run(config.app_dir, {RUN_CONFIG_KEY: str(config_file)}, self.work_dir)
        log.info("Flower run %s started on %s", run_id, self.superlink.address)
        if config.role == "cluster":
            self.root_link = self._join_root()
        return self._wait(control, run_id)

    def _join_root(self) -> SuperNode:
        if not self.config.root_address:
            raise ValueError("a cluster aggregator needs root_address")
        node_config = {
            p.NODE_ROLE_KEY: "cluster",
            p.NODE_NAME_KEY: f"cluster {self.config.cluster}",
            p.NODE_CLUSTER_KEY: self.config.cluster or "",
            p.NODE_BRIDGE_DIR_KEY: str(self.work_dir / BRIDGE_DIR),
            p.NODE_APP_DIR_KEY: self.config.app_dir,
        }
        node = SuperNode(
            self.config.root_address,
            self.work_dir,
            node_config,
            name="root-link",
            cwd=self.config.app_dir,
            warm_preload=["services.learner.client_app", "services.aggregator.cluster_node"],
            ca_file=self.tls.ca_file if self.tls else None,
        )
        node.prepare().wait_for_superlink(ROOT_WAIT_S, self.stop_requested.is_set)
        return node.start()

    def _wait(self, control: FlowerControl, run_id: int) -> RunOutcome | None:
        next_check = time.monotonic() + STATUS_CHECK_S
        while True:
            outcome = read_outcome(self.work_dir)
            if outcome is not None:
                return outcome
            if self.stop_requested.is_set():
                return None
            if self.superlink is not None and not self.superlink.alive():
                raise FlowerError(
                    f"SuperLink exited: {self.superlink.process.log_tail() if self.superlink.process else ''}"
                )
            if self.root_link is not None and not self.root_link.alive():
                raise FlowerError(
                    f"lost the root aggregator at {self.config.root_address}: {self.root_link.log_tail()}"
                )
            if time.monotonic() >= next_check:
                if not alive_recently(self.work_dir):
                    self._check_run(control, run_id)
                next_check = time.monotonic() + STATUS_CHECK_S
            time.sleep(POLL_S)

    def _check_run(self, control: FlowerControl, run_id: int) -> None:
        """Catch a ServerApp that died without leaving an outcome (killed, failed to start)."""
        status = control.run_status(run_id)
        if not status.startswith("finished"):
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if read_outcome(self.work_dir) is not None:
                return
            time.sleep(POLL_S)
        tail = _tail(self.work_dir / "server_app.log")
        raise FlowerError(f"the ServerApp ended ({status}) without a result{': ' + tail if tail else ''}")

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
        )

    def _shutdown(self) -> None:
        for process in (self.root_link, self.superlink):
            if process is not None:
                process.stop()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())[-300:]


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
