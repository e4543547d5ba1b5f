"""A node's end of the link: keep one stream to the aggregator open and answer its messages.

The client connects (retrying until the server listens, and again after any break), says hello
with the node id it keeps for its whole life, sends a heartbeat every ``HEARTBEAT_S`` and hands
each incoming Flower ``Message`` to ``handler`` on one worker thread (so the heartbeats go on
while a long ``fit_model`` runs). The handler's reply goes back on the stream that is open when
it is done. A handler that raises is answered with a Flower error reply carrying its reason.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable, Iterator

import grpc
from flwr.app import Message
from flwr.common.constant import ErrorCode

from flops_utils.service_config import FlowerTls
from services.fl_runtime.link import frames
from services.fl_runtime.link.credentials import channel_credentials
from services.fl_runtime.link.server import HEARTBEAT_S, error_reply

log = logging.getLogger("flops.link.client")

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 1.0

Handler = Callable[[Message], Message]


def new_node_id() -> int:
    """A node id for this process: random, positive, never Flower's reserved ids (0, 1)."""
    return random.SystemRandom().randrange(2, 2**63 - 1)


class LinkClient:
    """No I/O until ``start``."""

    def __init__(
        self,
        address: str,
        hello: frames.Hello,
        handler: Handler,
        tls: FlowerTls | None,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        describe_error: Callable[[BaseException], str] | None = None,
    ) -> None:
        self.address = address
        self.hello = hello
        self.handler = handler
        self.tls = tls
        self.heartbeat_s = heartbeat_s
        self.describe_error = describe_error or (lambda error: f"{type(error).__name__}: {error}")
        self.connected = threading.Event()
        self.last_refusal = ""
        self._stop = threading.Event()
        self._work: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[bytes | None] | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._channel: grpc.Channel | None = None

    @property
    def node_id(self) -> int:
        return self.hello.node_id

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> LinkClient:
        for target, name in (
            (self._connect_loop, "link-connect"),
            (self._work_loop, "link-work"),
            (self._heartbeat_loop, "link-heartbeat"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._work.put(None)
        with self._lock:
            if self._outbox is not None:
                self._outbox.put(None)
            channel = self._channel
        if channel is not None:
            channel.close()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    # -- threads -----------------------------------------------------------------
    def _connect_loop(self) -> None:
        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            if self._stream_once():
                delay = RETRY_FIRST_S  # it was up: try again at once
            self._stop.wait(delay)
            delay = min(RETRY_MAX_S, delay * 2)

    def _stream_once(self) -> bool:
        """One connection; True when it got as far as being accepted."""
        credentials = channel_credentials(self.tls) if self.tls is not None else None
        channel = (
            grpc.secure_channel(self.address, credentials, options=frames.CHANNEL_OPTIONS)
            if credentials is not None
            else grpc.insecure_channel(self.address, options=frames.CHANNEL_OPTIONS)
        )
        outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        with self._lock:
            self._channel, self._outbox = channel, outbox
        accepted = False
        try:
            call = channel.stream_stream(frames.METHOD)
            for frame in call(self._requests(outbox)):
                if frame.startswith(frames.ACCEPTED):
                    accepted = True
                    self.last_refusal = ""
                    self.connected.set()
                    log.info("joined %s as node %s (%s)", self.address, self.node_id, self.hello.name)
                elif frame.startswith(frames.MESSAGE):
                    self._work.put(frames.parse_message(frame))
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                self.last_refusal = str(error.details() if hasattr(error, "details") else error)
                log.warning("%s refused this node: %s", self.address, self.last_refusal)
            elif accepted and not self._stop.is_set():
                log.warning("lost the link to %s (%s); reconnecting", self.address, code.name if code else error)
        finally:
            self.connected.clear()
            with self._lock:
                if self._outbox is outbox:
                    self._outbox = None
            outbox.put(None)
            channel.close()
        return accepted

    def _requests(self, outbox: queue.SimpleQueue[bytes | None]) -> Iterator[bytes]:
        yield self.hello.frame()
        while True:
            frame = outbox.get()
            if frame is None:
                return
            yield frame

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._send(frames.HEARTBEAT)

    def _work_loop(self) -> None:
        while True:
            message = self._work.get()
            if message is None or self._stop.is_set():
                return
            try:
                reply = self.handler(message)
            except Exception as error:
                log.exception("handling a %s message failed", message.metadata.message_type)
                reply = error_reply(message, self.describe_error(error), ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
            self._send(frames.message_frame(reply))

    def _send(self, frame: bytes) -> None:
        with self._lock:
            if self._outbox is not None:
                self._outbox.put(frame)
