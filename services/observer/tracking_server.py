"""Runs the customer's MLflow tracking server (SQL backend + proxied artifact store).

A thin wrapper so the tracking server, like every FLOps service, takes one typed
config document instead of command-line strings. It replaces itself with
``mlflow server`` (exec), so the adapter supervises MLflow directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flops_utils.service_config import TrackingConfig, load_config


def mlflow_command(config: TrackingConfig) -> list[str]:
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    return [
        mlflow, "server",
        "--backend-store-uri", config.backend_store_uri,
        "--artifacts-destination", config.artifacts_destination,
        "--serve-artifacts",
        "--host", config.bind_host,
        "--port", str(config.port),
        "--workers", str(config.workers),
        "--allowed-hosts", "*",
    ]  # fmt: skip


def _prepare_local_paths(config: TrackingConfig) -> None:
    if config.backend_store_uri.startswith("sqlite:///"):
        Path(config.backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in config.artifacts_destination:
        Path(config.artifacts_destination).mkdir(parents=True, exist_ok=True)


def main() -> None:
    config = load_config(TrackingConfig)
    _prepare_local_paths(config)
    command = mlflow_command(config)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    sys.stdout.flush()
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
