"""A Flower ``Grid`` over a :class:`LinkServer`: what ServerApp code and Flower strategies talk to.

``push_messages`` puts each message on its node's stream at once; ``pull_messages`` hands out the
replies that arrived; ``wait_for_replies`` blocks until one of the asked replies is in (no polling
interval). A message whose node disconnects or falls silent gets an error reply at once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from services.fl_runtime.link.server import LinkServer, error_reply

RUN_ID = 1  # one training run per aggregator process


class LinkGrid(Grid):
    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self._run = Run.create_empty(RUN_ID)
        TaskIdentity.run_id = RUN_ID  # Flower's Message() reads the process's run and node id from here
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = RUN_ID
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, Message]] = {}  # message id -> (node, message)
        self._replies: dict[str, Message] = {}  # message id it answers -> reply
        server.on_reply = self._on_reply
        server.on_unavailable = self._on_unavailable

    # -- Grid --------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self.server.online()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=node) for node in self.server.online()]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        for message in messages:
            metadata = message.metadata
            metadata.__dict__["_message_id"] = uuid.uuid4().hex
            metadata.__dict__["_run_id"] = self._run.run_id
            metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            node = metadata.dst_node_id
            with self._lock:
                self._pending[metadata.message_id] = (node, message)
            if not self.server.send(node, message):
                self._answer_with_error(metadata.message_id, f"node {node} is not connected")
            ids.append(metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            found = [self._replies.pop(mid) for mid in message_ids if mid in self._replies]
        return found

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {reply.metadata.reply_to_message_id for reply in got}
            if not waiting:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait_for_replies(waiting, 1.0 if left is None else min(1.0, left))
        return replies

    # -- FLOps additions -----------------------------------------------------------
    def wait_for_replies(self, message_ids: Iterable[str], timeout_s: float) -> None:
        """Return as soon as one of ``message_ids`` has a reply (or after ``timeout_s``)."""
        wanted = set(message_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if wanted & self._replies.keys():
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.server.wait_for_change(min(left, 0.5))

    def wait_for_nodes(self, timeout_s: float) -> None:
        """Return when a node joins, leaves or answers (or after ``timeout_s``)."""
        self.server.wait_for_change(timeout_s)

    def node_name(self, node_id: int) -> str | None:
        session = self.server.session(node_id)
        return session.name if session is not None else None

    # -- from the server -------------------------------------------------------------
    def _on_reply(self, reply: Message) -> None:
        origin = reply.metadata.reply_to_message_id
        with self._lock:
            pending = self._pending.pop(origin, None)
            if pending is None:
                return  # a late answer to a question nobody waits for any more
            if pending[0] != reply.metadata.src_node_id:
                self._pending[origin] = pending  # only the asked node may answer
                return
            self._replies[origin] = reply

    def _on_unavailable(self, node_id: int, why: str) -> None:
        with self._lock:
            gone = [mid for mid, (node, _) in self._pending.items() if node == node_id]
        for message_id in gone:
            self._answer_with_error(message_id, why)
        self.server.notify()

    def _answer_with_error(self, message_id: str, why: str) -> None:
        with self._lock:
            pending = self._pending.pop(message_id, None)
            if pending is None:
                return
            reply = error_reply(pending[1], why)
            reply.metadata.__dict__["_src_node_id"] = pending[0]
            self._replies[message_id] = reply
