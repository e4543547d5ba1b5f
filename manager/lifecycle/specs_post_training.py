"""Configs and specs of the post-training services (inference image builder, serving): pure functions."""

from __future__ import annotations

from flops_utils.mqtt_catalogue import BuildResult
from flops_utils.service_config import BuilderConfig, ServingConfig
from flops_utils.token_access import serving_guard_environment
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.specs import SERVING_PORT, ProjectFacts
from orchestrator_adapters.base import Endpoint, PortSpec, Resources, ServiceKind, ServiceSpec


def model_builder_config(
    facts: ProjectFacts, settings: LifecycleSettings, repo_url: str, model_uri: str, build: BuildResult
) -> BuilderConfig:
    """The inference image of the trained model."""
    return BuilderConfig(
        project_id=facts.project_id,
        mqtt=facts.mqtt,
        instance_name="model-builder",
        repo_url=repo_url,
        repo_access=settings.repo_access.for_owner(facts.customer),
        flavor=facts.sla.ml_model_flavor,
        cache_dir=str(settings.cache_dir),
        mode="oci",
        registry=settings.registry,
        task="model_image",
        model_uri=model_uri,
        tracking_uri=facts.tracking_url,
        tracking_token=facts.tracking_token,
        tracking_ca_pem=facts.tracking_ca_pem,
        base_image=build.aggregator_image or build.learner_image,  # the aggregator's holds MLflow
        platforms=list(facts.sla.supported_platforms),
    )


def serving_config(
    facts: ProjectFacts, settings: LifecycleSettings, model_uri: str, endpoint: Endpoint
) -> ServingConfig:
    return ServingConfig(
        project_id=facts.project_id,
        mqtt=facts.mqtt,
        instance_name="serving",
        model_uri=model_uri,
        tracking_uri=facts.tracking_url,
        tracking_token=facts.tracking_token,
        tracking_ca_pem=facts.tracking_ca_pem,
        bind_host=facts.bind_host,
        port=endpoint.port,
        access_token_sha256=settings.tracking_access.digests(facts.customer),
    )


def model_image_serving_spec(
    image: str, endpoint: Endpoint, bind_host: str, resources: Resources, token_digests: list[str]
) -> ServiceSpec:
    """The inference image serves its model by itself (MLflow's scoring server behind the token guard, which
    lets in the holders of ``token_digests``' tokens, or anyone when there are none: access control is off)."""
    return ServiceSpec(
        name="serving",
        kind=ServiceKind.SERVING,
        config={},
        image=image,
        environment={
            "UVICORN_HOST": bind_host,
            "UVICORN_PORT": str(endpoint.port),
            **serving_guard_environment(token_digests),
        },
        resources=resources,
        ports=(PortSpec(SERVING_PORT.name, endpoint.port),),
    )
