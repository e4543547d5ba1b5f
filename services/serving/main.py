"""Serves a trained model from MLflow with MLflow's own scoring protocol.

``/invocations`` and ``/ping`` come from ``mlflow.pyfunc.scoring_server``, wrapped by
:class:`services.serving.guard.ServingGuard` (a token for ``/invocations``, the input
width checked against the model's); running
its ASGI app in-process with uvicorn avoids depending on a ``uvicorn`` binary on
PATH (the cause of an earlier "exit 127" serving failure).
"""

from __future__ import annotations

import os

from flops_utils.mqtt_catalogue import ReportedState, ServiceStatus
from flops_utils.mqtt_link import BrokerUnavailable, MqttLink
from flops_utils.service_config import ServingConfig, load_config
from flops_utils.token_access import use_tracking_access


def main() -> None:
    config = load_config(ServingConfig)
    os.environ["MLFLOW_TRACKING_URI"] = config.tracking_uri
    os.environ["MLFLOW_REGISTRY_URI"] = config.tracking_uri  # models:/ URIs: never an inherited registry
    use_tracking_access(config.tracking_token, config.tracking_ca_pem)
    import uvicorn

    from services.serving.guard import guarded_model_app

    app = guarded_model_app(config.model_uri, config.access_token_sha256)
    sender = config.instance_name or "serving"
    try:
        link = MqttLink(config.mqtt).connect(timeout=10)
        link.publish(
            ServiceStatus(
                project_id=config.project_id,
                sender=sender,
                service="serving",
                state=ReportedState.RUNNING,
                detail=f"serving {config.model_uri}",
            )
        )
        link.flush(5)
        link.close()
    except BrokerUnavailable:
        pass  # serving does not depend on the broker; the manager polls /ping
    uvicorn.run(app, host=config.bind_host, port=config.port, log_level="warning")


if __name__ == "__main__":
    main()
