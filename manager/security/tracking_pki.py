"""TLS for the customers' MLflow servers: one CA the manager keeps, a certificate per server.

Unlike a project's Flower CA, this CA outlives a manager restart: observatories do, and
the services of a resumed project must still verify them. It is kept in the manager's
state dir (``pki/``, key mode 0600); its certificate goes to every MLflow client FLOps
starts (``tracking_ca_pem``) and to users through ``GET /tracking``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from flops_utils.service_config import ServerCertificate
from manager.security.pki import cert_pem, ensure_ca, issue_server_cert, key_pem, name

ORGANIZATION = "FLOps manager"
CA_DAYS, SERVER_DAYS = 5 * 365, 365  # an observatory older than a year is replaced with a new certificate
LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass
class TrackingPki:
    directory: Path
    _ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _authority(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        with self._lock:
            if self._ca is None:
                self._ca = ensure_ca(self.directory, name(ORGANIZATION, "FLOps MLflow CA"), CA_DAYS)
            return self._ca

    def authority(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA certificate and key (made on first use); data servers get certificates from it too."""
        return self._authority()

    @property
    def ca_file(self) -> Path:
        self._authority()
        return self.directory / "ca.pem"

    def ca_pem(self) -> str:
        return cert_pem(self._authority()[0]).decode()

    def issue(self, host: str, service: str = "MLflow") -> ServerCertificate:
        """A certificate for a server of the observatory (MLflow, a project observer) reached at ``host``
        (and locally)."""
        ca_cert, ca_key = self._authority()
        cert, key = issue_server_cert(
            ca_cert, ca_key, name(ORGANIZATION, f"{service} {host}"[:64]), [host, *LOCAL_NAMES], SERVER_DAYS
        )
        return ServerCertificate(cert_pem=cert_pem(cert).decode(), key_pem=key_pem(key).decode())
