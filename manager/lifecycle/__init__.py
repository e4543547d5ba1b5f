"""Project lifecycle: the manager's core behind the REST API."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.data_access import DataAccess
from manager.lifecycle.service import LifecycleService
from manager.lifecycle.tracking_access import TrackingAccess
from manager.repo_policy import repo_access_rules
from manager.security.config_vault import CONFIG_PATH
from manager.security.tracking_pki import TrackingPki
from manager.storage.base import ProjectStore

if TYPE_CHECKING:
    from manager.settings import ManagerSettings

__all__ = ["LifecycleService", "LifecycleSettings", "build_lifecycle", "lifecycle_settings"]

TIMEOUT_FIELDS = {f.name for f in dataclasses.fields(LifecycleSettings) if f.name.endswith("_s")}


def lifecycle_settings(settings: ManagerSettings) -> LifecycleSettings:
    unknown = set(settings.lifecycle) - TIMEOUT_FIELDS
    if unknown:
        raise ValueError(f"unknown lifecycle settings {sorted(unknown)}; known: {sorted(TIMEOUT_FIELDS)}")
    adapters = {name: dict(values) for name, values in settings.adapter_settings.items()}
    adapters.setdefault("local", {}).setdefault("state_dir", str(Path(settings.state_dir) / "local-adapter"))
    pki = TrackingPki(Path(settings.state_dir) / "pki")  # one object: the CA is made once
    return LifecycleSettings(
        mqtt=settings.mqtt,
        mqtt_project_credentials=settings.mqtt_project_credentials,
        flower_tls=settings.flower_tls,
        tracking_pki=pki if settings.mlflow_tls else None,
        data_access=DataAccess(pki) if settings.data_auth else None,
        start_adapter_at_start=True,
        tracking_access=TrackingAccess.from_tokens(
            settings.mlflow_auth, settings.admin_token, settings.customer_tokens
        ),
        state_dir=Path(settings.state_dir),
        cache_dir=Path(settings.cache_dir),
        orchestrator=settings.orchestrator,
        adapter_settings=adapters,  # type: ignore[arg-type]
        registry=settings.registry,
        repo_base_dir=Path(settings.repo_base_dir or Path.cwd()),
        repo_access=repo_access_rules(settings),
        images=dict(settings.images),
        tracking_store=settings.tracking_store,
        configs_by_reference=None
        if settings.configs_by_reference is None
        else frozenset(settings.configs_by_reference),
        config_url=settings.public_url + CONFIG_PATH,
        mqtt_client_id=manager_client_id(settings.mongo_uri, settings.database),
        quotas=settings.quotas,
        config_ca_file=Path(settings.tls_ca_file) if settings.tls_ca_file and settings.tls_cert_file else None,
        **{name: float(value) for name, value in settings.lifecycle.items()},  # type: ignore[arg-type]
    )


def manager_client_id(mongo_uri: str, database: str) -> str:
    """The manager's MQTT client id: the same for every manager process of one project store, so a
    restarted manager resumes the broker session that kept its reports while it was away."""
    return "flops-mgr-" + hashlib.sha256(f"{mongo_uri}\0{database}".encode()).hexdigest()[:12]


def build_lifecycle(settings: ManagerSettings, store: ProjectStore) -> LifecycleService:
    """Build the lifecycle from the manager's settings (no I/O; call ``start()`` next)."""
    return LifecycleService(lifecycle_settings(settings), store)
