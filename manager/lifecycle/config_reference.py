"""Specs whose configuration stays with the manager (see :mod:`manager.security.config_vault`)."""

from __future__ import annotations

import dataclasses

from flops_utils.config_fetch import reference_environment
from manager.lifecycle.context import LifecycleSettings
from manager.security.config_vault import ConfigVault
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import OrchestratorAdapter, ServiceSpec


def delivers_by_reference(adapter: OrchestratorAdapter, settings: LifecycleSettings) -> bool:
    """Configs go by reference to orchestrators named in ``configs_by_reference`` or, when that is not set,
    to those whose own delivery is not private (the adapter's capabilities say); only with ``config_url``."""
    chosen = settings.configs_by_reference
    wanted = not adapter.capabilities.private_configs if chosen is None else adapter.name in chosen
    return wanted and bool(settings.config_url)


def by_reference(
    spec: ServiceSpec, *, owner: str, adapter: OrchestratorAdapter, settings: LifecycleSettings, store: ProjectStore
) -> ServiceSpec:
    """``spec`` as is, or, when configs go by reference, with only where to fetch its config."""
    if not delivers_by_reference(adapter, settings) or not settings.config_url:
        return spec
    reference = ConfigVault(store, settings.secret_box).deposit(owner, spec.config)
    url = f"{settings.config_url.rstrip('/')}/{reference.config_id}"
    ca_pem = settings.config_ca_file.read_text() if settings.config_ca_file else None
    environment = {**spec.environment, **reference_environment(url, reference.token, ca_pem)}
    return dataclasses.replace(spec, config={}, environment=environment)
