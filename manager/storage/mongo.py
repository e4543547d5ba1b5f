"""ProjectStore on any MongoDB-wire server (MongoDB in production, SecantusDB here)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from flops_utils.message_text import error_line
from manager.records import EventRecord, ProjectRecord, RoundRecord
from manager.storage.base import ProjectNotFound, ProjectStore, StorageUnavailable, project_field_value

P = ParamSpec("P")
R = TypeVar("R")

PROJECTS = "projects"
EVENTS = "events"
ROUNDS = "rounds"
APPS = "apps"
SERVICE_CONFIGS = "service_configs"
COUNTERS = "event_counters"  # next event sequence number per project

Document = dict[str, Any]


def _translate_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn 'database unreachable' driver errors into StorageUnavailable with one clear line."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except ConnectionFailure as error:
            store = args[0]
            address = store.uri if isinstance(store, MongoProjectStore) else "the database"
            raise StorageUnavailable(f"cannot reach the database at {address}: {error_line(error)}") from error

    return wrapper


class MongoProjectStore(ProjectStore):
    def __init__(self, uri: str, database: str, timeout_s: float = 5.0) -> None:
        self.uri = uri
        self.database_name = database
        self.timeout_s = timeout_s
        self._client: MongoClient[Document] | None = None

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        if self._client is not None:
            return
        timeout_ms = int(self.timeout_s * 1000)
        client: MongoClient[Document] = MongoClient(
            self.uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname="flops-manager",
        )
        self._client = client
        try:
            self._ping_or_raise()
            self._create_indexes()
        except (StorageUnavailable, PyMongoError):
            self._client = None
            client.close()
            raise

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def ping(self) -> bool:
        try:
            self._ping_or_raise()
        except (StorageUnavailable, PyMongoError):
            return False
        return True

    @_translate_errors
    def _ping_or_raise(self) -> None:
        self._db.command("ping")

    @_translate_errors
    def _create_indexes(self) -> None:
        self._collection(PROJECTS).create_index([("customer", ASCENDING), ("created_at", DESCENDING)])
        self._collection(PROJECTS).create_index([("created_at", DESCENDING)])
        self._collection(EVENTS).create_index([("project_id", ASCENDING), ("seq", ASCENDING)], unique=True)
        self._collection(EVENTS).create_index([("project_id", ASCENDING), ("event_id", ASCENDING)])
        self._collection(ROUNDS).create_index([("project_id", ASCENDING), ("step", ASCENDING)])
        self._collection(APPS).create_index([("customer", ASCENDING), ("kind", ASCENDING)])
        self._collection(SERVICE_CONFIGS).create_index([("owner", ASCENDING)])

    @property
    def _db(self) -> Database[Document]:
        if self._client is None:
            raise StorageUnavailable("the project store is not connected (call connect() first)")
        return self._client[self.database_name]

    def _collection(self, name: str) -> Collection[Document]:
        return self._db[name]

    # -- projects -----------------------------------------------------------------------------

    @_translate_errors
    def insert_project(self, record: ProjectRecord) -> None:
        document = record.storage_document()
        document["_id"] = record.project_id
        try:
            self._collection(PROJECTS).insert_one(document)
        except DuplicateKeyError as error:
            raise ValueError(f"project {record.project_id!r} already exists") from error

    @_translate_errors
    def get_project(self, project_id: str) -> ProjectRecord | None:
        document = self._collection(PROJECTS).find_one({"_id": project_id})
        return _project(document) if document is not None else None

    @_translate_errors
    def list_projects(self, customer: str | None = None) -> list[ProjectRecord]:
        query: Document = {} if customer is None else {"customer": customer}
        cursor = self._collection(PROJECTS).find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        return [_project(document) for document in cursor]

    @_translate_errors
    def update_project(self, project_id: str, **fields: Any) -> ProjectRecord:
        fields.setdefault("updated_at", time.time())
        changes = {name: project_field_value(name, value) for name, value in fields.items()}
        if "project_id" in changes and changes["project_id"] != project_id:
            raise ValueError("project_id cannot be changed")
        document = self._collection(PROJECTS).find_one_and_update(
            {"_id": project_id}, {"$set": changes}, return_document=ReturnDocument.AFTER
        )
        if document is None:
            raise ProjectNotFound(project_id)
        return _project(document)

    # -- events -------------------------------------------------------------------------------

    @_translate_errors
    def append_event(self, event: EventRecord) -> EventRecord:
        # Idempotent: the lifecycle retries a write whose answer was lost in a database outage.
        earlier = self._collection(EVENTS).find_one({"project_id": event.project_id, "event_id": event.event_id})
        if earlier is not None:
            return EventRecord.model_validate({key: value for key, value in earlier.items() if key != "_id"})
        stored = event.model_copy(update={"seq": self._next_event_seq(event.project_id)})
        document = stored.model_dump(mode="json")
        document["_id"] = f"{stored.project_id}:{stored.seq:012d}"
        self._collection(EVENTS).insert_one(document)
        return stored

    def _next_event_seq(self, project_id: str) -> int:
        """Atomic ``$inc`` on the project's counter (created first: concurrent upserts are not atomic everywhere)."""
        counters = self._collection(COUNTERS)
        for _ in range(3):
            counter = counters.find_one_and_update(
                {"_id": project_id}, {"$inc": {"seq": 1}}, return_document=ReturnDocument.AFTER
            )
            if counter is not None:
                return int(counter["seq"])
            with contextlib.suppress(DuplicateKeyError):  # another writer created it first
                counters.insert_one({"_id": project_id, "seq": 0})
        raise StorageUnavailable(f"the database did not return the event counter of project {project_id!r}")

    @_translate_errors
    def list_events(self, project_id: str, after_seq: int = 0, limit: int = 1000) -> list[EventRecord]:
        cursor = (
            self._collection(EVENTS)
            .find({"project_id": project_id, "seq": {"$gt": after_seq}})
            .sort("seq", ASCENDING)
            .limit(max(1, limit))
        )
        return [EventRecord.model_validate(_without_id(document)) for document in cursor]

    # -- rounds -------------------------------------------------------------------------------

    @_translate_errors
    def save_round(self, record: RoundRecord) -> None:
        key = f"{record.project_id}\x1f{record.cycle}\x1f{record.cluster or ''}\x1f{record.round}"
        document = {**record.model_dump(mode="json"), "_id": key}
        self._collection(ROUNDS).replace_one({"_id": key}, document, upsert=True)

    @_translate_errors
    def list_rounds(self, project_id: str) -> list[RoundRecord]:
        cursor = self._collection(ROUNDS).find({"project_id": project_id})
        rounds = [RoundRecord.model_validate(_without_id(document)) for document in cursor]
        # Sorted here: a cluster round and the root's cycle share a step, and None sorts after names.
        return sorted(rounds, key=lambda r: (r.step, r.cluster is None, r.cluster or ""))

    # -- apps ---------------------------------------------------------------------------------

    @_translate_errors
    def save_app(self, customer: str, kind: str, name: str, app_id: str, data: dict[str, Any]) -> None:
        document = {"customer": customer, "kind": kind, "name": name, "app_id": app_id, "data": dict(data)}
        self._collection(APPS).replace_one({"_id": _app_key(customer, kind, name)}, document, upsert=True)

    @_translate_errors
    def find_app(self, customer: str, kind: str, name: str) -> dict[str, Any] | None:
        document = self._collection(APPS).find_one({"_id": _app_key(customer, kind, name)})
        return _without_id(document) if document is not None else None

    @_translate_errors
    def list_apps(self, customer: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        query: Document = {}
        if customer is not None:
            query["customer"] = customer
        if kind is not None:
            query["kind"] = kind
        return [_without_id(document) for document in self._collection(APPS).find(query).sort("_id", ASCENDING)]

    @_translate_errors
    def delete_app(self, customer: str, kind: str, name: str) -> bool:
        result = self._collection(APPS).delete_one({"_id": _app_key(customer, kind, name)})
        return result.deleted_count > 0

    # -- service configurations by reference --------------------------------------------------

    @_translate_errors
    def save_service_config(self, config_id: str, owner: str, document: dict[str, Any]) -> None:
        stored = {**document, "config_id": config_id, "owner": owner}
        self._collection(SERVICE_CONFIGS).replace_one({"_id": config_id}, stored, upsert=True)

    @_translate_errors
    def get_service_config(self, config_id: str) -> dict[str, Any] | None:
        document = self._collection(SERVICE_CONFIGS).find_one({"_id": config_id})
        return _without_id(document) if document is not None else None

    @_translate_errors
    def delete_service_configs(self, owners: Sequence[str]) -> int:
        if not owners:
            return 0
        return int(self._collection(SERVICE_CONFIGS).delete_many({"owner": {"$in": list(owners)}}).deleted_count)

    # -- maintenance --------------------------------------------------------------------------

    @_translate_errors
    def reset(self) -> None:
        for name in (PROJECTS, EVENTS, ROUNDS, APPS, COUNTERS, SERVICE_CONFIGS):
            self._db.drop_collection(name)
        self._create_indexes()


def _app_key(customer: str, kind: str, name: str) -> str:
    return f"{customer}\x1f{kind}\x1f{name}"


def _without_id(document: Document) -> Document:
    return {key: value for key, value in document.items() if key != "_id"}


def _project(document: Document) -> ProjectRecord:
    return ProjectRecord.model_validate(_without_id(document))
