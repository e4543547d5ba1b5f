"""Specs whose configuration stays with the manager (see :mod:`manager.config_vault`)."""

from __future__ import annotations

import dataclasses

from flops_utils.config_fetch import reference_environment
from manager.config_vault import ConfigVault
from manager.lifecycle.context import LifecycleSettings
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import ServiceSpec


def by_reference(
    spec: ServiceSpec, *, owner: str, adapter_name: str, settings: LifecycleSettings, store: ProjectStore
) -> ServiceSpec:
    """``spec`` as is, or, on orchestrators in ``configs_by_reference``, with only where to fetch its config."""
    if adapter_name not in settings.configs_by_reference or not settings.config_url:
        return spec
    reference = ConfigVault(store, settings.secret_box).deposit(owner, spec.config)
    url = f"{settings.config_url.rstrip('/')}/{reference.config_id}"
    ca_pem = settings.config_ca_file.read_text() if settings.config_ca_file else None
    environment = {**spec.environment, **reference_environment(url, reference.token, ca_pem)}
    return dataclasses.replace(spec, config={}, environment=environment)
