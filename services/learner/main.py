"""Learner service entry (``flops-learner``): data check, then a Flower SuperNode until training ends.

No data on the node's data server for the project's tags: report ``no_data`` and exit 0.
Otherwise run ``flower-supernode`` (ClientApps in subprocesses, reading data through
``FLOPS_DATA_SERVER``/``FLOPS_DATA_TAGS``) until the project's ``TrainingResult`` or a
stop command arrives (exit 0), or the SuperNode dies (``failed``, exit 1).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from flops_utils.data_client import (
    DATA_CA_ENV,
    DATA_SERVER_ENV,
    DATA_TAGS_ENV,
    DATA_TOKEN_ENV,
    DataServerClient,
    DataServerError,
)
from flops_utils.mqtt_catalogue import ControlCommand, FlopsMessage, TopicKind, TrainingResult, topic
from flops_utils.service_config import LearnerConfig, load_config
from services.fl_runtime import protocol as p
from services.fl_runtime.flower import SuperNode, write_tls_files
from services.fl_runtime.reporter import Reporter

log = logging.getLogger("flops.learner")

DATA_SERVER_WAIT_S = 30.0
SUPERLINK_WAIT_S = 600.0  # then the SuperNode keeps retrying by itself
# Imported once by the warm ClientApp starter: the FLOps ClientApp and the user's model code.
WARM_PRELOAD = ["services.learner.client_app", "model_manager"]
POLL_S = 0.3


def sender_name(config: LearnerConfig) -> str:
    return config.instance_name or f"learner-{config.node}"


def tags_with_data(config: LearnerConfig) -> dict[str, int]:
    """Tag -> rows on this node's data server, for the project's tags that have rows."""
    if not config.data_tags:
        return {}
    with DataServerClient(config.data_server_address, config.data_token, config.data_ca_pem) as client:
        client.wait_ready(DATA_SERVER_WAIT_S)
        found = client.list_tags(config.data_tags)
    return {tag: rows for tag, rows in found.items() if rows > 0 and tag in config.data_tags}


class LearnerService:
    def __init__(self, config: LearnerConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self.finished = threading.Event()
        self.finish_reason = ""
        self.supernode: SuperNode | None = None

    def _on_message(self, _topic: str, message: FlopsMessage) -> None:
        if isinstance(message, TrainingResult):
            self.finish_reason = "training finished"
            self.finished.set()
        elif isinstance(message, ControlCommand) and message.command == "stop":
            self.finish_reason = "stop requested"
            self.finished.set()

    def listen(self) -> None:
        """Subscribe before reporting ``started``: a stop sent after that is never missed."""
        for kind in (TopicKind.RESULT, TopicKind.CONTROL):
            self.reporter.subscribe(topic(self.config.project_id, kind), self._on_message)

    def run(self) -> int:
        config = self.config
        try:
            present = tags_with_data(config)
        except DataServerError as error:
            self.reporter.failed(error)
            return 1
        if not present:
            self.reporter.no_data(f"no data for tags [{', '.join(config.data_tags)}] on node {config.node}")
            return 0
        self.supernode = self._supernode().prepare()
        try:
            self.supernode.wait_for_superlink(SUPERLINK_WAIT_S, self.finished.is_set)
            if not self.finished.is_set():
                self.supernode.start()
                rows = sum(present.values())
                self.reporter.event(f"learner on node {config.node}: {rows} rows for tags {sorted(present)}, "
                                    f"joining {config.aggregator_address}")  # fmt: skip
            while not self.finished.is_set():
                if not self.supernode.alive():
                    self.reporter.failed(
                        f"the Flower SuperNode on node {config.node} exited: {self.supernode.log_tail()}"
                    )
                    return 1
                time.sleep(POLL_S)
        finally:
            self.supernode.stop()
        if self.finish_reason == "stop requested":
            self.reporter.stopped(self.finish_reason)
        else:
            self.reporter.succeeded(self.finish_reason)
        return 0

    def _supernode(self) -> SuperNode:
        config = self.config
        node_config = {
            p.NODE_ROLE_KEY: "learner",
            p.NODE_NAME_KEY: config.node,
            p.NODE_CLUSTER_KEY: config.cluster or "",
            p.NODE_APP_DIR_KEY: config.app_dir,
        }
        env = {DATA_SERVER_ENV: config.data_server_address, DATA_TAGS_ENV: ",".join(config.data_tags),
               DATA_TOKEN_ENV: config.data_token or "", DATA_CA_ENV: config.data_ca_pem or ""}
        tls = write_tls_files(config.flower_tls, Path(config.work_dir) / "tls")
        return SuperNode(
            config.aggregator_address,
            Path(config.work_dir),
            node_config,
            env=env,
            cwd=config.app_dir,
            warm_preload=WARM_PRELOAD,
            ca_file=tls.ca_file if tls else None,
        )

    def shutdown(self) -> None:
        if self.supernode is not None:
            self.supernode.stop()


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(LearnerConfig)
    reporter = Reporter(config.mqtt, config.project_id, sender_name(config), "learner").connect()
    service = LearnerService(config, reporter)
    service.listen()
    reporter.started(f"node {config.node}")
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        code = service.run()
    except KeyboardInterrupt:
        service.shutdown()
        reporter.stopped("terminated")
        code = 0
    except Exception as error:  # report any surprise instead of dying silently
        log.exception("learner failed")
        service.shutdown()
        reporter.failed(f"{type(error).__name__}: {error}")
        code = 1
    finally:
        reporter.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
