"""An ASGI wrapper around MLflow's scoring server: a token for ``/invocations``, and the input width checked.

``/ping`` and ``/health`` stay open (the manager polls them). Every other call needs
``Authorization: Bearer <token>`` whose SHA-256 is among ``digests`` (the project
customer's API tokens, the admin's, the services' token); otherwise 401. A JSON body
``{"inputs": [[...], ...]}`` whose rows are not ``width`` values long answers 400 naming
the expected shape, before the model sees it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from flops_utils.token_access import presented_token, token_digest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/ping", "/health", "/version"})
MAX_BODY_BYTES = 64 * 1024 * 1024


async def _answer(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error_code": "UNAUTHENTICATED" if status == 401 else "BAD_REQUEST", "message": error})
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="flops-serving"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


def width_problem(document: Any, width: int) -> str | None:
    """Why ``document`` is not rows of ``width`` values, or None (also when it is not the inputs format)."""
    rows = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(row, list) for row in rows):
        return None
    lengths = sorted({len(row) for row in rows})
    if lengths == [width]:
        return None
    got = ", ".join(str(length) for length in lengths[:5])
    return f"the model expects inputs of shape (n, {width}); got rows of {got} values"


class ServingGuard:
    def __init__(self, app: App, digests: list[str], width: int | None) -> None:
        self.app = app
        self.digests = [digest.encode() for digest in digests]
        self.width = width

    def _allowed(self, scope: Scope) -> bool:
        if not self.digests:
            return True
        headers = dict(scope.get("headers") or [])
        token = presented_token(headers.get(b"authorization", b"").decode("latin-1"))
        if not token:
            return False
        presented = token_digest(token).encode()
        return any(hmac.compare_digest(presented, digest) for digest in self.digests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if not self._allowed(scope):
            await _answer(
                send,
                401,
                "this model endpoint needs the project customer's token "
                "(Authorization: Bearer <token>); or use POST /api/flops/projects/<id>/predict",
            )
            return
        if self.width is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _answer(send, 400, f"request body over {MAX_BODY_BYTES} bytes")
                return
            if not message.get("more_body"):
                break
        try:
            problem = width_problem(json.loads(body), self.width)
        except ValueError:
            problem = None  # not JSON: MLflow answers for its other formats
        if problem:
            await _answer(send, 400, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def model_width(model: Any) -> int | None:
    """Features per row the model takes: from its MLflow signature, else the raw model's ``n_features_in_``."""
    try:
        schema = model.metadata.get_input_schema()
    except Exception:  # noqa: BLE001 - no signature
        schema = None
    if schema is not None:
        if schema.is_tensor_spec():
            shape = schema.inputs[0].shape
            if len(shape) == 2 and shape[1] and shape[1] > 0:
                return int(shape[1])
        else:
            return len(schema.inputs)
    try:
        width = getattr(model.get_raw_model(), "n_features_in_", None)
    except Exception:  # noqa: BLE001 - flavors without a raw model
        return None
    return int(width) if isinstance(width, int | float) and width > 0 else None


def guarded_model_app(model_uri: str, digests: list[str]) -> ServingGuard:
    """MLflow's scoring app for the model at ``model_uri``, behind the guard (``digests`` empty: open)."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    return ServingGuard(scoring_server.init(model), digests, model_width(model))
