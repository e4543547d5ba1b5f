"""A thin REST client of the FLOps manager; every failure becomes one CliError line."""

from __future__ import annotations

from typing import Any

import requests

DEFAULT_TIMEOUT_S = 30.0


class CliError(Exception):
    """One clear line for stderr; ``exit_code`` for the shell."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ManagerUnreachable(CliError):
    """No TCP answer from the manager (worth retrying while watching)."""


class FlopsClient:
    def __init__(
        self, url: str, token: str | None, timeout_s: float = DEFAULT_TIMEOUT_S, ca_file: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._session = requests.Session()
        # Per request: a Session's verify loses to $REQUESTS_CA_BUNDLE, which many hosts set.
        self._verify: str | bool = ca_file or True

    def get(self, path: str, params: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        return self.request("GET", path, params=params, timeout_s=timeout_s)

    def get_text(self, path: str, accept: str, timeout_s: float | None = None) -> str:
        """A non-JSON document (CSV ...); errors still come as JSON one-liners."""
        response = self._send("GET", path, accept=accept, timeout_s=timeout_s)
        if response.status_code >= 400:
            _payload(response)  # raises the one-line error
        return response.text

    def post(self, path: str, body: Any, timeout_s: float | None = None) -> Any:
        return self.request("POST", path, body=body, timeout_s=timeout_s)

    def delete(self, path: str, timeout_s: float | None = None) -> Any:
        return self.request("DELETE", path, timeout_s=timeout_s)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        return _payload(self._send(method, path, body=body, params=params, timeout_s=timeout_s))

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        accept: str = "application/json",
    ) -> requests.Response:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = timeout_s or self.timeout_s
        try:
            response = self._session.request(
                method,
                self.url + path,
                json=body,
                params=params,
                headers=headers,
                timeout=timeout,
                verify=self._verify,
            )
        except requests.exceptions.SSLError as error:
            raise CliError(
                f"the FLOps manager at {self.url} failed the TLS check ({_ssl_reason(error)}); "
                f"pass its CA with --ca-file or $FLOPS_CA_FILE"
            ) from None
        except requests.ConnectionError:
            raise ManagerUnreachable(f"cannot reach the FLOps manager at {self.url}") from None
        except requests.Timeout:
            raise CliError(f"the FLOps manager at {self.url} did not answer within {timeout:.0f} s") from None
        except requests.RequestException as error:
            raise CliError(f"request to the FLOps manager at {self.url} failed: {error}") from None
        return response

    def close(self) -> None:
        self._session.close()


def _ssl_reason(error: Exception) -> str:
    text = str(error)
    for reason in ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "certificate verify failed"):
        if reason in text:
            return reason
    return " ".join(text.split())[-160:]


def _payload(response: requests.Response) -> Any:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code < 400:
        if payload is None and response.content:
            raise CliError(f"the FLOps manager answered {response.status_code} without JSON")
        return payload
    raise CliError(error_line(response.status_code, payload, response.reason))


def error_line(status: int, payload: Any, reason: str | None) -> str:
    """``{"error", "details"}`` as one line naming each field."""
    if isinstance(payload, dict) and payload.get("error"):
        details = payload.get("details") or []
        described = [
            f"{item.get('field')}: {item.get('message')}"
            for item in details
            if isinstance(item, dict) and item.get("field")
        ]
        message = "; ".join(described) if described else str(payload["error"])
    else:
        message = f"{reason or 'error'}"
    return f"{message} (HTTP {status})"
