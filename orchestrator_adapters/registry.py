"""Choose an orchestrator adapter by name: ``create_adapter("local", {"state_dir": ...})``.

Each adapter class takes one pydantic settings model as its ``settings`` argument; the
registry builds that model from a plain dict (so the manager's configuration stays JSON)
and imports the non-default adapters only when asked for, so their client libraries
are not loaded by a manager that does not use them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import typing

from pydantic import BaseModel, ValidationError

from orchestrator_adapters.base import AdapterError, OrchestratorAdapter

# name -> (module, class)
ADAPTERS: dict[str, tuple[str, str]] = {
    "local": ("orchestrator_adapters.local", "LocalAdapter"),
    "container": ("orchestrator_adapters.container", "ContainerAdapter"),
    "kubernetes": ("orchestrator_adapters.kubernetes", "KubernetesAdapter"),
    "oakestra": ("orchestrator_adapters.oakestra", "OakestraAdapter"),
}


def available_adapters() -> list[str]:
    """Names whose adapter module is present in this installation."""
    return [name for name, (module, _) in ADAPTERS.items() if importlib.util.find_spec(module) is not None]


def _settings_model(adapter_class: type[OrchestratorAdapter]) -> type[BaseModel]:
    """The pydantic model the adapter's ``__init__(settings: Model)`` expects."""
    init = adapter_class.__init__
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall through to the error below
        hints = {}
    names = [name for name in inspect.signature(init).parameters if name != "self"]
    model = hints.get("settings") or (hints.get(names[0]) if names else None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise AdapterError(f"{adapter_class.__name__} does not declare a pydantic settings model")
    return model


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    return f"{where}: {first['msg']}"


def adapter_class(name: str) -> type[OrchestratorAdapter]:
    """The adapter class registered as ``name`` (its ``capabilities`` can be read before any settings exist)."""
    if name not in ADAPTERS:
        raise AdapterError(f"unknown orchestrator {name!r}; choose one of {', '.join(ADAPTERS)}")
    module_name, class_name = ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AdapterError(f"the {name} orchestrator is not available: {error}") from error
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, OrchestratorAdapter)):
        raise AdapterError(f"the {name} orchestrator is not available: {module_name} has no {class_name}")
    return found


def create_adapter(name: str, settings: dict[str, object]) -> OrchestratorAdapter:
    """A new, not yet started adapter (call ``start()``); raises :class:`AdapterError` with one line."""
    chosen = adapter_class(name)
    model = _settings_model(chosen)
    try:
        parsed = model.model_validate(settings)
    except ValidationError as error:
        raise AdapterError(f"invalid settings for the {name} orchestrator: {_first_error(error)}") from error
    return chosen(parsed)  # type: ignore[call-arg]
