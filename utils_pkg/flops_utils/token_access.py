"""Token checks for the customer's own endpoints (MLflow server, project observer), and a client's side of them.

The endpoints get only SHA-256 digests of the tokens they accept, so neither their
configuration nor their environment holds a secret. A token comes as
``Authorization: Bearer <token>`` or as the password of HTTP Basic (what a browser
sends after its prompt); the user name is ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

MLFLOW_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"  # MLflow's client sends it as a Bearer token
MLFLOW_CA_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"  # MLflow's client verifies the server with this CA bundle


def use_tracking_access(token: str | None, ca_pem: str | None = None) -> None:
    """Let this process's MLflow client in to a customer's gated server (see services.observer.mlflow_gate),
    verifying its TLS certificate with ``ca_pem`` when the server speaks HTTPS."""
    if token:
        os.environ[MLFLOW_TOKEN_ENV] = token
    if ca_pem:
        os.environ[MLFLOW_CA_ENV] = str(ca_file(ca_pem))


def ca_file(ca_pem: str) -> Path:
    """``ca_pem`` in a file (a CA certificate is public): one per content, written atomically once."""
    path = Path(tempfile.gettempdir()) / f"flops-ca-{hashlib.sha256(ca_pem.encode()).hexdigest()[:16]}.pem"
    if not path.is_file() or path.read_text() != ca_pem:
        descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=".flops-ca-")
        with os.fdopen(descriptor, "w") as handle:
            handle.write(ca_pem)
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)
    return path


def tracking_verify() -> str | bool:
    """``verify`` for a plain HTTP client talking to the MLflow server this process was set up for."""
    return os.environ.get(MLFLOW_CA_ENV) or True


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def presented_token(authorization: str) -> str | None:
    """The token in a Bearer or Basic (password part) ``Authorization`` header."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class TokenCheck:
    """Accepts a request whose ``Authorization`` header carries a token with one of ``digests``."""

    def __init__(self, digests: Iterable[str]) -> None:
        self.digests = [digest.strip().lower() for digest in digests if digest.strip()]

    @property
    def open(self) -> bool:
        """No digests: everyone is let in (development; the service warns)."""
        return not self.digests

    def allows(self, authorization: str | None) -> bool:
        if self.open:
            return True
        token = presented_token(authorization or "")
        if token is None:
            return False
        digest = token_digest(token)
        return any(hmac.compare_digest(digest, accepted) for accepted in self.digests)


SERVING_TOKENS_ENV = "FLOPS_SERVING_TOKEN_SHA256"  # an inference image's guard: who may call /invocations
SERVING_OPEN_ENV = "FLOPS_SERVING_OPEN"  # ... or "1": anyone (the image refuses to start with neither)


def serving_guard_environment(digests: Iterable[str]) -> dict[str, str]:
    """The environment that sets an inference image's token guard (services.serving.image_entry): only the
    holders of these tokens' digests may call it, or anyone when there are none (access control is off)."""
    listed = ",".join(sorted(digests))
    return {SERVING_TOKENS_ENV: listed} if listed else {SERVING_OPEN_ENV: "1"}
