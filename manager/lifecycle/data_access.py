"""The manager's side of data-server security: it signs data tokens and equips data servers for TLS.

The signing key (Ed25519, ``pki/data-token.key``, mode 0600) stays with the manager; data
servers get only its public key (see :mod:`flops_utils.data_tokens`). Their TLS
certificates come from the manager's CA (the one the MLflow servers use), whose
certificate every client gets with its token.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flops_utils.data_client import DATA_SERVER_TLS_NAME
from flops_utils.data_tokens import DataClaims, sign_token
from flops_utils.service_config import DataServerSecurity
from manager.security.pki import cert_pem, issue_server_cert, key_pem, name
from manager.security.tracking_pki import LOCAL_NAMES, TrackingPki

KEY_FILE = "data-token.key"
WRITE_TOKEN_TTL_S = 30 * 86400.0
READ_TOKEN_TTL_S = 30 * 86400.0  # a project's read tokens are also revoked when it ends
MANAGER_TOKEN_TTL_S = 300.0  # the manager's own calls (placement, mocks, listing, revocation)
SERVER_DAYS = 365


@dataclass
class DataAccess:
    pki: TrackingPki  # its directory holds the signing key too
    _private_pem: bytes | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _key(self) -> bytes:
        with self._lock:
            if self._private_pem is None:
                path = self.pki.directory / KEY_FILE
                if not path.is_file():
                    self.pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                    pem = Ed25519PrivateKey.generate().private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                    )
                    temporary = path.with_suffix(".tmp")
                    temporary.write_bytes(pem)
                    os.chmod(temporary, 0o600)
                    os.replace(temporary, path)
                self._private_pem = path.read_bytes()
            return self._private_pem

    def public_key_pem(self) -> str:
        key = serialization.load_pem_private_key(self._key(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def ca_pem(self) -> str:
        return self.pki.ca_pem()

    def _sign(self, claims: DataClaims) -> str:
        return sign_token(claims, self._key())

    def write_token(self, customer: str, node: str, ttl_s: float = WRITE_TOKEN_TTL_S) -> tuple[str, float]:
        """For devices and ``flops data push``: put, delete and list in ``customer``'s namespace on ``node``."""
        expires_at = time.time() + ttl_s
        return self._sign(DataClaims(customer, "write", node=node, expires_at=expires_at)), expires_at

    def read_token(
        self,
        customer: str,
        project_id: str | None,
        tags: list[str] | None,
        node: str = "*",
        ttl_s: float = READ_TOKEN_TTL_S,
    ) -> str:
        """Read-only: list and get ``tags`` (None: all) of ``customer``; revoked with ``project_id``."""
        return self._sign(
            DataClaims(
                customer,
                "read",
                node=node,
                project_id=project_id,
                tags=tuple(tags) if tags is not None else None,
                expires_at=time.time() + ttl_s,
            )
        )

    def admin_token(self) -> str:
        return self._sign(DataClaims("FLOps manager", "admin", expires_at=time.time() + MANAGER_TOKEN_TTL_S))

    def server_security(self, host: str = "127.0.0.1") -> DataServerSecurity:
        """A certificate for data servers (named ``flops-data-server``, which FLOps clients check, and ``host``),
        the CA and the token key; one certificate serves every node."""
        ca_cert, ca_key = self.pki.authority()
        cert, key = issue_server_cert(
            ca_cert,
            ca_key,
            name("FLOps manager", "FLOps data server"),
            [DATA_SERVER_TLS_NAME, host, *LOCAL_NAMES],
            SERVER_DAYS,
        )
        return DataServerSecurity(
            ca_pem=cert_pem(ca_cert).decode(),
            cert_pem=cert_pem(cert).decode(),
            key_pem=key_pem(key).decode(),
            token_public_key_pem=self.public_key_pem(),
        )
