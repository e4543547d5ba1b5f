"""Mutual TLS for a project's training links: a CA of its own, a server certificate per aggregator,
a client certificate per link client.

The CA lives only in the project run's memory: it signs the certificates of the project's
aggregators and learners when they are deployed, and redeploys reuse those configs. A client
certificate's common name is the node's identity on the link (``node-a1`` for a learner,
``cluster cluster-a`` for a cluster aggregator): a link server refuses clients without one,
clients of another project's CA, and a hello that claims another node's name.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from flops_utils.service_config import FlowerTls
from manager.security.pki import cert_pem, issue_client_cert, issue_server_cert, key_pem, name, new_ca

ORGANIZATION = "FLOps project"
DAYS = 30  # a project that trains longer is redeployed with new certificates
LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")  # tools on the aggregator's host connect locally


def cluster_identity(cluster: str) -> str:
    """A cluster aggregator's name on its root's link."""
    return f"cluster {cluster}"


class ProjectFlowerCa:
    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def _authority(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._ca is None:
            self._ca = new_ca(name(ORGANIZATION, f"FLOps project {self.project_id} link CA"[:64]), DAYS)
        return self._ca

    def _client(self, identity: str) -> tuple[str, str]:
        ca_cert, ca_key = self._authority()
        cert, key = issue_client_cert(ca_cert, ca_key, name(ORGANIZATION, identity[:64]), DAYS)
        return cert_pem(cert).decode(), key_pem(key).decode()

    def for_superlink(self, host: str, client_identity: str | None = None) -> FlowerTls:
        """The CA plus a server certificate and key for a link server reached at ``host``;
        with ``client_identity`` (a cluster aggregator) also a client certificate for the root's link."""
        ca_cert, ca_key = self._authority()
        subject = name(ORGANIZATION, f"{self.project_id} link {host}"[:64])
        cert, key = issue_server_cert(ca_cert, ca_key, subject, [host, *LOCAL_NAMES], DAYS)
        client_cert, client_key = self._client(client_identity) if client_identity else (None, None)
        return FlowerTls(
            ca_pem=cert_pem(ca_cert).decode(),
            cert_pem=cert_pem(cert).decode(),
            key_pem=key_pem(key).decode(),
            client_cert_pem=client_cert,
            client_key_pem=client_key,
        )

    def for_supernode(self, identity: str | None = None) -> FlowerTls:
        """What a link client needs: the CA to verify servers, and (with ``identity``) its own certificate."""
        client_cert, client_key = self._client(identity) if identity else (None, None)
        return FlowerTls(
            ca_pem=cert_pem(self._authority()[0]).decode(), client_cert_pem=client_cert, client_key_pem=client_key
        )
