"""``flops-manager``: load settings, connect the database, start the lifecycle, serve the REST API (waitress or TLS)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from manager.api import TokenAuth, create_api
from manager.api_server import make_server
from manager.settings import CONFIG_PATH_ENV, ManagerSettings, SettingsError, load_settings
from manager.storage import MongoProjectStore, StorageUnavailable

log = logging.getLogger("flops.manager")

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flops-manager", description="The FLOps manager: REST API and lifecycle.")
    parser.add_argument("--config", help=f"manager settings (JSON); default: ${CONFIG_PATH_ENV}, then FLOPS_* env")
    parser.add_argument("--host", help="override the bind address")
    parser.add_argument("--port", type=int, help="override the port (0: any free port)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.host is not None or args.port is not None:
            overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
            settings = ManagerSettings.model_validate({**settings.model_dump(), **overrides})
        auth = TokenAuth(settings.customer_tokens, settings.admin_token)
    except (SettingsError, ValueError) as error:
        print(f"flops-manager: {error}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return serve(settings, auth)


def serve(settings: ManagerSettings, auth: TokenAuth) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    store = MongoProjectStore(settings.mongo_uri, settings.database, timeout_s=settings.db_timeout_s)
    try:
        store.connect()
    except StorageUnavailable as error:
        print(f"flops-manager: {error}", file=sys.stderr)
        return EXIT_CONFIG
    from manager.lifecycle import build_lifecycle  # heavy (MQTT, adapters): only when actually serving

    lifecycle = build_lifecycle(settings, store)
    try:
        server = make_server(create_api(lifecycle, store, auth, settings), settings)
    except OSError as error:
        store.close()
        print(f"flops-manager: cannot listen on {settings.host}:{settings.port}: {error.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    if not settings.mlflow_auth:
        log.warning(
            "mlflow_auth is off: every customer's MLflow server (runs, models, artifacts) is open to "
            "anyone who can reach it; turn it on outside development"
        )
    if not settings.mlflow_tls:
        log.warning("mlflow_tls is off: tokens, runs and models cross the network to MLflow in clear")
    if not settings.data_auth:
        log.warning("data_auth is off: data servers take reads, writes and deletes from anyone, unencrypted")
    if not settings.flower_tls:
        log.warning("flower_tls is off: models and updates cross Flower links unencrypted and unauthenticated")
    lifecycle.start()
    previous = {signum: signal.signal(signum, _stop_serving) for signum in (signal.SIGTERM, signal.SIGINT)}
    if server.scheme == "http":
        log.warning(
            "the API speaks plain HTTP: bearer tokens cross the network in clear; set tls_cert_file "
            "and tls_key_file (the suite does) outside development"
        )
    log.info("FLOps manager serving on %s://%s:%s (API docs at /openapi)", server.scheme, settings.host, server.port)
    try:
        server.run()
    finally:
        log.info("FLOps manager stopping")
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.close()
        lifecycle.close()
        store.close()
    return 0


def _stop_serving(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # waitress' run loop turns this into an orderly return


if __name__ == "__main__":
    sys.exit(main())
