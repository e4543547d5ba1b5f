"""Data servers with TLS and tokens: namespaces per customer, scopes, revocation, a schema per tag.

Real data server processes; the tokens and certificates come from the manager's own DataAccess.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.flight as flight
import pytest

from flops_utils.data_client import (
    DataAccessDenied,
    DataServerClient,
    DataServerError,
    DataServerUnavailable,
    TagShape,
    from_numpy,
    to_numpy,
)
from manager.lifecycle.data_access import DataAccess
from manager.security.tracking_pki import TrackingPki
from tests.test_data_server import RunningServer, sample, start_server

NODE = "node-x"


@pytest.fixture(scope="module")
def access(tmp_path_factory: pytest.TempPathFactory) -> DataAccess:
    return DataAccess(TrackingPki(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def secure(tmp_path: Path, access: DataAccess) -> Iterator[RunningServer]:
    security = access.server_security("127.0.0.1")
    config = {
        "tls": {"cert_pem": security.cert_pem, "key_pem": security.key_pem},
        "token_public_key_pem": security.token_public_key_pem,
    }
    running = start_server(tmp_path / "storage", tmp_path / "server.log", config, ca_pem=access.ca_pem(), node=NODE)
    try:
        yield running
    finally:
        running.stop()


def writer(server: RunningServer, access: DataAccess, customer: str, node: str = NODE) -> DataServerClient:
    return DataServerClient(server.address, access.write_token(customer, node)[0], access.ca_pem())


def test_each_customer_has_its_own_namespace(secure: RunningServer, access: DataAccess) -> None:
    alice, bob = writer(secure, access, "alice"), writer(secure, access, "bob")
    xa, ya = sample(40, width=30, seed=1)
    assert alice.put("digits", from_numpy(xa, ya)) == 40
    assert bob.put("digits", from_numpy(*sample(25, width=64, seed=2))) == 25  # same tag, other data, other width

    assert alice.list_shapes() == {"digits": TagShape(40, 30)}
    assert bob.list_shapes() == {"digits": TagShape(25, 64)}
    assert bob.delete_tag("digits") == 1  # bob's own fragment only
    assert bob.list_tags() == {}
    assert alice.list_tags() == {"digits": 40}

    reader = DataServerClient(secure.address, access.read_token("alice", "p1", ["digits"]), access.ca_pem())
    x, y = to_numpy(reader.get(["digits"]))
    np.testing.assert_array_equal(x, xa)
    np.testing.assert_array_equal(y, ya)
    bob_reader = DataServerClient(secure.address, access.read_token("bob", "p2", ["digits"]), access.ca_pem())
    with pytest.raises(DataServerError, match="no data for tags digits"):
        bob_reader.get(["digits"])  # bob sees his (now empty) namespace, never alice's rows


def test_calls_without_a_valid_token_are_refused(secure: RunningServer, access: DataAccess, tmp_path: Path) -> None:
    writer(secure, access, "alice").put("digits", from_numpy(*sample(10)))
    anonymous = DataServerClient(secure.address, ca_pem=access.ca_pem())
    anonymous.ping()  # the health check needs no token
    with pytest.raises(DataAccessDenied, match="needs a data token to list tags"):
        anonymous.list_tags()
    with pytest.raises(DataAccessDenied, match="needs a data token to store data"):
        anonymous.put("digits", from_numpy(*sample(3)))
    with pytest.raises(DataAccessDenied, match="needs a data token to delete data"):
        anonymous.delete_tag("digits")

    other_deployment = DataAccess(TrackingPki(tmp_path / "other-pki"))
    forged = DataServerClient(secure.address, other_deployment.write_token("alice", NODE)[0], access.ca_pem())
    with pytest.raises(DataAccessDenied, match="signature is not valid"):
        forged.delete_tag("digits")
    expired = DataServerClient(secure.address, access.write_token("alice", NODE, ttl_s=-1)[0], access.ca_pem())
    with pytest.raises(DataAccessDenied, match="expired"):
        expired.list_tags()
    elsewhere = writer(secure, access, "alice", node="node-y")
    with pytest.raises(DataAccessDenied, match="this token is for node node-y, not node-x"):
        elsewhere.delete_tag("digits")

    read_only = DataServerClient(secure.address, access.read_token("alice", "p1", ["digits"]), access.ca_pem())
    with pytest.raises(DataAccessDenied, match="a read token may not put data"):
        read_only.put("digits", from_numpy(*sample(3)))
    with pytest.raises(DataAccessDenied, match="a read token may not delete data"):
        read_only.delete_tag("digits")
    with pytest.raises(DataAccessDenied, match="may read only tags digits, not 'secret'"):
        _raw_get(read_only, "secret")
    device = writer(secure, access, "alice")
    with pytest.raises(DataAccessDenied, match="a write token may not get data"):
        device.get(["digits"])
    assert writer(secure, access, "alice").list_tags() == {"digits": 10}  # nothing was touched
    log = secure.log_file.read_text()
    assert "refused: no token" in log and "refused for customer alice" in log


def _raw_get(client: DataServerClient, tag: str) -> None:
    """A direct do_get for one tag (``get`` lists first and would skip a tag the token cannot see)."""
    try:
        client._flight().do_get(flight.Ticket(tag.encode()), options=client._options()).read_all()
    except flight.FlightError as error:
        raise client._fail(f"send tag {tag!r}", error) from error


def test_a_revoked_project_token_no_longer_reads(secure: RunningServer, access: DataAccess) -> None:
    writer(secure, access, "alice").put("digits", from_numpy(*sample(10)))
    learner = DataServerClient(
        secure.address, access.read_token("alice", "project-1", ["digits"], node=NODE), access.ca_pem()
    )
    assert learner.get(["digits"]).num_rows == 10
    with pytest.raises(DataAccessDenied, match="a read token may not revoke"):
        learner.revoke_project("project-1")
    DataServerClient(secure.address, access.admin_token(), access.ca_pem()).revoke_project("project-1")
    with pytest.raises(DataAccessDenied, match="revoked: project project-1 has ended"):
        learner.get(["digits"])
    other_project = DataServerClient(
        secure.address, access.read_token("alice", "project-2", ["digits"]), access.ca_pem()
    )
    assert other_project.list_tags() == {"digits": 10}


def test_plain_grpc_does_not_reach_a_tls_data_server(secure: RunningServer, access: DataAccess) -> None:
    with pytest.raises(DataServerUnavailable):
        DataServerClient(secure.address, access.write_token("alice", NODE)[0]).list_tags()


def test_the_first_upload_fixes_the_tags_schema(secure: RunningServer, access: DataAccess) -> None:
    alice = writer(secure, access, "alice")
    alice.put("readings", from_numpy(*sample(5, width=30)))
    with pytest.raises(
        DataServerError,
        match=r"tag 'readings' holds \(n, 30\) float32 features, int64 labels; "
        r"this upload has \(n, 64\) float32 features, int64 labels.*node-x",
    ):
        alice.put("readings", from_numpy(*sample(5, width=64)))
    assert alice.list_shapes() == {"readings": TagShape(5, 30)}  # the refused upload left nothing
    assert writer(secure, access, "bob").put("readings", from_numpy(*sample(5, width=64))) == 5


def test_a_daemonset_pod_checks_tokens_against_its_own_node(
    tmp_path: Path, access: DataAccess, monkeypatch: pytest.MonkeyPatch
) -> None:
    security = access.server_security()
    monkeypatch.setenv("FLOPS_NODE_NAME", "edge-7")  # what Kubernetes' downward API sets in the pod
    config = {
        "tls": {"cert_pem": security.cert_pem, "key_pem": security.key_pem},
        "token_public_key_pem": security.token_public_key_pem,
        "node_from_env": "FLOPS_NODE_NAME",
    }
    server = start_server(
        tmp_path / "storage", tmp_path / "server.log", config, ca_pem=access.ca_pem(), node="kubernetes-daemonset"
    )
    try:
        assert writer(server, access, "alice", node="edge-7").put("t", from_numpy(*sample(3))) == 3
        with pytest.raises(DataAccessDenied, match="this token is for node edge-1, not edge-7"):
            writer(server, access, "alice", node="edge-1").list_tags()
    finally:
        server.stop()


def test_device_uploader_pushes_one_fragment_with_progress(tmp_path: Path, access: DataAccess) -> None:
    from flops_utils.data_uploader import DataUploader

    security = access.server_security()
    config = {
        "tls": {"cert_pem": security.cert_pem, "key_pem": security.key_pem},
        "token_public_key_pem": security.token_public_key_pem,
        "max_upload_bytes": 10_000_000,
    }
    server = start_server(tmp_path / "storage", tmp_path / "server.log", config, ca_pem=access.ca_pem(), node=NODE)
    try:
        seen: list[tuple[int, int]] = []
        token = access.write_token("alice", NODE)[0]
        with DataUploader(server.address, token, access.ca_pem()) as uploader:
            x, y = sample(40_000, width=2)
            assert uploader.push("vibration", x, y, progress=lambda sent, total: seen.append((sent, total))) == 40_000
            assert seen == [(16384, 40_000), (32768, 40_000), (40_000, 40_000)]
            assert uploader.tags() == {"vibration": TagShape(40_000, 2)}
            assert uploader.delete("vibration") == 1  # one push, one fragment
    finally:
        server.stop()
