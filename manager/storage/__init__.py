"""Persistence of projects, events and apps (MongoDB wire protocol)."""

from manager.storage.base import ProjectNotFound, ProjectStore, StorageUnavailable
from manager.storage.mongo import MongoProjectStore

__all__ = ["MongoProjectStore", "ProjectNotFound", "ProjectStore", "StorageUnavailable"]
