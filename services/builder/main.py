"""The builder service (``flops-builder`` / ``python -m services.builder.main``).

Reads :class:`BuilderConfig` with ``load_config`` and reports over MQTT:
``ServiceStatus(started)``, one ``BuildStep`` per step, one ``BuildResult``, then
``ServiceStatus(succeeded)`` and exit 0 -- or ``ServiceStatus(failed)`` with a
one-line reason and exit 1. ``mode="local"`` runs :func:`services.builder.local.build_local`;
``mode="oci"`` runs ``services.builder.oci.build_oci(config, report)`` (same signature).
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import uuid
from collections.abc import Mapping
from types import FrameType
from typing import Any

from flops_utils.mqtt_catalogue import BuildResult, FlopsMessage, ServiceState, ServiceStatus
from flops_utils.mqtt_link import BrokerUnavailable, MqttLink
from flops_utils.service_config import BuilderConfig, load_config
from services.builder.errors import BuildError, one_line
from services.builder.local import Reporter, build_local

log = logging.getLogger("flops.builder")

SERVICE = "builder"
EXIT_OK, EXIT_FAILED, EXIT_NO_CONFIG, EXIT_SIGNAL = 0, 1, 2, 143


class _Stopped(BaseException):
    """SIGTERM: unwind so child processes (git, pip) are killed and temp folders removed."""


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(f"signal {signum}")


def run_build(config: BuilderConfig, report: Reporter) -> BuildResult:
    """Dispatch on ``config.mode``; raises :class:`BuildError` on failure."""
    if config.mode == "local":
        return build_local(config, report)
    try:
        module: Any = importlib.import_module("services.builder.oci")
    except ImportError as error:
        raise BuildError(f"OCI builds are not available in this installation ({error})") from None
    result: BuildResult = module.build_oci(config, report)
    return result


def _status(config: BuilderConfig, state: ServiceState, detail: str = "") -> ServiceStatus:
    return ServiceStatus(
        project_id=config.project_id,
        sender=config.instance_name or SERVICE,
        service=SERVICE,
        state=state,
        detail=one_line(detail),
    )


def run(environ: Mapping[str, str] | None = None) -> int:
    """The whole service; returns the exit code."""
    try:
        config = load_config(BuilderConfig, dict(environ) if environ is not None else None)
    except Exception as error:  # no config means no MQTT settings: stderr is all we have
        print(f"builder: invalid configuration: {one_line(str(error))}", file=sys.stderr)
        return EXIT_NO_CONFIG
    link = MqttLink(config.mqtt, client_id=f"builder-{config.project_id}-{uuid.uuid4().hex[:8]}")
    try:
        link.connect(timeout=30)
    except BrokerUnavailable as error:
        print(f"builder: {one_line(str(error))}", file=sys.stderr)
        return EXIT_FAILED

    def publish(message: FlopsMessage) -> None:
        log.info("%s", message.model_dump_json(exclude={"project_id", "sent_at"}))
        link.publish(message)

    code = EXIT_FAILED
    try:
        publish(_status(config, ServiceState.STARTED, f"{config.mode} build of {config.repo_url}"))
        try:
            run_build(config, publish)
        except BuildError as error:
            publish(_status(config, ServiceState.FAILED, str(error)))
        except _Stopped:
            publish(_status(config, ServiceState.FAILED, "builder stopped by SIGTERM"))
            code = EXIT_SIGNAL
        except Exception as error:
            log.exception("build crashed")
            publish(_status(config, ServiceState.FAILED, f"builder crashed: {type(error).__name__}: {error}"))
        else:
            publish(_status(config, ServiceState.SUCCEEDED))
            code = EXIT_OK
    finally:
        link.flush(timeout=10)
        link.close()
    return code


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s builder %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(run())


if __name__ == "__main__":
    main()
