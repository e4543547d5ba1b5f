"""The customer's MLflow server behind the customer's identity (``mlflow server --app-name flops-token-gate``).

MLflow's own server has no notion of FLOps customers. This ASGI app wraps it and lets
a request through only with a token the manager accepts for this customer: the
customer's API token (``Authorization: Bearer <token>``, or HTTP Basic with the token
as password, which browsers prompt for in the MLflow GUI) or the observatory's
service token that FLOps services get in their configuration (the MLflow client
sends it from ``MLFLOW_TRACKING_TOKEN``).

Only SHA-256 digests of the tokens reach the server (``FLOPS_MLFLOW_TOKEN_SHA256``,
comma-separated), so neither its configuration nor its environment holds a secret.
``/health`` stays open: orchestrators probe it and it tells nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from flops_utils.token_access import TokenCheck

GATE_APP_NAME = "flops-token-gate"  # the entry point in pyproject.toml's "mlflow.app" group
TOKEN_DIGESTS_ENV = "FLOPS_MLFLOW_TOKEN_SHA256"
REALM_ENV = "FLOPS_MLFLOW_REALM"
OPEN_PATHS = frozenset({"/health"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenGate:
    """Pure ASGI middleware: 401 unless the request carries an accepted token."""

    def __init__(self, app: AsgiApp, digests: Iterable[str], realm: str = "FLOps MLflow") -> None:
        self.app = app
        self.check = TokenCheck(digests)
        self.realm = realm.replace('"', "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        if self.check.allows(headers.get("authorization")):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error_code": "UNAUTHENTICATED",
                "message": "this MLflow server belongs to one FLOps customer: send that customer's "
                "API token (Bearer, or as the Basic password)",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app() -> AsgiApp:
    """The factory ``mlflow server --app-name flops-token-gate`` runs under uvicorn."""
    digests = os.environ.get(TOKEN_DIGESTS_ENV, "").split(",")
    if not any(digest.strip() for digest in digests):
        raise RuntimeError(f"{TOKEN_DIGESTS_ENV} is empty: the gate would refuse everyone")
    from mlflow.server.fastapi_app import app

    return TokenGate(app, digests, os.environ.get(REALM_ENV, "FLOps MLflow"))
