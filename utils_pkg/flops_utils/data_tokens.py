"""Scoped tokens for the nodes' data servers: what the manager signs and a data server checks.

A token is ``fd1.<claims>.<signature>`` (both base64url): JSON claims signed with the
manager's Ed25519 key. Data servers hold only the public key, so a data server (or a
device) that is compromised cannot mint tokens for other customers or nodes.

Claims: ``c`` customer (the namespace the token opens), ``s`` scope, ``n`` node name
(``*``: any node), ``p`` project id (read tokens; revoked when the project ends),
``t`` tags a read token may see (absent: all of the customer's), ``exp`` expiry (Unix s).

Scopes: ``write`` (devices, ``flops data push``): put, delete and list in the customer's
namespace on one node; ``read`` (a project's learners, the manager's placement): list
and get; ``admin`` (the manager): revoke a project's read tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Literal

TOKEN_PREFIX = "fd1"
Scope = Literal["write", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("write", "read", "admin")


class TokenRejected(ValueError):
    """The token is missing, malformed, badly signed or expired; the message is one line."""


@dataclass(frozen=True)
class DataClaims:
    customer: str
    scope: Scope
    node: str = "*"
    project_id: str | None = None
    tags: tuple[str, ...] | None = None
    expires_at: float = 0.0

    def allows_node(self, node: str) -> bool:
        return self.node in ("*", node)

    def allows_tag(self, tag: str) -> bool:
        return self.tags is None or tag in self.tags

    def to_json(self) -> bytes:
        body: dict[str, object] = {"c": self.customer, "s": self.scope, "n": self.node, "exp": int(self.expires_at)}
        if self.project_id is not None:
            body["p"] = self.project_id
        if self.tags is not None:
            body["t"] = list(self.tags)
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DataClaims:
        try:
            body = json.loads(raw)
            scope = body["s"]
            if scope not in SCOPES or not isinstance(body["c"], str) or not body["c"]:
                raise ValueError(scope)
            tags = body.get("t")
            return cls(
                customer=body["c"],
                scope=scope,
                node=str(body.get("n", "*")),
                project_id=body.get("p"),
                tags=tuple(str(tag) for tag in tags) if tags is not None else None,
                expires_at=float(body["exp"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise TokenRejected("malformed data token claims") from error


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(claims: DataClaims, private_key_pem: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("data tokens are signed with an Ed25519 key")
    body = claims.to_json()
    return f"{TOKEN_PREFIX}.{_b64(body)}.{_b64(key.sign(body))}"


class TokenVerifier:
    """Checks tokens against the manager's public key (PEM); holds the parsed key, does no I/O."""

    def __init__(self, public_key_pem: str) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        key = load_pem_public_key(public_key_pem.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the data token key must be an Ed25519 public key")
        self._key = key

    def verify(self, token: str, now: float | None = None) -> DataClaims:
        from cryptography.exceptions import InvalidSignature

        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise TokenRejected("not a FLOps data token (expected fd1.<claims>.<signature>)")
        try:
            body, signature = _unb64(parts[1]), _unb64(parts[2])
            self._key.verify(signature, body)
        except (binascii.Error, ValueError, InvalidSignature):
            raise TokenRejected("data token signature is not valid for this deployment") from None
        claims = DataClaims.from_json(body)
        if claims.expires_at <= (time.time() if now is None else now):
            raise TokenRejected("data token has expired; ask the manager for a new one")
        return claims
