"""The aggregator's end of the link: one gRPC stream per connected node, messages pushed at once.

A node is *online* while its stream is open and its heartbeats arrive within ``patience_s``. A node
that goes silent (frozen, partitioned) is offline until its heartbeats resume on the same stream, or
until it reconnects with the same node id (a link client keeps its id for its whole process life);
a new process is a new node. Messages in flight to a node that disconnects or goes silent are
answered at once with a Flower error reply (``NODE_UNAVAILABLE``), so a round never waits for a dead
node's deadline.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

from flops_utils.service_config import FlowerTls
from services.fl_runtime.link import frames
from services.fl_runtime.link.credentials import peer_common_name, server_credentials

log = logging.getLogger("flops.link.server")

HEARTBEAT_S = 2.0
PATIENCE_S = 3 * HEARTBEAT_S  # three missed heartbeats: offline
MAX_STREAMS = 1024  # one worker thread per open stream; threads are made only when needed


@dataclass
class NodeSession:
    node_id: int
    name: str
    cluster: str
    role: str
    outbox: queue.SimpleQueue[bytes | None] = field(default_factory=queue.SimpleQueue)
    last_seen: float = field(default_factory=time.monotonic)
    connected: bool = True
    silent: bool = False
    generation: int = 0


class LinkServer:
    """Accepts link clients; ``on_reply`` gets every message a node sends back. No I/O until ``start``."""

    def __init__(
        self,
        bind_host: str,
        port: int,
        tls: FlowerTls | None,
        *,
        heartbeat_patience_s: float = PATIENCE_S,
    ) -> None:
        self.bind_host = bind_host
        self.port = port
        self.tls = tls
        self.patience_s = heartbeat_patience_s
        self.on_reply: Callable[[Message], None] = lambda message: None
        self.on_unavailable: Callable[[int, str], None] = lambda node_id, why: None
        self._nodes: dict[int, NodeSession] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._server: grpc.Server | None = None
        self._closing = threading.Event()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> LinkServer:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=MAX_STREAMS, thread_name_prefix="link"),
            options=frames.CHANNEL_OPTIONS,
            maximum_concurrent_rpcs=MAX_STREAMS,
        )
        handler = grpc.stream_stream_rpc_method_handler(self._connect)  # bytes in, bytes out
        service, method = frames.METHOD.rsplit("/", 1)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.strip("/"), {method: handler}),))
        address = f"{self.bind_host}:{self.port}"
        bound = (
            server.add_secure_port(address, server_credentials(self.tls))
            if self.tls is not None
            else server.add_insecure_port(address)
        )
        if not bound:
            raise OSError(f"cannot listen on {address}")
        server.start()
        self._server = server
        threading.Thread(target=self._watch_heartbeats, name="link-heartbeats", daemon=True).start()
        log.info("link server listening on %s (%s)", address, "mutual TLS" if self.tls else "plain")
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        self._closing.set()
        with self._lock:
            for session in self._nodes.values():
                session.outbox.put(None)
            self._changed.notify_all()
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 1.0)

    @property
    def address(self) -> str:
        return f"{self.bind_host}:{self.port}"

    # -- nodes -------------------------------------------------------------------
    def online(self) -> list[int]:
        with self._lock:
            return sorted(n.node_id for n in self._nodes.values() if n.connected and not n.silent)

    def session(self, node_id: int) -> NodeSession | None:
        with self._lock:
            return self._nodes.get(node_id)

    def wait_for_change(self, timeout_s: float) -> None:
        """Block until a node joins, leaves or answers, or ``timeout_s`` passes."""
        with self._changed:
            self._changed.wait(timeout_s)

    def notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def send(self, node_id: int, message: Message) -> bool:
        """Queue ``message`` on the node's stream; False when the node is not connected."""
        frame = frames.message_frame(message)
        with self._lock:
            session = self._nodes.get(node_id)
            if session is None or not session.connected:
                return False
            session.outbox.put(frame)
            return True

    # -- the stream --------------------------------------------------------------
    def _connect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            hello = frames.Hello.parse(next(requests))
        except (StopIteration, frames.FrameError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error) or "no hello")
            return
        identity = peer_common_name(context.auth_context())
        if self.tls is not None and identity != hello.name:
            log.warning("refused a client whose certificate names %r but who claims %r", identity, hello.name)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate names {identity!r}, not {hello.name!r}",
            )
            return
        session = self._register(hello)
        generation = session.generation
        reader = threading.Thread(
            target=self._read, args=(requests, session, generation), name=f"link-read-{hello.name}", daemon=True
        )
        reader.start()
        yield frames.ACCEPTED + json.dumps({"node_id": hello.node_id}).encode()
        while not self._closing.is_set():
            frame = session.outbox.get()
            if frame is None:
                break
            yield frame
        self._disconnect(session, generation, "stream closed")

    def _register(self, hello: frames.Hello) -> NodeSession:
        with self._lock:
            old = self._nodes.get(hello.node_id)
            session = NodeSession(hello.node_id, hello.name, hello.cluster, hello.role)
            if old is not None:  # the same process reconnected: the old stream is over
                session.generation = old.generation + 1
                old.outbox.put(None)
            self._nodes[hello.node_id] = session
            self._changed.notify_all()
        log.info("node %s (%s) connected%s", hello.node_id, hello.name, " again" if old is not None else "")
        return session

    def _read(self, requests: Iterator[bytes], session: NodeSession, generation: int) -> None:
        why = "the node closed its stream"
        try:
            for frame in requests:
                self._seen(session)
                if frame.startswith(frames.MESSAGE):
                    try:
                        message = frames.parse_message(frame)
                    except Exception as error:  # a broken frame is the sender's problem, not the server's
                        log.warning("node %s sent a malformed message: %s", session.name, error)
                        continue
                    message.metadata.__dict__["_src_node_id"] = session.node_id  # the stream, not the sender, says who
                    self.on_reply(message)
                    self.notify()
        except grpc.RpcError as error:
            why = f"stream lost ({error.code().name if hasattr(error, 'code') else error})"
        except Exception as error:  # noqa: BLE001 - gRPC raises plain exceptions on cancel
            why = f"stream lost ({type(error).__name__})"
        self._disconnect(session, generation, why)

    def _seen(self, session: NodeSession) -> None:
        back = False
        with self._lock:
            session.last_seen = time.monotonic()
            if session.silent:
                session.silent, back = False, True
                self._changed.notify_all()
        if back:
            log.info("node %s (%s) is heard again", session.node_id, session.name)

    def _disconnect(self, session: NodeSession, generation: int, why: str) -> None:
        with self._lock:
            current = self._nodes.get(session.node_id)
            if current is not session or session.generation != generation or not session.connected:
                return
            session.connected = False
            session.outbox.put(None)
            self._changed.notify_all()
        log.info("node %s (%s) disconnected: %s", session.node_id, session.name, why)
        self.on_unavailable(session.node_id, f"{session.name} disconnected")

    def _watch_heartbeats(self) -> None:
        while not self._closing.wait(min(1.0, self.patience_s / 3)):
            now, silent = time.monotonic(), []
            with self._lock:
                for session in self._nodes.values():
                    if session.connected and not session.silent and now - session.last_seen > self.patience_s:
                        session.silent = True
                        silent.append(session)
                if silent:
                    self._changed.notify_all()
            for session in silent:
                log.warning("node %s (%s): no heartbeat for %.0f s", session.node_id, session.name, self.patience_s)
                self.on_unavailable(session.node_id, f"no heartbeat for {self.patience_s:g} s")


def error_reply(message: Message, reason: str, code: int = ErrorCode.NODE_UNAVAILABLE) -> Message:
    """A Flower error reply to ``message`` as if its destination node had sent it."""
    return Message(Error(code=code, reason=reason), reply_to=message)
