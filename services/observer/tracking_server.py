"""Runs the customer's MLflow tracking server (SQL backend + proxied artifact store).

A thin wrapper so the tracking server, like every FLOps service, takes one typed
config document instead of command-line strings. It replaces itself with
``mlflow server`` (exec), so the adapter supervises MLflow directly. With token digests
in the config, MLflow runs behind :mod:`services.observer.mlflow_gate`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flops_utils.service_config import TrackingConfig, load_config
from services.observer.mlflow_gate import GATE_APP_NAME, REALM_ENV, TOKEN_DIGESTS_ENV


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
        *(["--app-name", GATE_APP_NAME] if config.access_token_sha256 else []),
    ]  # fmt: skip


def mlflow_environment(config: TrackingConfig, base: dict[str, str]) -> dict[str, str]:
    env = dict(base, PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}")
    # MLflow 3 starts a job runner and seven huey consumers (~1.9 GB) for GenAI jobs FLOps never submits.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if config.access_token_sha256:
        env[TOKEN_DIGESTS_ENV] = ",".join(config.access_token_sha256)
        env[REALM_ENV] = f"FLOps MLflow of {config.customer}"
    else:
        print(f"warning: the MLflow server of {config.customer} is open to anyone who reaches it", file=sys.stderr)
    return env


def _prepare_local_paths(config: TrackingConfig) -> None:
    if config.backend_store_uri.startswith("sqlite:///"):
        Path(config.backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in config.artifacts_destination:
        Path(config.artifacts_destination).mkdir(parents=True, exist_ok=True)


def main() -> None:
    config = load_config(TrackingConfig)
    _prepare_local_paths(config)
    command = mlflow_command(config)
    env = mlflow_environment(config, dict(os.environ))
    sys.stdout.flush()
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
