"""A small CA for the suite: one TLS certificate for this host (broker, registry, manager API), signed by a CA
every FLOps client trusts.

The CA certificate is not secret: it travels inside service configurations
(``MqttSettings.ca_pem``, ``RegistrySettings.ca_pem``), so a service needs no file on its host, pod or container to
verify the broker or the registry. Keys stay in the suite's state dir with mode 0600. Certificates are
made once and reused while they are valid for at least a month more.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from manager.security.pki import cert_pem, ensure_ca, issue_server_cert, name, still_valid, write_key

CA_DAYS = 5 * 365
SERVER_DAYS = 2 * 365
ORGANIZATION = "FLOps suite"


@dataclass(frozen=True)
class ServerTls:
    ca_file: Path
    cert_file: Path
    key_file: Path

    @property
    def ca_pem(self) -> str:
        return self.ca_file.read_text()


def _ensure_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    previous = (directory / "ca.pem").read_bytes() if (directory / "ca.pem").is_file() else None
    cert, key = ensure_ca(directory, name(ORGANIZATION, "FLOps suite CA"), CA_DAYS)
    if cert_pem(cert) != previous:
        (directory / "server.pem").unlink(missing_ok=True)  # signed by the old CA
    return cert, key


def server_hosts(extra: list[str] | None = None) -> list[str]:
    """Names the broker is reached by: loopback, this host's name, and ``extra``."""
    return sorted({"127.0.0.1", "::1", "localhost", socket.gethostname(), *(extra or [])})


def ensure_server_tls(directory: Path, hosts: list[str]) -> ServerTls:
    """The CA and a server certificate for ``hosts`` under ``directory`` (made when missing or expiring)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert, ca_key = _ensure_ca(directory)
    tls = ServerTls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if still_valid(tls.cert_file, hosts) and tls.key_file.is_file():
        return tls
    cert, key = issue_server_cert(ca_cert, ca_key, name(ORGANIZATION, "FLOps suite broker"), hosts, SERVER_DAYS)
    write_key(tls.key_file, key)
    tls.cert_file.write_bytes(cert_pem(cert))
    return tls


def suite_server_tls(state_dir: Path) -> ServerTls:
    """The suite's CA and its certificate for this host: the broker's, reused by the registry and the manager API.

    Kept under ``mosquitto/tls`` (where the broker's first came to be) so existing suites keep their CA.
    """
    return ensure_server_tls(state_dir / "mosquitto" / "tls", server_hosts())
