"""Persistence of projects, events and apps (MongoDB wire protocol; in memory for tests and trials)."""

from manager.storage.base import ProjectNotFound, ProjectStore, StorageUnavailable
from manager.storage.memory import MemoryDatabase, MemoryProjectStore
from manager.storage.mongo import MongoProjectStore

__all__ = [
    "MemoryDatabase",
    "MemoryProjectStore",
    "MongoProjectStore",
    "ProjectNotFound",
    "ProjectStore",
    "StorageUnavailable",
]
