"""The suite's OCI registry: Debian's docker-registry, filesystem storage, htpasswd auth, TLS with the suite's CA."""

from __future__ import annotations

import logging
import os
import re
import secrets
import ssl
import subprocess
from pathlib import Path
from typing import Any

import urllib3
import yaml

from manager.suite.processes import ProcessRecord, SuiteError, find_binary, launch, run_tool, wait_ready
from manager.suite.state import HOST, REGISTRY, ComponentState
from manager.suite.tls import suite_server_tls

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
GC_TIMEOUT_S = 3600.0
_GC_SUMMARY = re.compile(r"(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion")


def log_file(state_dir: Path) -> Path:
    return state_dir / "logs" / f"{REGISTRY}.log"


def write_config(state_dir: Path, component: ComponentState, tls: bool = True) -> Path:
    """Write htpasswd and the registry's config; ``tls=False`` (development only) serves plain HTTP."""
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
    http: dict[str, Any] = {"addr": f"{HOST}:{component.port}", "secret": secrets.token_hex(16)}
    if tls:
        files = suite_server_tls(state_dir)
        http["tls"] = {"certificate": str(files.cert_file), "key": str(files.key_file), "minimumtls": "tls1.2"}
        component.ca_pem = files.ca_pem
    else:
        component.ca_pem = None
        log.warning("the suite's registry serves plain HTTP (development only)")
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": http,
        "auth": {"htpasswd": {"realm": "flops-registry", "path": str(htpasswd)}},
    }
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.chmod(path, 0o600)
    return path


def _binary() -> str:
    return find_binary("docker-registry", "install the Debian package 'docker-registry' (make system-packages)")


def start(state_dir: Path, component: ComponentState, tls: bool = True) -> ProcessRecord:
    """Start the registry; return once ``/v2/`` refuses anonymous and accepts our login."""
    binary = _binary()
    config = write_config(state_dir, component, tls)
    process = launch([binary, "serve", str(config)], log_file=log_file(state_dir), cwd=state_dir, name=REGISTRY)
    wait_ready(
        process,
        lambda: registry_answers(component),
        name=REGISTRY,
        log_file=log_file(state_dir),
        timeout=READY_TIMEOUT_S,
    )
    return process


def base_url(component: ComponentState) -> str:
    return f"{'https' if component.ca_pem else 'http'}://{HOST}:{component.port}"


def registry_answers(component: ComponentState, timeout: float = 2.0) -> bool:
    """``/v2/`` refuses anonymous and accepts our login (over TLS verified with the suite's CA when it has one)."""
    if component.credentials is None:
        return False
    context = ssl.create_default_context(cadata=component.ca_pem) if component.ca_pem else None
    # A plain pool manager: a proxy from the environment must not see loopback traffic.
    pool = urllib3.PoolManager(ssl_context=context, timeout=timeout, retries=False)
    url = f"{base_url(component)}/v2/"
    login = urllib3.make_headers(basic_auth=f"{component.credentials.username}:{component.credentials.password}")
    try:
        anonymous = pool.request("GET", url)
        authenticated = pool.request("GET", url, headers=login)
    except urllib3.exceptions.HTTPError:
        return False
    finally:
        pool.clear()
    return anonymous.status == 401 and authenticated.status == 200


def garbage_collect(state_dir: Path) -> str:
    """Free the blobs no manifest names any more (``docker-registry garbage-collect``); the registry must be down.

    Returns the tool's summary: how many blobs it kept and deleted.
    """
    config = state_dir / REGISTRY / "config.yml"
    if not config.is_file():
        raise SuiteError(f"no registry config at {config}: start the suite with its registry first")
    try:
        done = subprocess.run(
            [_binary(), "garbage-collect", str(config)], capture_output=True, text=True, timeout=GC_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SuiteError(f"registry garbage-collect failed: {error}") from None
    output = done.stdout + "\n" + done.stderr
    with log_file(state_dir).open("a") as log:
        log.write(output)
    if done.returncode != 0:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        raise SuiteError(f"registry garbage-collect failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
    found = _GC_SUMMARY.search(output)
    if found is None:
        return "garbage-collect ran (no summary line)"
    marked, deleted, manifests = found.groups()
    return f"{deleted} blobs deleted, {marked} kept ({manifests} manifests eligible for deletion)"
