"""The suite's OCI registry: Debian's docker-registry, filesystem storage, htpasswd auth."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import requests
import yaml

from manager.suite.processes import ProcessRecord, find_binary, launch, run_tool, wait_ready
from manager.suite.state import HOST, REGISTRY, ComponentState

READY_TIMEOUT_S = 30.0


def log_file(state_dir: Path) -> Path:
    return state_dir / "logs" / f"{REGISTRY}.log"


def write_config(state_dir: Path, component: ComponentState) -> Path:
    if component.credentials is None:
        raise ValueError("the registry needs credentials")
    directory = state_dir / REGISTRY
    storage = directory / "storage"
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    htpasswd_tool = find_binary("htpasswd", "install the Debian package 'apache2-utils' (make system-packages)")
    entry = run_tool(
        [htpasswd_tool, "-Bbn", component.credentials.username, component.credentials.password], name="htpasswd"
    )
    htpasswd = directory / "htpasswd"
    htpasswd.write_text(entry.strip() + "\n")
    os.chmod(htpasswd, 0o600)
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"{HOST}:{component.port}", "secret": secrets.token_hex(16)},
        "auth": {"htpasswd": {"realm": "flops-registry", "path": str(htpasswd)}},
    }
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.chmod(path, 0o600)
    return path


def start(state_dir: Path, component: ComponentState) -> ProcessRecord:
    """Start the registry; return once ``/v2/`` refuses anonymous and accepts our login."""
    binary = find_binary("docker-registry", "install the Debian package 'docker-registry' (make system-packages)")
    config = write_config(state_dir, component)
    process = launch([binary, "serve", str(config)], log_file=log_file(state_dir), cwd=state_dir, name=REGISTRY)
    wait_ready(process, lambda: registry_answers(component), name=REGISTRY, log_file=log_file(state_dir),
               timeout=READY_TIMEOUT_S)
    return process


def registry_answers(component: ComponentState, timeout: float = 2.0) -> bool:
    if component.credentials is None:
        return False
    url = f"http://{HOST}:{component.port}/v2/"
    with requests.Session() as session:
        session.trust_env = False  # a proxy from the environment must not see loopback traffic
        try:
            anonymous = session.get(url, timeout=timeout)
            authenticated = session.get(
                url, auth=(component.credentials.username, component.credentials.password), timeout=timeout
            )
        except requests.RequestException:
            return False
    return anonymous.status_code == 401 and authenticated.status_code == 200
