"""Project lifecycle: the manager's core behind the REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.service import LifecycleService
from manager.storage.base import ProjectStore

__all__ = ["LifecycleService", "LifecycleSettings", "build_lifecycle"]


def build_lifecycle(settings: Any, store: ProjectStore) -> LifecycleService:
    """Build the lifecycle from the manager's settings (no I/O; call ``start()`` next)."""
    state_dir = Path(settings.state_dir)
    lifecycle_settings = LifecycleSettings(
        mqtt=settings.mqtt,
        state_dir=state_dir,
        cache_dir=Path(getattr(settings, "cache_dir", None) or state_dir / "cache"),
        orchestrator=getattr(settings, "orchestrator", "local"),
        adapter_settings=_adapter_settings(settings, state_dir),
        registry=getattr(settings, "registry", None),
        repo_base_dir=Path(getattr(settings, "repo_base_dir", None) or Path.cwd()),
        images=dict(getattr(settings, "images", {}) or {}),
    )
    return LifecycleService(lifecycle_settings, store)


def _adapter_settings(settings: Any, state_dir: Path) -> dict[str, dict[str, object]]:
    configured = dict(getattr(settings, "adapters", None) or getattr(settings, "adapter_settings", None) or {})
    local = dict(configured.get("local", {}))
    local.setdefault("state_dir", str(state_dir / "local-adapter"))
    configured["local"] = local
    return configured
