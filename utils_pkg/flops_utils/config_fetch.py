"""A service configuration fetched from the manager by reference.

Orchestrators without a secrets object (Oakestra) keep a service's environment in
their database as it is. There the manager hands a service only where to fetch its
configuration and a bearer token for it (``FLOPS_CONFIG_URL``, ``FLOPS_CONFIG_TOKEN``
and the CA to verify the manager with, ``FLOPS_CONFIG_CA_PEM``); the configuration
itself, with its passwords and keys, stays sealed in the manager's store and the
reference stops working when the project ends.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request

CONFIG_URL_ENV = "FLOPS_CONFIG_URL"
CONFIG_TOKEN_ENV = "FLOPS_CONFIG_TOKEN"
CONFIG_CA_ENV = "FLOPS_CONFIG_CA_PEM"
FETCH_PATIENCE_S = 120.0  # the manager may be restarting; after this the service gives up
RETRY_S = 2.0
# Answers that will not change by asking again.
FINAL_STATUSES = {400, 401, 403, 404, 410}


class ConfigFetchError(RuntimeError):
    """The configuration could not be fetched (one line)."""


def reference_environment(url: str, token: str, ca_pem: str | None) -> dict[str, str]:
    """The environment that points a service at its configuration."""
    environment = {CONFIG_URL_ENV: url, CONFIG_TOKEN_ENV: token}
    if ca_pem:
        environment[CONFIG_CA_ENV] = ca_pem
    return environment


def _context(ca_pem: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("error") or error.reason)
    except (ValueError, AttributeError, OSError):
        return str(error.reason)


def fetch_config_json(url: str, token: str, ca_pem: str | None = None, *, patience_s: float = FETCH_PATIENCE_S) -> str:
    """The configuration document at ``url``; retries while the manager is unreachable or busy."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    context = _context(ca_pem) if url.startswith("https:") else None
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310 (http/https only)
                return str(answer.read().decode())
        except urllib.error.HTTPError as error:
            problem = f"the manager answered {error.code}: {_reason(error)}"
            if error.code in FINAL_STATUSES:
                raise ConfigFetchError(f"cannot fetch the service configuration from {url}: {problem}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            problem = f"{type(reason).__name__}: {reason}"
            if isinstance(reason, ssl.SSLError):
                raise ConfigFetchError(f"cannot fetch the service configuration from {url}: {problem}") from None
        if time.monotonic() >= deadline:
            raise ConfigFetchError(
                f"cannot fetch the service configuration from {url} within {patience_s:g} s: {problem}"
            )
        time.sleep(RETRY_S)
