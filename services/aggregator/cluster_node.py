"""The root-facing side of a cluster aggregator: one root message per cycle becomes a bridge job.

Runs on the cluster aggregator's link client (towards the root) for each message from the root.
It hands the root's model to the cluster's own round loop and waits for the cluster model (or
the evaluation) to come back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from services.aggregator.bridge import Bridge, BridgeError, Job
from services.fl_runtime import protocol as p
from services.fl_runtime.outcome import read_outcome

# The root bounds each cycle itself; this only stops a ClientApp from outliving a dead run.
MAX_WAIT_S = 7 * 24 * 3600.0


def _server_side_failure(work_dir: Path) -> str | None:
    outcome = read_outcome(work_dir)
    if outcome is None:
        return None
    return outcome.reason or "the cluster's training run has ended"


def root_link_handler(bridge_dir: Path, cluster: str) -> Callable[[Message], Message]:
    """What the cluster aggregator's link client answers the root with."""

    def handler(message: Message) -> Message:
        kind = "evaluate" if message.metadata.message_type == MessageType.EVALUATE else "train"
        return handle(message, bridge_dir, cluster, kind)

    return handler


def handle(message: Message, bridge_dir: Path, cluster: str, kind: str) -> Message:
    config = message.content.config_records.get(p.CONFIG) or ConfigRecord()
    cycle = int(config.get(p.CYCLE, 0))  # type: ignore[arg-type]
    name = f"{kind}-{cycle}"
    arrays = p.from_arrays(message.content.array_records[p.ARRAYS])
    bridge = Bridge(bridge_dir)
    bridge.submit(Job(name=name, kind=kind, arrays=arrays, config=dict(config)))
    result = bridge.wait_result(name, MAX_WAIT_S, lambda: _server_side_failure(bridge_dir.parent))
    if not result.ok:
        raise BridgeError(result.reason)
    content = RecordDict(
        {
            p.METRICS: MetricRecord(result.metrics),
            p.INFO: ConfigRecord({p.NODE: f"cluster {cluster}", p.CLUSTER: cluster}),
        }
    )
    if kind == "train":
        if result.arrays is None:
            raise BridgeError(f"cluster {cluster} returned no model for cycle {cycle}")
        content[p.ARRAYS] = p.to_arrays(result.arrays)
    return Message(content, reply_to=message)
