"""Who may use a customer's endpoints (MLflow server, project observers): its tokens, the admin's, a service token.

The service token that FLOps services present (aggregators log runs, the builder reads
models, serving loads them) is derived from the manager's secret (the admin token) with HMAC, so it is
never stored: the same manager always derives the same token, and no customer can
derive another's. The tracking server itself only gets SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from flops_utils.token_access import token_digest


@dataclass(frozen=True)
class TrackingAccess:
    enabled: bool = False
    admin_token: str = field(default="", repr=False)  # sees every customer's runs; also the HMAC key
    customer_tokens: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)  # customer -> tokens

    @classmethod
    def from_tokens(cls, enabled: bool, admin_token: str, token_to_customer: Mapping[str, str]) -> TrackingAccess:
        tokens: dict[str, list[str]] = {}
        for token, customer in token_to_customer.items():
            tokens.setdefault(customer, []).append(token)
        return cls(enabled, admin_token, {customer: tuple(values) for customer, values in tokens.items()})

    def service_token(self, customer: str) -> str | None:
        """The token FLOps services use for ``customer``'s MLflow server (None: the server is open)."""
        if not self.enabled:
            return None
        return hmac.new(self.admin_token.encode(), f"flops-mlflow/{customer}".encode(), hashlib.sha256).hexdigest()

    def digests(self, customer: str) -> list[str]:
        """Digests of every token ``customer``'s MLflow server accepts; empty when access is open."""
        token = self.service_token(customer)
        if token is None:
            return []
        tokens = {token, *self.customer_tokens.get(customer, ()), *([self.admin_token] if self.admin_token else [])}
        return sorted(token_digest(value) for value in tokens)
