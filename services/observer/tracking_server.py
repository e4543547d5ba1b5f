"""Runs the customer's MLflow tracking server (SQL backend + proxied artifact store).

A thin wrapper so the tracking server, like every FLOps service, takes one typed
config document instead of command-line strings. It replaces itself with
``mlflow server`` (exec), so the adapter supervises MLflow directly. With token digests
in the config, MLflow runs behind :mod:`services.observer.mlflow_gate`; with a
certificate, its uvicorn serves HTTPS only.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

from flops_utils.message_text import one_line
from flops_utils.service_config import ServerCertificate, TrackingConfig, load_config
from services.observer.mlflow_gate import GATE_APP_NAME, REALM_ENV, TOKEN_DIGESTS_ENV


def write_tls_files(config: TrackingConfig) -> tuple[Path, Path] | None:
    """The server's certificate and key as files (key mode 0600) for uvicorn; None without TLS."""
    if config.tls is None:
        return None
    return write_certificate_files(config.tls, config.tls_dir)


def write_certificate_files(certificate: ServerCertificate, tls_dir: str | None) -> tuple[Path, Path]:
    """``server.pem`` and ``server.key`` (mode 0600) in ``tls_dir`` (mode 0700; default: a new private temp dir)."""
    directory = Path(tls_dir) if tls_dir else Path(tempfile.mkdtemp(prefix="flops-tls-"))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    cert, key = directory / "server.pem", directory / "server.key"
    cert.write_text(certificate.cert_pem)
    descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(certificate.key_pem)
    return cert, key


def mlflow_command(config: TrackingConfig, tls_files: tuple[Path, Path] | None = None) -> list[str]:
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    https = (
        ["--uvicorn-opts", shlex.join(["--ssl-certfile", str(tls_files[0]), "--ssl-keyfile", str(tls_files[1])])]
        if tls_files is not None
        else []
    )
    return [
        mlflow,
        "server",
        "--backend-store-uri",
        config.backend_store_uri,
        "--artifacts-destination",
        config.artifacts_destination,
        "--serve-artifacts",
        "--host",
        config.bind_host,
        "--port",
        str(config.port),
        "--workers",
        str(config.workers),
        "--allowed-hosts",
        "*",
        *(["--app-name", GATE_APP_NAME] if config.access_token_sha256 else []),
        *https,
    ]


def mlflow_environment(config: TrackingConfig, base: dict[str, str]) -> dict[str, str]:
    env = dict(base, PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}")
    # MLflow 3 starts a job runner and seven huey consumers (~1.9 GB) for GenAI jobs FLOps never submits.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if config.access_token_sha256:
        env[TOKEN_DIGESTS_ENV] = ",".join(config.access_token_sha256)
        env[REALM_ENV] = f"FLOps MLflow of {config.customer}"
    else:
        print(f"warning: the MLflow server of {config.customer} is open to anyone who reaches it", file=sys.stderr)
    if config.tls is None:
        print(f"warning: the MLflow server of {config.customer} speaks plain HTTP", file=sys.stderr)
    return env


def _prepare_local_paths(config: TrackingConfig) -> None:
    if config.backend_store_uri.startswith("sqlite:///"):
        Path(config.backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in config.artifacts_destination:
        Path(config.artifacts_destination).mkdir(parents=True, exist_ok=True)


def ensure_database(backend_store_uri: str) -> bool:
    """Create the PostgreSQL database the URI names when it is missing (MLflow creates only tables).

    True when it was created. Connects to the server's ``postgres`` database with the same account.
    """
    if not backend_store_uri.startswith("postgresql"):
        return False
    import sqlalchemy  # MLflow's own dependency; loaded only for a PostgreSQL backend

    url = sqlalchemy.make_url(backend_store_uri)
    if not url.database:
        raise SystemExit(f"the MLflow backend store URI names no database: {url.render_as_string()}")
    engine = sqlalchemy.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            query = sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name")
            if connection.execute(query, {"name": url.database}).first() is not None:
                return False
            quoted = engine.dialect.identifier_preparer.quote(url.database)
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {quoted}"))
            return True
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = one_line(getattr(error, "orig", None) or error)
        raise SystemExit(f"cannot prepare the MLflow database {url.database} at {url.host}: {reason}") from None
    finally:
        engine.dispose()


def main() -> None:
    config = load_config(TrackingConfig)
    _prepare_local_paths(config)
    if ensure_database(config.backend_store_uri):
        print(f"created the MLflow database of {config.customer}", file=sys.stderr)
    command = mlflow_command(config, write_tls_files(config))
    env = mlflow_environment(config, dict(os.environ))
    sys.stdout.flush()
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
