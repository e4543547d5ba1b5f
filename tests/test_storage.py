"""The project stores: the store contract (tests/store_contract.py) against MongoProjectStore on the suite's
real SecantusDB (MongoDB wire protocol) and against the in-memory store, plus what is particular to each."""

from __future__ import annotations

import pytest

from flops_utils.process_groups import free_port
from manager.records import EventRecord, ProjectStatus
from manager.storage import MemoryDatabase, MemoryProjectStore, MongoProjectStore, ProjectStore, StorageUnavailable
from tests.store_contract import StoreContract, StoreFactory, project


class TestMongoStoreContract(StoreContract):
    @pytest.fixture
    def make_store(self, mongo_uri: str, mongo_db_name: str) -> StoreFactory:
        return lambda: MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)

    @pytest.fixture
    def unreachable_store(self) -> ProjectStore:
        return MongoProjectStore(f"mongodb://127.0.0.1:{free_port()}", "nothing", timeout_s=0.5)


class TestMemoryStoreContract(StoreContract):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        database = MemoryDatabase()
        return lambda: MemoryProjectStore(database)

    @pytest.fixture
    def unreachable_store(self) -> ProjectStore:
        return MemoryProjectStore(MemoryDatabase(down=True))


def test_mongo_constructor_does_no_io_and_an_unconnected_store_is_unavailable() -> None:
    unconnected = MongoProjectStore(f"mongodb://127.0.0.1:{free_port()}", "nothing", timeout_s=0.5)
    assert unconnected.ping() is False
    with pytest.raises(StorageUnavailable, match="not connected"):
        unconnected.get_project("p")


def test_a_mongo_database_that_is_down_is_named_in_the_error() -> None:
    port = free_port()
    down = MongoProjectStore(f"mongodb://127.0.0.1:{port}", "nothing", timeout_s=0.5)
    with pytest.raises(StorageUnavailable, match=f"cannot reach the database at mongodb://127.0.0.1:{port}"):
        down.connect()
    assert down.ping() is False


def test_a_memory_database_outage_fails_every_call_of_every_store_until_it_is_back() -> None:
    database = MemoryDatabase(name="lab")
    first, second = MemoryProjectStore(database), MemoryProjectStore(database)
    first.connect()
    second.connect()
    first.insert_project(project("p1"))
    with database.outage():
        assert first.ping() is False and second.ping() is False
        with pytest.raises(StorageUnavailable, match="^cannot reach the database at memory://lab: the database is"):
            first.update_project("p1", status=ProjectStatus.RUNNING)
        with pytest.raises(StorageUnavailable):
            second.append_event(EventRecord(project_id="p1", text="lost?"))
        with pytest.raises(StorageUnavailable):
            MemoryProjectStore(database).connect()
    assert second.get_project("p1").status is ProjectStatus.PENDING  # type: ignore[union-attr]
    assert first.list_events("p1") == []
    assert second.append_event(EventRecord(project_id="p1", text="after")).seq == 1
