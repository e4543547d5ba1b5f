"""TLS for a project's Flower links: a CA of its own, and a certificate per SuperLink.

The CA lives only in the project run's memory: it signs the certificates of the
project's aggregators when they are deployed, and redeploys reuse those configs. Its
certificate goes to every learner and cluster aggregator, which verify their SuperLink
with it; no other project's (or stranger's) SuperLink passes.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from flops_utils.service_config import FlowerTls
from manager.pki import cert_pem, issue_server_cert, key_pem, name, new_ca

ORGANIZATION = "FLOps project"
DAYS = 30  # a project that trains longer is redeployed with new certificates
LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")  # the aggregator's own flwr CLI and ServerApp connect locally


class ProjectFlowerCa:
    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def _authority(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._ca is None:
            self._ca = new_ca(name(ORGANIZATION, f"FLOps project {self.project_id} Flower CA"), DAYS)
        return self._ca

    def for_superlink(self, host: str) -> FlowerTls:
        """The CA plus a certificate and key for a SuperLink reached at ``host``."""
        ca_cert, ca_key = self._authority()
        subject = name(ORGANIZATION, f"{self.project_id} SuperLink {host}"[:64])
        cert, key = issue_server_cert(ca_cert, ca_key, subject, [host, *LOCAL_NAMES], DAYS)
        return FlowerTls(ca_pem=cert_pem(ca_cert).decode(), cert_pem=cert_pem(cert).decode(),
                         key_pem=key_pem(key).decode())  # fmt: skip

    def for_supernode(self) -> FlowerTls:
        """What a SuperNode needs to verify the project's SuperLinks."""
        return FlowerTls(ca_pem=cert_pem(self._authority()[0]).decode())
