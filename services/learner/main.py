"""Learner service entry (``flops-learner``): data check, then one link to the aggregator until training ends.

No data on the node's data server for the project's tags: report ``no_data`` and exit 0.
Otherwise join the aggregator's link server (:mod:`services.fl_runtime.link`) and answer its
messages with the FLOps ClientApp in this process (the user's ModelManager and its data stay
loaded across rounds), until the project's ``TrainingResult`` or a stop command arrives (exit 0).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from flops_utils.data_client import (
    DATA_CA_ENV,
    DATA_SERVER_ENV,
    DATA_TAGS_ENV,
    DATA_TOKEN_ENV,
    DataServerClient,
    DataServerError,
)
from flops_utils.mqtt_catalogue import ControlCommand, FlopsMessage, TopicKind, TrainingResult, topic
from flops_utils.service_config import LearnerConfig, load_config, log_level
from services.fl_runtime import protocol as p
from services.fl_runtime.client_host import client_app_handler, describe_user_error
from services.fl_runtime.link.client import LinkClient, new_node_id
from services.fl_runtime.link.frames import Hello
from services.fl_runtime.reporter import Reporter

if TYPE_CHECKING:
    from flwr.app.user_config import UserConfigValue

log = logging.getLogger("flops.learner")

DATA_SERVER_WAIT_S = 30.0
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
        self.link: LinkClient | None = None

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
        try:
            self.link = self._link()
        except Exception as error:  # the user's ModelManager or DataManager failed to load
            log.exception("loading the user's model and data failed")
            self.reporter.failed(f"node {config.node}: {describe_user_error(error, config.app_dir)}")
            return 1
        self.link.start()
        rows = sum(present.values())
        self.reporter.event(
            f"learner on node {config.node}: {rows} rows for tags {sorted(present)}, "
            f"joining {config.aggregator_address}"
        )
        try:
            while not self.finished.wait(POLL_S):
                pass
        finally:
            self.link.stop()
        if self.finish_reason == "stop requested":
            self.reporter.stopped(self.finish_reason)
        else:
            self.reporter.succeeded(self.finish_reason)
        return 0

    def _link(self) -> LinkClient:
        config = self.config
        # The ClientApp (and the user's DataManager through flops_utils.load_dataset) reads these.
        os.environ[DATA_SERVER_ENV] = config.data_server_address
        os.environ[DATA_TAGS_ENV] = ",".join(config.data_tags)
        os.environ[DATA_TOKEN_ENV] = config.data_token or ""
        os.environ[DATA_CA_ENV] = config.data_ca_pem or ""
        node_config: dict[str, UserConfigValue] = {
            p.NODE_ROLE_KEY: "learner",
            p.NODE_NAME_KEY: config.node,
            p.NODE_CLUSTER_KEY: config.cluster or "",
            p.NODE_APP_DIR_KEY: config.app_dir,
        }
        hello = Hello(new_node_id(), config.node, config.cluster or "", role="learner")
        return LinkClient(
            config.aggregator_address,
            hello,
            client_app_handler(node_config, hello.node_id, preload=True),
            config.flower_tls,
            describe_error=lambda error: describe_user_error(error, config.app_dir),
        )

    def shutdown(self) -> None:
        if self.link is not None:
            self.link.stop()


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    logging.basicConfig(level=log_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
