"""The manager's one small repository layer: projects, their events and orchestrator apps."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from manager.records import EventRecord, ProjectRecord, RoundRecord


class StorageUnavailable(RuntimeError):
    """The database cannot be reached (down, refusing connections, or timing out)."""


class ProjectNotFound(LookupError):
    """No stored project has this id."""

    def __init__(self, project_id: str) -> None:
        super().__init__(f"no project {project_id!r}")
        self.project_id = project_id


def project_field_value(name: str, value: Any) -> Any:
    """Validate one top-level field of an update against ProjectRecord and dump it to plain JSON types
    (what :meth:`ProjectStore.update_project` stores); ValueError naming a field ProjectRecord lacks."""
    if name not in ProjectRecord.model_fields:
        raise ValueError(f"ProjectRecord has no field {name!r}")
    adapter = _field_adapter(name)
    return adapter.dump_python(adapter.validate_python(value), mode="json")


@functools.cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    annotation = ProjectRecord.model_fields[name].annotation
    if annotation is None:
        raise ValueError(f"ProjectRecord has no field {name!r}")
    return TypeAdapter(annotation)


class ProjectStore(ABC):
    """Plain-document storage. Implementations do no I/O in their constructor."""

    @abstractmethod
    def connect(self) -> None:
        """Open the connection and prepare indexes; raise StorageUnavailable if the database is down."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> bool:
        """True if the database answers now (never raises)."""

    @abstractmethod
    def insert_project(self, record: ProjectRecord) -> None:
        """Store a new project; ValueError if its id is taken."""

    @abstractmethod
    def get_project(self, project_id: str) -> ProjectRecord | None: ...

    @abstractmethod
    def list_projects(self, customer: str | None = None) -> list[ProjectRecord]:
        """Projects newest first; ``customer=None`` lists every customer's."""

    @abstractmethod
    def update_project(self, project_id: str, **fields: Any) -> ProjectRecord:
        """Atomically set top-level fields (``updated_at`` too, unless given); ProjectNotFound if missing."""

    @abstractmethod
    def append_event(self, event: EventRecord) -> EventRecord:
        """Store ``event`` with the next sequence number of its project; return it with that ``seq``."""

    @abstractmethod
    def list_events(self, project_id: str, after_seq: int = 0, limit: int = 1000) -> list[EventRecord]:
        """Events with ``seq > after_seq`` in increasing ``seq`` order, at most ``limit``."""

    @abstractmethod
    def save_round(self, record: RoundRecord) -> None:
        """Store one round; a round reported again (same cycle, cluster and round) replaces the earlier one."""

    @abstractmethod
    def list_rounds(self, project_id: str) -> list[RoundRecord]:
        """The project's rounds ordered by cycle, then round, global (root) rounds after their clusters'."""

    @abstractmethod
    def save_app(self, customer: str, kind: str, name: str, app_id: str, data: dict[str, Any]) -> None:
        """Create or replace the record of an orchestrator app."""

    @abstractmethod
    def find_app(self, customer: str, kind: str, name: str) -> dict[str, Any] | None:
        """``{"customer", "kind", "name", "app_id", "data"}`` or None."""

    @abstractmethod
    def list_apps(self, customer: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """App records (as :meth:`find_app` returns them), optionally of one customer and/or kind."""

    @abstractmethod
    def delete_app(self, customer: str, kind: str, name: str) -> bool:
        """True if a record was deleted."""

    @abstractmethod
    def save_service_config(self, config_id: str, owner: str, document: dict[str, Any]) -> None:
        """Create or replace a service configuration kept for fetching by reference."""

    @abstractmethod
    def get_service_config(self, config_id: str) -> dict[str, Any] | None:
        """``{"config_id", "owner", ...document}`` or None."""

    @abstractmethod
    def delete_service_configs(self, owners: Sequence[str]) -> int:
        """Delete every configuration of these owners (in one call); how many went."""

    @abstractmethod
    def reset(self) -> None:
        """Drop every project, event, round, app and service configuration."""
