"""Bearer-token identity: each token names one customer; the admin token is customer "Admin" and sees everything."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

ADMIN_CUSTOMER = "Admin"


class AuthError(Exception):
    """Missing or unknown bearer token (HTTP 401); the message is one line."""


@dataclass(frozen=True)
class Caller:
    customer: str
    is_admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.is_admin or owner == self.customer


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value; AuthError otherwise."""
    if not authorization:
        raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("malformed Authorization header: expected 'Bearer <token>'")
    return token


class TokenAuth:
    def __init__(self, tokens: dict[str, str], admin_token: str) -> None:
        if not admin_token:
            raise ValueError("an admin token is required")
        for token, customer in tokens.items():
            if not token or not customer:
                raise ValueError("customer tokens and names must not be empty")
            if customer == ADMIN_CUSTOMER:
                raise ValueError(f"the customer name {ADMIN_CUSTOMER!r} is reserved for the admin token")
            if token == admin_token:
                raise ValueError(f"customer {customer!r} uses the admin token")
        self._tokens = {token.encode(): customer for token, customer in tokens.items()}
        self._admin_token = admin_token.encode()

    def identify(self, authorization: str | None) -> Caller:
        """The caller named by an ``Authorization: Bearer <token>`` header value; AuthError otherwise."""
        presented = bearer_token(authorization).encode("utf-8", errors="replace")
        if hmac.compare_digest(presented, self._admin_token):
            return Caller(ADMIN_CUSTOMER, is_admin=True)
        customer: str | None = None
        for known, name in self._tokens.items():  # compare against every token: no early exit on a match
            if hmac.compare_digest(presented, known):
                customer = name
        if customer is None:
            raise AuthError("invalid bearer token")
        return Caller(customer)
