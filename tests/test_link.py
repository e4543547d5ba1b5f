"""The training link with real gRPC over loopback: mutual TLS, node identity, push delivery, failures.

Whole training runs over the link are the end-to-end tests (the manager turns ``flower_tls`` on by default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from flops_utils.process_groups import free_port
from manager.security.flower_pki import ProjectFlowerCa
from services.aggregator.rounds import FederatedRounds, RoundFailed
from services.fl_runtime import protocol as p
from services.fl_runtime.link import frames
from services.fl_runtime.link.client import LinkClient, new_node_id
from services.fl_runtime.link.grid import LinkGrid
from services.fl_runtime.link.server import LinkServer
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

CA = ProjectFlowerCa("p-link")


def add_one(message: Message) -> Message:
    arrays = [array + 1 for array in p.from_arrays(message.content.array_records[p.ARRAYS])]
    return Message(RecordDict({p.ARRAYS: p.to_arrays(arrays)}), reply_to=message)


@pytest.fixture()
def server() -> Iterator[LinkServer]:
    link = LinkServer("127.0.0.1", free_port(), CA.for_superlink("127.0.0.1"), heartbeat_patience_s=1.5).start()
    try:
        yield link
    finally:
        link.stop()


class Clients:
    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.started: list[LinkClient] = []

    def join(
        self,
        name: str,
        handler=add_one,
        tls_name: str | None = None,
        ca: ProjectFlowerCa = CA,
        heartbeat_s: float = 0.3,
    ) -> LinkClient:
        tls = ca.for_supernode(tls_name or name)
        client = LinkClient(
            self.server.address, frames.Hello(new_node_id(), name), handler, tls, heartbeat_s=heartbeat_s
        ).start()
        self.started.append(client)
        return client


@pytest.fixture()
def clients(server: LinkServer) -> Iterator[Clients]:
    made = Clients(server)
    try:
        yield made
    finally:
        for client in made.started:
            client.stop()


def ask(grid: LinkGrid, nodes: list[int], arrays: list[np.ndarray], timeout_s: float = 10.0) -> list[Message]:
    record = RecordDict({p.ARRAYS: p.to_arrays(arrays), p.CONFIG: ConfigRecord({})})
    messages = [Message(record, dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]
    return list(grid.send_and_receive(messages, timeout=timeout_s))


def test_messages_are_pushed_to_each_node_and_answered(server: LinkServer, clients: Clients) -> None:
    grid = LinkGrid(server)
    first, second = clients.join("node-a1"), clients.join("node-a2")
    assert first.wait_connected(10) and second.wait_connected(10)
    assert wait_until(lambda: len(list(grid.get_node_ids())) == 2, 10, 0.05)
    replies = ask(grid, list(grid.get_node_ids()), [np.arange(5, dtype=np.float32)])
    assert len(replies) == 2 and not any(reply.has_error() for reply in replies)
    for reply in replies:
        assert p.from_arrays(reply.content.array_records[p.ARRAYS])[0].tolist() == [1, 2, 3, 4, 5]
    assert {grid.node_name(reply.metadata.src_node_id) for reply in replies} == {"node-a1", "node-a2"}


def test_a_client_needs_a_certificate_of_the_project_ca(server: LinkServer, clients: Clients) -> None:
    stranger = clients.join("node-a1", ca=ProjectFlowerCa("p-other"))
    assert not stranger.wait_connected(3)
    plain = grpc.insecure_channel(server.address)
    with pytest.raises(grpc.RpcError):
        list(plain.stream_stream(frames.METHOD)(iter([frames.Hello(new_node_id(), "node-a1").frame()]), timeout=3))
    plain.close()
    assert list(LinkGrid(server).get_node_ids()) == []


def test_a_node_cannot_be_impersonated(server: LinkServer, clients: Clients) -> None:
    """A certificate from the project's CA for node-b1 does not let its holder join as node-a1."""
    intruder = clients.join("node-a1", tls_name="node-b1")
    assert wait_until(lambda: "names 'node-b1', not 'node-a1'" in intruder.last_refusal, 10, 0.1), intruder.last_refusal
    assert not intruder.connected.is_set()
    assert list(LinkGrid(server).get_node_ids()) == []


def test_a_node_that_dies_is_answered_for_at_once(server: LinkServer, clients: Clients) -> None:
    grid = LinkGrid(server)
    hanging = threading.Event()

    def hang(message: Message) -> Message:
        hanging.set()
        time.sleep(30)
        return add_one(message)

    victim = clients.join("node-a1", handler=hang)
    assert victim.wait_connected(10)
    started = time.monotonic()
    threading.Timer(0.5, victim.stop).start()  # the stream closes while the node works on the message
    replies = ask(grid, list(grid.get_node_ids()), [np.zeros(3)], timeout_s=20)
    assert hanging.is_set() and len(replies) == 1 and replies[0].has_error()
    assert "disconnected" in replies[0].error.reason
    assert time.monotonic() - started < 10  # not the 20 s deadline


def test_a_silent_node_goes_offline_and_comes_back_under_the_same_id(server: LinkServer, clients: Clients) -> None:
    grid = LinkGrid(server)
    node = clients.join("node-a1", heartbeat_s=0.3)
    assert node.wait_connected(10) and wait_until(lambda: list(grid.get_node_ids()) == [node.node_id], 5, 0.05)
    node.heartbeat_s = 60.0  # stops beating after the current beat (as a frozen process would)
    assert wait_until(lambda: list(grid.get_node_ids()) == [], 10, 0.1)
    node.heartbeat_s = 0.3
    node._send(frames.HEARTBEAT)  # it thaws
    assert wait_until(lambda: list(grid.get_node_ids()) == [node.node_id], 10, 0.05)


def test_failing_learners_end_the_round_at_once_with_one_line_per_error(server: LinkServer, clients: Clients) -> None:
    def broken(message: Message) -> Message:
        raise ValueError("X has 64 features, but SGDClassifier is expecting 30 features")

    for name in ("node-a1", "node-a2", "node-b1"):
        clients.join(name, handler=broken)
    grid = LinkGrid(server)
    assert wait_until(lambda: len(list(grid.get_node_ids())) == 3, 10, 0.05)
    rounds = FederatedRounds(grid, min_available=3, min_fit=2, min_evaluate=2, timeout_s=300)
    started = time.monotonic()
    with pytest.raises(RoundFailed) as failed:
        rounds.train_round(1, [np.zeros(4, dtype=np.float32)], {})
    assert time.monotonic() - started < 30
    text = str(failed.value)
    assert text.count("SGDClassifier is expecting 30 features") == 1, text
    assert "3 learners: ValueError: X has 64 features" in text and "(node-a1, node-a2, node-b1)" in text, text
    assert "within 300 s" not in text, text


def test_a_wait_for_participants_is_reported_every_few_seconds(server: LinkServer, clients: Clients) -> None:
    grid = LinkGrid(server)
    clients.join("node-a1")
    notes: list[str] = []
    rounds = FederatedRounds(grid, min_available=2, min_fit=2, min_evaluate=2, timeout_s=60, on_wait=notes.append)
    threading.Timer(7.0, lambda: clients.join("node-a2")).start()
    assert len(rounds.wait_for_nodes(2, 30)) == 2
    assert notes and notes[0].startswith("1 of 2 learners connected, waiting ("), notes
