"""TLS and node authentication on Flower links, with a real SuperLink and SuperNodes.

The SuperLink refuses what the project's CA does not vouch for, and a request for a learner's node that the
learner's own key did not sign.

Whole training runs over TLS are the end-to-end tests (the manager turns ``flower_tls`` on by default).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.lifecycle.flower_pki import ProjectFlowerCa
from services.fl_runtime.flower import FlowerControl, FlowerError, SuperLink, SuperNode, TlsFiles, write_tls_files
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SuperLink, TlsFiles]]:
    work = tmp_path_factory.mktemp("tls-superlink")
    tls = write_tls_files(ProjectFlowerCa("p-tls").for_superlink("127.0.0.1"), work / "tls")
    assert tls is not None and tls.serves and tls.key_file is not None
    assert tls.key_file.stat().st_mode & 0o077 == 0  # the key is private to the service
    link = SuperLink("127.0.0.1", free_port(), work, tls=tls).start()
    try:
        yield link, tls
    finally:
        link.stop()


def _get(url: str, context: ssl.SSLContext | None = None) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.URLError as error:
        return str(error.reason)
    except OSError as error:  # e.g. the connection is reset by a TLS server
        return str(error)


def test_the_superlink_speaks_only_tls_trusted_through_the_project_ca(
    superlink: tuple[SuperLink, TlsFiles], tmp_path: Path
) -> None:
    link, tls = superlink
    own = ssl.create_default_context(cafile=str(tls.ca_file))
    assert _get(f"https://{link.address}/health", own) == 200
    assert _get(f"http://{link.address}/health") != 200  # plain HTTP gets no answer
    stranger = write_tls_files(ProjectFlowerCa("p-other").for_supernode(), tmp_path / "other")
    assert stranger is not None
    refused = _get(f"https://{link.address}/health", ssl.create_default_context(cafile=str(stranger.ca_file)))
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused), refused


def test_flower_clients_need_the_project_ca(superlink: tuple[SuperLink, TlsFiles], tmp_path: Path) -> None:
    link, tls = superlink
    assert FlowerControl(link.address, tmp_path / "own", ca_file=tls.ca_file)._flwr("ls", "flops")["success"]
    with pytest.raises(FlowerError):
        FlowerControl(link.address, tmp_path / "plain")._flwr("ls", "flops")  # --insecure client
    other = write_tls_files(ProjectFlowerCa("p-other").for_supernode(), tmp_path / "other")
    assert other is not None
    with pytest.raises(FlowerError):
        FlowerControl(link.address, tmp_path / "stranger", ca_file=other.ca_file)._flwr("ls", "flops")

    (tmp_path / "node").mkdir()
    node = SuperNode(link.address, tmp_path / "node", {}, name="stranger-node", ca_file=other.ca_file).start()
    try:
        assert wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in node.log_tail() or not node.alive(), 60, 0.5)
        assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "node" / "stranger-node.log").read_text()
    finally:
        node.stop()


def test_a_learner_cannot_be_impersonated(superlink: tuple[SuperLink, TlsFiles], tmp_path: Path) -> None:
    """Every Fleet request is signed by the key its SuperNode made at start (Flower's automatic authentication):
    a client holding the project CA but not the learner's key cannot pull the learner's messages."""
    import httpx
    from flwr.proto.fleet_pb2 import PullMessagesRequest, RegisterNodeFleetRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    link, tls = superlink
    (tmp_path / "node").mkdir()
    learner = SuperNode(link.address, tmp_path / "node", {}, name="learner", ca_file=tls.ca_file).start()
    control = FlowerControl(link.address, tmp_path / "control", ca_file=tls.ca_file)
    try:
        online = wait_until(lambda: [node for node in control._flwr("supernode", "list", "flops").get("nodes", [])
                                     if node.get("status") == "online"], 60, 0.5)  # fmt: skip
        assert online, "the learner's SuperNode did not come online"
        victim = int(online[0]["node-id"])
        private_key, public_key = generate_key_pairs()  # an intruder's own key
        interceptor = NodeAuthHttpInterceptor(private_key, public_key)
        with FleetHttpClient.from_server_address(link.address, False, str(tls.ca_file),
                                                 interceptors=[interceptor]) as intruder:  # fmt: skip
            with pytest.raises(httpx.HTTPStatusError) as refused:
                intruder.PullMessages(PullMessagesRequest(node=Node(node_id=victim)))
            assert refused.value.response.status_code == 401
            assert "Invalid SuperNode authentication" in refused.value.response.text
            # The same client is well-formed: under its own node id the SuperLink answers it.
            own = intruder.RegisterNode(RegisterNodeFleetRequest(public_key=public_key_to_bytes(public_key)))
            assert own.node_id != victim
            intruder.PullMessages(PullMessagesRequest(node=Node(node_id=own.node_id)))
    finally:
        learner.stop()
