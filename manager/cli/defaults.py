"""Where the CLI finds the manager: flags, then FLOPS_URL / FLOPS_TOKEN, then the local suite's manager config."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Kept here rather than imported: manager.settings and manager.suite pull in flops_utils (and numpy),
# which would double the start-up time of every command. tests/test_cli.py checks they agree.
DEFAULT_PORT = 5072  # manager.settings.DEFAULT_PORT
SUITE_DIR_ENV = "FLOPS_SUITE_DIR"  # manager.suite.suite.STATE_DIR_ENV
DEFAULT_SUITE_DIR = "~/.flops/suite"

URL_ENV = "FLOPS_URL"
TOKEN_ENV = "FLOPS_TOKEN"
CA_FILE_ENV = "FLOPS_CA_FILE"
MANAGER_DIR = "manager"
MANAGER_CONFIG = "config.json"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    ca_file: str | None = None  # verify an HTTPS manager with this CA (else the system's)


def default_suite_dir() -> Path:
    """Same rule as ``manager.suite.default_state_dir``."""
    return Path(os.environ.get(SUITE_DIR_ENV) or DEFAULT_SUITE_DIR).expanduser()


def suite_manager_dir(state_dir: Path) -> Path:
    return state_dir / MANAGER_DIR


def read_suite_manager_config(state_dir: Path) -> dict[str, Any] | None:
    """The manager config ``flops suite up --manager`` wrote, if present and readable."""
    try:
        loaded = json.loads((suite_manager_dir(state_dir) / MANAGER_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def manager_url(config: dict[str, Any]) -> str:
    host = config.get("public_host") or config.get("host") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "https" if config.get("tls_cert_file") else "http"
    return f"{scheme}://{host}:{config.get('port', DEFAULT_PORT)}"


def manager_ca_file(config: dict[str, Any]) -> str | None:
    """The CA a manager config names for its API certificate (the suite's own CA)."""
    value = config.get("tls_ca_file")
    return str(value) if value else None


def resolve_connection(
    url: str | None, token: str | None, suite_dir: Path | None, ca_file: str | None = None
) -> Connection:
    """Explicit values win; the suite's admin token (and CA) only ever go with the suite's own manager."""
    config = read_suite_manager_config(suite_dir) if suite_dir is not None else None
    suite_url = manager_url(config) if config else None
    resolved_url = (url or os.environ.get(URL_ENV) or suite_url or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")
    resolved_token = token or os.environ.get(TOKEN_ENV)
    if not resolved_token and config and resolved_url == suite_url:
        admin_token = config.get("admin_token")
        resolved_token = admin_token if isinstance(admin_token, str) else None
    resolved_ca = ca_file or os.environ.get(CA_FILE_ENV)
    if not resolved_ca and config and resolved_url == suite_url:
        resolved_ca = manager_ca_file(config)
    return Connection(url=resolved_url, token=resolved_token, ca_file=resolved_ca)
