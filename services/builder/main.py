"""The builder service (``flops-builder`` / ``python -m services.builder.main``).

Reads :class:`BuilderConfig` with ``load_config`` and reports over MQTT:
``ServiceStatus(started)``, one ``BuildStep`` per step, one ``BuildResult``, then
``ServiceStatus(succeeded)`` and exit 0 -- or ``ServiceStatus(failed)`` with a
one-line reason and exit 1. ``mode="local"`` runs :func:`services.builder.local.build_local`;
``mode="oci"`` runs ``services.builder.oci.build_oci(config, report)`` (same signature).
``task="model_image"`` packages a trained model instead and reports one ``ModelImageBuilt``.
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

from flops_utils.message_text import one_line
from flops_utils.mqtt_catalogue import BuildResult, FlopsMessage, ModelImageBuilt, ReportedState, ServiceStatus
from flops_utils.mqtt_link import BrokerUnavailable, MqttLink
from flops_utils.service_config import BuilderConfig, load_config, log_level
from flops_utils.token_access import use_tracking_access
from services.builder.errors import BuildError
from services.builder.local import Reporter, build_local

log = logging.getLogger("flops.builder")

SERVICE = "builder"
EXIT_OK, EXIT_FAILED, EXIT_NO_CONFIG, EXIT_SIGNAL = 0, 1, 2, 143


class _Stopped(BaseException):
    """SIGTERM: unwind so child processes (git, pip) are killed and temp folders removed."""


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(f"signal {signum}")


def _oci_module() -> Any:
    try:
        return importlib.import_module("services.builder.oci")
    except ImportError as error:
        raise BuildError(f"OCI builds are not available in this installation ({error})") from None


def run_build(config: BuilderConfig, report: Reporter) -> BuildResult | ModelImageBuilt:
    """Dispatch on ``config.task`` and ``config.mode``; raises :class:`BuildError` on failure."""
    if config.task == "model_image":
        return build_trained_model_image(config, report)
    if config.mode == "local":
        return build_local(config, report)
    result: BuildResult = _oci_module().build_oci(config, report)
    return result


def build_trained_model_image(config: BuilderConfig, report: Reporter) -> ModelImageBuilt:
    """Package ``config.model_uri`` as an inference image in the registry and report it."""
    if config.mode != "oci" or config.registry is None:
        raise BuildError("an inference image needs an OCI build with a registry (mode 'oci' and registry settings)")
    if not config.model_uri:
        raise BuildError("an inference image needs model_uri: training reported no model")
    use_tracking_access(config.tracking_token, config.tracking_ca_pem)
    oci = _oci_module()
    image = config.image_name or f"{oci.naming.repo_slug(config.repo_url)}-model"
    built = oci.build_model_image(
        config.model_uri,
        config.tracking_uri,
        config.registry,
        image=image,
        base_image=config.base_image,
        project_id=config.project_id,
        report=report,
        platforms=config.platforms,
    )
    message = ModelImageBuilt(
        project_id=config.project_id,
        sender=config.instance_name or SERVICE,
        image=built.reference,
        pinned=built.pinned,
        digest=built.digest,
        model_uri=built.model_uri,
        run_id=built.run_id,
        run_tagged=built.run_tagged,
        cached=built.cached,
        size_bytes=built.image.size_bytes,
        total_seconds=built.total_seconds,
    )
    report(message)
    return message


def _status(config: BuilderConfig, state: ReportedState, detail: str = "") -> ServiceStatus:
    return ServiceStatus(
        project_id=config.project_id,
        sender=config.instance_name or SERVICE,
        service=SERVICE,
        state=state,
        detail=one_line(detail) if detail.strip() else "",  # one_line('') says 'unknown error'
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
        what = f"image of {config.model_uri}" if config.task == "model_image" else config.repo_url
        publish(_status(config, ReportedState.STARTED, f"{config.mode} build of {what}"))
        try:
            run_build(config, publish)
        except BuildError as error:
            publish(_status(config, ReportedState.FAILED, str(error)))
        except _Stopped:
            publish(_status(config, ReportedState.FAILED, "builder stopped by SIGTERM"))
            code = EXIT_SIGNAL
        except Exception as error:
            log.exception("build crashed")
            publish(_status(config, ReportedState.FAILED, f"builder crashed: {type(error).__name__}: {error}"))
        else:
            publish(_status(config, ReportedState.SUCCEEDED))
            code = EXIT_OK
    finally:
        link.flush(timeout=10)
        link.close()
    return code


def main() -> None:
    logging.basicConfig(level=log_level(), format="%(asctime)s builder %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(run())


if __name__ == "__main__":
    main()
