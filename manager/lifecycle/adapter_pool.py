"""The manager's orchestrator adapters, made and started by name when first needed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from manager.lifecycle.context import LifecycleSettings
from orchestrator_adapters.base import AdapterError, OrchestratorAdapter
from orchestrator_adapters.registry import adapter_class, create_adapter

log = logging.getLogger(__name__)


class AdapterPool:
    def __init__(self, settings: LifecycleSettings, adapters: Mapping[str, OrchestratorAdapter] | None = None) -> None:
        """``adapters`` (started, by name) are used instead of ones made from settings."""
        self.settings = settings
        self._adapters: dict[str, OrchestratorAdapter] = dict(adapters or {})
        self._lock = threading.Lock()

    def get(self, name: str | None = None) -> OrchestratorAdapter:
        """The adapter ``name`` (default: the settings' orchestrator), started on first use."""
        name = name or self.settings.orchestrator
        with self._lock:
            if name not in self._adapters:
                settings = dict(self.settings.adapter_settings.get(name, {}))
                access = self.settings.data_access
                # Adapters that run the nodes' data servers themselves get their certificate and token key.
                runs_data_servers = adapter_class(name).capabilities.runs_data_servers
                if access is not None and runs_data_servers and settings.get("data_security") is None:
                    host = str(settings.get("host") or "127.0.0.1")
                    settings["data_security"] = access.server_security(host).model_dump()
                adapter = create_adapter(name, settings)
                adapter.start()
                self._adapters[name] = adapter
            return self._adapters[name]

    def start_default(self) -> None:
        """Nodes' data servers run before any project (the local adapter starts them), so data can come first."""
        try:
            self.get()
        except AdapterError as error:
            log.warning(
                "the %s orchestrator did not start: %s; retrying when it is first needed",
                self.settings.orchestrator,
                error,
            )

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
