"""Token checks for the customer's own endpoints (MLflow server, project observer).

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
from collections.abc import Iterable

MLFLOW_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"  # MLflow's client sends it as a Bearer token


def use_tracking_token(token: str | None) -> None:
    """Let this process's MLflow client in to a customer's gated server (see services.observer.mlflow_gate)."""
    if token:
        os.environ[MLFLOW_TOKEN_ENV] = token


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
