"""ProjectStore in this process's memory: for tests and trials, with a switch that takes the database down.

It keeps what :class:`~manager.storage.mongo.MongoProjectStore` keeps, as the same JSON documents,
and answers with the same semantics (the store contract in ``tests/store_contract.py`` runs against
both). The documents live in a :class:`MemoryDatabase` that several stores may share, so a store
opened later on the same database sees everything (what a manager restart relies on), and an
outage (:meth:`MemoryDatabase.go_down`) is seen by every store on it. Nothing is written to disk.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from manager.records import EventRecord, ProjectRecord, RoundRecord
from manager.storage.base import ProjectNotFound, ProjectStore, StorageUnavailable, project_field_value

Document = dict[str, Any]
AppKey = tuple[str, str, str]  # customer, kind, name
RoundKey = tuple[str, int, str, int]  # project, cycle, cluster ('' for global rounds), round


@dataclass
class MemoryDatabase:
    """The documents of one database, and whether it answers (``down``: every call raises StorageUnavailable)."""

    name: str = "flops"
    down: bool = False
    projects: dict[str, Document] = field(default_factory=dict)
    events: dict[str, list[Document]] = field(default_factory=dict)  # project -> events in seq order
    counters: dict[str, int] = field(default_factory=dict)  # project -> last event seq
    rounds: dict[RoundKey, Document] = field(default_factory=dict)
    apps: dict[AppKey, Document] = field(default_factory=dict)
    service_configs: dict[str, Document] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def go_down(self) -> None:
        """Simulate an outage: every call of every store on this database fails until :meth:`come_back`."""
        self.down = True

    def come_back(self) -> None:
        self.down = False

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.go_down()
        try:
            yield
        finally:
            self.come_back()

    def clear(self) -> None:
        with self.lock:
            self.projects.clear()
            self.events.clear()
            self.counters.clear()
            self.rounds.clear()
            self.apps.clear()
            self.service_configs.clear()


class MemoryProjectStore(ProjectStore):
    def __init__(self, database: MemoryDatabase | None = None) -> None:
        self.database = database if database is not None else MemoryDatabase()
        self._connected = False

    @property
    def uri(self) -> str:
        return f"memory://{self.database.name}"

    @contextmanager
    def _db(self) -> Iterator[MemoryDatabase]:
        """The database, locked for one call; StorageUnavailable when unconnected or down."""
        if not self._connected:
            raise StorageUnavailable("the project store is not connected (call connect() first)")
        database = self.database
        if database.down:
            raise StorageUnavailable(f"cannot reach the database at {self.uri}: the database is down (simulated)")
        with database.lock:
            yield database

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        if self.database.down:
            raise StorageUnavailable(f"cannot reach the database at {self.uri}: the database is down (simulated)")
        self._connected = True

    def close(self) -> None:
        self._connected = False

    def ping(self) -> bool:
        return self._connected and not self.database.down

    # -- projects -----------------------------------------------------------------------------

    def insert_project(self, record: ProjectRecord) -> None:
        with self._db() as db:
            if record.project_id in db.projects:
                raise ValueError(f"project {record.project_id!r} already exists")
            db.projects[record.project_id] = _json_copy(record.storage_document())

    def get_project(self, project_id: str) -> ProjectRecord | None:
        with self._db() as db:
            document = db.projects.get(project_id)
            return ProjectRecord.model_validate(copy.deepcopy(document)) if document is not None else None

    def list_projects(self, customer: str | None = None) -> list[ProjectRecord]:
        with self._db() as db:
            documents = [d for d in db.projects.values() if customer is None or d["customer"] == customer]
            documents.sort(key=lambda d: (d["created_at"], d["project_id"]), reverse=True)
            return [ProjectRecord.model_validate(copy.deepcopy(document)) for document in documents]

    def update_project(self, project_id: str, **fields: Any) -> ProjectRecord:
        fields.setdefault("updated_at", time.time())
        changes = {name: project_field_value(name, value) for name, value in fields.items()}
        if "project_id" in changes and changes["project_id"] != project_id:
            raise ValueError("project_id cannot be changed")
        with self._db() as db:
            document = db.projects.get(project_id)
            if document is None:
                raise ProjectNotFound(project_id)
            document.update(_json_copy(changes))
            return ProjectRecord.model_validate(copy.deepcopy(document))

    # -- events -------------------------------------------------------------------------------

    def append_event(self, event: EventRecord) -> EventRecord:
        with self._db() as db:
            stored_events = db.events.setdefault(event.project_id, [])
            for earlier in stored_events:  # idempotent: a write retried after a lost answer is stored once
                if earlier["event_id"] == event.event_id:
                    return EventRecord.model_validate(earlier)
            seq = db.counters.get(event.project_id, 0) + 1
            db.counters[event.project_id] = seq
            stored = event.model_copy(update={"seq": seq})
            stored_events.append(stored.model_dump(mode="json"))
            return stored

    def list_events(self, project_id: str, after_seq: int = 0, limit: int = 1000) -> list[EventRecord]:
        with self._db() as db:
            later = [event for event in db.events.get(project_id, []) if event["seq"] > after_seq]
            return [EventRecord.model_validate(event) for event in later[: max(1, limit)]]

    # -- rounds -------------------------------------------------------------------------------

    def save_round(self, record: RoundRecord) -> None:
        with self._db() as db:
            key = (record.project_id, record.cycle, record.cluster or "", record.round)
            db.rounds[key] = record.model_dump(mode="json")

    def list_rounds(self, project_id: str) -> list[RoundRecord]:
        with self._db() as db:
            rounds = [RoundRecord.model_validate(d) for key, d in db.rounds.items() if key[0] == project_id]
        return sorted(rounds, key=lambda r: (r.step, r.cluster is None, r.cluster or ""))

    # -- apps ---------------------------------------------------------------------------------

    def save_app(self, customer: str, kind: str, name: str, app_id: str, data: dict[str, Any]) -> None:
        document = {"customer": customer, "kind": kind, "name": name, "app_id": app_id, "data": dict(data)}
        with self._db() as db:
            db.apps[(customer, kind, name)] = _json_copy(document)

    def find_app(self, customer: str, kind: str, name: str) -> dict[str, Any] | None:
        with self._db() as db:
            document = db.apps.get((customer, kind, name))
            return copy.deepcopy(document) if document is not None else None

    def list_apps(self, customer: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            return [
                copy.deepcopy(document)
                for key, document in sorted(db.apps.items())
                if (customer is None or key[0] == customer) and (kind is None or key[1] == kind)
            ]

    def delete_app(self, customer: str, kind: str, name: str) -> bool:
        with self._db() as db:
            return db.apps.pop((customer, kind, name), None) is not None

    # -- service configurations by reference --------------------------------------------------

    def save_service_config(self, config_id: str, owner: str, document: dict[str, Any]) -> None:
        with self._db() as db:
            db.service_configs[config_id] = _json_copy({**document, "config_id": config_id, "owner": owner})

    def get_service_config(self, config_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            document = db.service_configs.get(config_id)
            return copy.deepcopy(document) if document is not None else None

    def delete_service_configs(self, owners: Sequence[str]) -> int:
        with self._db() as db:
            gone = [config_id for config_id, d in db.service_configs.items() if d["owner"] in set(owners)]
            for config_id in gone:
                del db.service_configs[config_id]
            return len(gone)

    # -- maintenance --------------------------------------------------------------------------

    def reset(self) -> None:
        with self._db() as db:
            db.clear()


def _json_copy(document: Document) -> Document:
    """A copy sharing nothing with the caller's objects (what a database round trip gives)."""
    return copy.deepcopy(document)
