"""What travels on a link stream: one byte of kind, then the payload.

``H`` hello (client → server, JSON: node id, name, cluster, role), ``A`` accepted (server → client,
JSON), ``B`` heartbeat (client → server, empty), ``M`` a Flower ``Message`` as Flower's own protobuf
(``flwr.common.serde``), both ways.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from flwr.app import Message
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage

METHOD = "/flops.link.v1.Link/Connect"

HELLO = b"H"
ACCEPTED = b"A"
HEARTBEAT = b"B"
MESSAGE = b"M"

# gRPC refuses messages over 4 MB by default; models can be far larger.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class FrameError(ValueError):
    """A frame that is not one of ours."""


@dataclass(frozen=True)
class Hello:
    node_id: int
    name: str
    cluster: str = ""
    role: str = "learner"

    def frame(self) -> bytes:
        return HELLO + json.dumps(asdict(self)).encode()

    @staticmethod
    def parse(frame: bytes) -> Hello:
        if not frame.startswith(HELLO):
            raise FrameError("the first frame must be a hello")
        try:
            data = json.loads(frame[1:])
            return Hello(
                int(data["node_id"]), str(data["name"]), str(data.get("cluster", "")), str(data.get("role", "learner"))
            )
        except (ValueError, KeyError, TypeError) as error:
            raise FrameError(f"malformed hello: {error}") from None


def message_frame(message: Message) -> bytes:
    return MESSAGE + message_to_proto(message).SerializeToString()


def parse_message(frame: bytes) -> Message:
    proto = ProtoMessage()
    proto.ParseFromString(memoryview(frame)[1:])
    return message_from_proto(proto)
