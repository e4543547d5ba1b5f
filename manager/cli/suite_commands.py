"""``flops suite up|down|status|registry-gc``: the local management suite, optionally with a detached flops-manager."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, TextIO

import requests

from flops_utils.process_groups import free_port, port_is_free
from manager.cli.client import CliError
from manager.cli.defaults import (
    MANAGER_CONFIG,
    manager_ca_file,
    manager_url,
    read_suite_manager_config,
    suite_manager_dir,
)
from manager.suite import SuiteEndpoints, SuiteError, collect_registry_garbage, start_suite, stop_suite, suite_status
from manager.suite.processes import ProcessRecord, is_running, launch, stop, wait_ready
from manager.suite.tls import suite_server_tls

MANAGER = "flops-manager"
PROCESS_FILE = "process.json"
LOG_FILE = "manager.log"
MANAGER_READY_TIMEOUT_S = 90.0


def suite_up(state_dir: Path, *, registry: bool, with_manager: bool, out: TextIO, tls: bool = True) -> int:
    if not tls:
        out.write(
            "warning: the broker, the registry and the manager's API listen without TLS; "
            "use this for development only\n"
        )
    try:
        endpoints = start_suite(state_dir, registry=registry, tls=tls)
    except SuiteError as error:
        raise CliError(f"cannot start the suite: {error}") from None
    scheme = "mqtts" if endpoints.mqtt.tls else "mqtt"
    out.write(f"mosquitto: {scheme}://{endpoints.mqtt.host}:{endpoints.mqtt.port} (user {endpoints.mqtt.username})\n")
    out.write(f"secantusdb: {endpoints.mongo_uri}\n")
    if endpoints.registry is not None:
        registry_scheme = "https" if endpoints.registry.ca_pem else "http"
        out.write(f"registry: {registry_scheme}://{endpoints.registry.address} (user {endpoints.registry.username})\n")
    if with_manager:
        url = start_manager(state_dir, endpoints)
        out.write(f"manager: {url} (admin token in {suite_manager_dir(state_dir) / MANAGER_CONFIG})\n")
    out.write(f"credentials: {Path(endpoints.state_dir) / 'endpoints.json'}\n")
    return 0


def suite_down(state_dir: Path, out: TextIO) -> int:
    stop_manager(state_dir)
    stop_local_services(state_dir)
    try:
        stop_suite(state_dir)
    except SuiteError as error:
        raise CliError(f"cannot stop the suite: {error}") from None
    out.write("suite stopped\n")
    return 0


def suite_status_report(state_dir: Path, out: TextIO) -> int:
    status: dict[str, bool] = dict(suite_status(state_dir))
    record = _manager_process(state_dir)
    config = read_suite_manager_config(state_dir)
    if record is not None or config is not None:
        status["manager"] = record is not None and is_running(record) and config is not None and _healthy(config)
    for name, up in status.items():
        out.write(f"{name}: {'up' if up else 'down'}\n")
    return 0 if status and all(status.values()) else 1


def start_manager(state_dir: Path, endpoints: SuiteEndpoints) -> str:
    """Start flops-manager detached with a generated config (reused across restarts); wait for /health."""
    manager_dir = suite_manager_dir(state_dir)
    manager_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = _manager_process(state_dir)
    config = read_suite_manager_config(state_dir)
    if record is not None and is_running(record) and config is not None and _healthy(config):
        return manager_url(config)
    if record is not None:
        stop(record, name=MANAGER)
    config = _manager_config(config, endpoints, manager_dir)
    config_path = manager_dir / MANAGER_CONFIG
    _write_private_json(config_path, config)
    log_file = manager_dir / LOG_FILE
    record = launch(
        [sys.executable, "-m", "manager.app", "--config", str(config_path)],
        log_file=log_file,
        cwd=manager_dir,
        name=MANAGER,
    )
    _write_private_json(manager_dir / PROCESS_FILE, record.as_dict())
    try:
        wait_ready(record, lambda: _healthy(config), name=MANAGER, log_file=log_file, timeout=MANAGER_READY_TIMEOUT_S)
    except SuiteError as error:
        raise CliError(str(error)) from None
    return manager_url(config)


def stop_manager(state_dir: Path) -> None:
    record = _manager_process(state_dir)
    if record is None:
        return
    try:
        stop(record, name=MANAGER, timeout=45.0)
    except SuiteError as error:
        raise CliError(str(error)) from None
    (suite_manager_dir(state_dir) / PROCESS_FILE).unlink(missing_ok=True)


def stop_local_services(state_dir: Path) -> None:
    """Stop what the suite manager's local orchestrator started (data servers, MLflow, services)."""
    config = read_suite_manager_config(state_dir)
    if config is None or config.get("orchestrator", "local") != "local":
        return
    from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings

    manager_state = Path(str(config.get("state_dir", suite_manager_dir(state_dir) / "state")))
    configured = (config.get("adapter_settings") or {}).get("local", {}).get("state_dir")
    adapter_state = Path(configured) if configured else manager_state / "local-adapter"
    if adapter_state.exists():
        LocalAdapter(LocalAdapterSettings(state_dir=str(adapter_state))).stop_everything()


def _manager_config(previous: dict[str, Any] | None, endpoints: SuiteEndpoints, manager_dir: Path) -> dict[str, Any]:
    """Keep what the user (or an earlier run) chose; refresh the suite's addresses and credentials."""
    config = dict(previous or {})
    config.setdefault("host", "127.0.0.1")
    config.setdefault("admin_token", secrets.token_urlsafe(24))
    config.setdefault("customer_tokens", {})
    config.setdefault("database", "flops")
    config.setdefault("state_dir", str(manager_dir / "state"))
    config.setdefault("repo_base_dir", os.getcwd())  # relative ml_repo_url paths: where the suite was started
    port = config.get("port")
    if not isinstance(port, int) or not port or not port_is_free(config["host"], port):
        config["port"] = free_port(config["host"])
    for key in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        config.pop(key, None)
    if endpoints.mqtt.tls:  # secure by default: the API speaks HTTPS with the suite's certificate, like the broker
        tls = suite_server_tls(Path(endpoints.state_dir))
        config.update(tls_cert_file=str(tls.cert_file), tls_key_file=str(tls.key_file), tls_ca_file=str(tls.ca_file))
    config["mqtt"] = endpoints.mqtt.model_dump(mode="json")
    config["mongo_uri"] = endpoints.mongo_uri
    if endpoints.registry is not None:
        config["registry"] = endpoints.registry.settings().model_dump(mode="json", exclude_none=True)
    return config


def _manager_process(state_dir: Path) -> ProcessRecord | None:
    try:
        data = json.loads((suite_manager_dir(state_dir) / PROCESS_FILE).read_text())
        return ProcessRecord(pid=int(data["pid"]), start_ticks=int(data["start_ticks"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _healthy(config: dict[str, Any]) -> bool:
    try:
        verify: str | bool = manager_ca_file(config) or True
        return requests.get(manager_url(config) + "/health", timeout=3, verify=verify).status_code == 200
    except requests.RequestException:
        return False


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(scratch, path)


def suite_registry_gc(state_dir: Path, out: TextIO) -> int:
    """Blobs of images the cache prune deleted are freed only by the registry's offline garbage-collect."""
    try:
        summary = collect_registry_garbage(state_dir)
    except SuiteError as error:
        raise CliError(f"cannot collect the registry's garbage: {error}") from None
    out.write(f"registry garbage-collect: {summary}; the registry is up again\n")
    return 0
