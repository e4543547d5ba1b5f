"""A small client of the Oakestra root orchestrator's REST API (the "system manager").

It logs in, refreshes the token before it expires (tokens live ten minutes), logs in again
(once per call) when a token is refused: 401, or 422 with a JWT verification error, which is
what the root's ``@jwt_required`` endpoints answer after the root restarted with a new key.
It decodes the JSON-in-a-JSON-string answers several endpoints give,
and turns error bodies (some as thin as ``{"code", "status"}``) into one clear sentence.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from flops_utils.message_text import one_line
from orchestrator_adapters.base import AdapterError

DEFAULT_TOKEN_LIFETIME_S = 600.0


# 422 answers of flask-jwt-extended that mean "this token is no good", not "this request is bad".
TOKEN_REFUSALS = (
    "Signature verification failed",
    "Not enough segments",
    "Invalid header",
    "Invalid payload",
    "Invalid crypto padding",
    "Only non-refresh tokens are allowed",
)


class OakestraError(AdapterError):
    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the root's own words, for deciding what to do

    @property
    def token_refused(self) -> bool:
        return self.status == 401 or (self.status == 422 and any(refusal in self.reason for refusal in TOKEN_REFUSALS))


def decode_answer(text: str) -> Any:
    """JSON, decoded again while the result is itself a JSON document in a string."""
    value: Any = json.loads(text) if text.strip() else None
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except ValueError:
            break
    return value


def object_id(value: object) -> str:
    """Ids arrive as ``{"$oid": "..."}`` or as plain strings."""
    if isinstance(value, dict) and "$oid" in value:
        return str(value["$oid"])
    return str(value)


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (only to know when to refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def error_message(response: requests.Response) -> str:
    try:
        body = decode_answer(response.text)
    except ValueError:
        body = response.text.strip()
    if isinstance(body, dict) and body and set(body) <= {"code", "status"}:  # the root's thin answer
        return f"{body.get('status') or response.reason} (Oakestra gave no reason)"
    if isinstance(body, dict):
        for key in ("message", "msg", "description", "error", "status"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or json.dumps(value)
            if value:
                return one_line(value)
    if isinstance(body, str) and body:
        return one_line(body)
    return response.reason or "no details"


class OakestraClient:
    """Constructing it does no I/O; the first request logs in."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        organization: str | None = None,
        verify_tls: bool = True,
        timeout_s: float = 30.0,
        refresh_margin_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self._username, self._password, self._organization = username, password, organization
        self._verify, self._timeout, self._margin, self._clock = verify_tls, timeout_s, refresh_margin_s, clock
        self._session = requests.Session()
        self._token: str | None = None
        self._refresh_token: str | None = None
        self._expires_at = 0.0
        self._auth_lock = threading.RLock()  # one login/refresh at a time when threads share the client

    def close(self) -> None:
        self._session.close()

    # -- auth ------------------------------------------------------------------------------
    def _accept_tokens(self, answer: Any, what: str) -> None:
        if not isinstance(answer, dict) or not answer.get("token"):
            raise OakestraError(f"Oakestra {what} gave no token")
        self._token = str(answer["token"])
        self._refresh_token = str(answer.get("refresh_token") or self._refresh_token or "") or None
        expiry = token_expiry(self._token)
        self._expires_at = expiry if expiry is not None else self._clock() + DEFAULT_TOKEN_LIFETIME_S

    def login(self) -> None:
        body: dict[str, str] = {"username": self._username, "password": self._password}
        if self._organization:
            body["organization"] = self._organization
            body["organization_name"] = self._organization
        with self._auth_lock:
            answer = self._send("POST", "/api/auth/login", json_body=body, token=None, what="login")
            self._accept_tokens(answer, "login")

    def _refresh(self) -> None:
        """Exchange the refresh token; log in again when that fails."""
        if self._refresh_token:
            try:
                answer = self._send("POST", "/api/auth/refresh", token=self._refresh_token, what="token refresh")
                self._accept_tokens(answer, "token refresh")
                return
            except OakestraError:
                self._refresh_token = None
        self.login()

    def _valid_token(self) -> str:
        with self._auth_lock:
            if self._token is None:
                self.login()
            elif self._clock() >= self._expires_at - self._margin:
                self._refresh()
            assert self._token is not None
            return self._token

    # -- requests ----------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        token: str | None,
        what: str,
        allow: tuple[int, ...] = (),
    ) -> Any:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self._session.request(
                method, f"{self.url}{path}", json=json_body, headers=headers, timeout=self._timeout, verify=self._verify
            )
        except requests.RequestException as error:
            raise OakestraError(
                f"cannot reach the Oakestra root orchestrator at {self.url} ({what}): {error}"
            ) from error
        if response.status_code in allow:
            return None
        if not 200 <= response.status_code < 300:
            reason = error_message(response)
            raise OakestraError(
                f"Oakestra {what} failed with HTTP {response.status_code}: {reason}", response.status_code, reason
            )
        try:
            return decode_answer(response.text)
        except ValueError as error:
            raise OakestraError(f"Oakestra {what} answered with something other than JSON") from error

    def call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: Any = None,
        auth: bool = True,
        allow: tuple[int, ...] = (),
    ) -> Any:
        """One API call; None when the status is in ``allow``. A refused token is replaced by a new login, once."""
        if not auth:
            return self._send(method, path, json_body=json_body, token=None, what=what, allow=allow)
        token = self._valid_token()
        try:
            return self._send(method, path, json_body=json_body, token=token, what=what, allow=allow)
        except OakestraError as error:
            if not error.token_refused:
                raise
        with self._auth_lock:
            if self._token == token:  # another thread may have logged in already
                self.login()
        return self._send(method, path, json_body=json_body, token=self._valid_token(), what=what, allow=allow)
