"""MongoProjectStore against the suite's real SecantusDB (MongoDB wire protocol)."""

from __future__ import annotations

import threading
import time

import pytest

from flops_utils.process_groups import free_port
from manager.records import EventRecord, Progress, ProjectPhase, ProjectRecord, ProjectStatus, RoundRecord
from manager.storage import MongoProjectStore, ProjectNotFound, StorageUnavailable


@pytest.fixture()
def store(mongo_uri: str, mongo_db_name: str):  # type: ignore[no-untyped-def]
    project_store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    project_store.connect()
    yield project_store
    project_store.close()


def project(project_id: str, customer: str = "alice", created_at: float | None = None) -> ProjectRecord:
    record = ProjectRecord(project_id=project_id, customer=customer, sla={"ml_repo_url": "/srv/repo"})
    if created_at is not None:
        record.created_at = created_at
    return record


def test_constructor_does_no_io_and_an_unconnected_store_is_unavailable() -> None:
    unconnected = MongoProjectStore(f"mongodb://127.0.0.1:{free_port()}", "nothing", timeout_s=0.5)
    assert unconnected.ping() is False
    with pytest.raises(StorageUnavailable, match="not connected"):
        unconnected.get_project("p")


def test_a_database_that_is_down_gives_a_clear_error() -> None:
    port = free_port()
    down = MongoProjectStore(f"mongodb://127.0.0.1:{port}", "nothing", timeout_s=0.5)
    with pytest.raises(StorageUnavailable, match=f"cannot reach the database at mongodb://127.0.0.1:{port}"):
        down.connect()
    assert down.ping() is False


def test_projects_round_trip_and_list_newest_first_per_customer(store: MongoProjectStore) -> None:
    now = time.time()
    oldest = project("p-old", "alice", now - 20)
    store.insert_project(oldest)
    store.insert_project(project("p-bob", "bob", now - 10))
    store.insert_project(project("p-new", "alice", now))
    assert store.get_project("p-old") == oldest
    assert store.get_project("missing") is None
    assert [r.project_id for r in store.list_projects()] == ["p-new", "p-bob", "p-old"]
    assert [r.project_id for r in store.list_projects("alice")] == ["p-new", "p-old"]
    assert store.list_projects("carol") == []
    with pytest.raises(ValueError, match="already exists"):
        store.insert_project(project("p-old"))


def test_update_sets_fields_atomically_and_dumps_nested_models(store: MongoProjectStore) -> None:
    store.insert_project(project("p1"))
    before = store.get_project("p1")
    assert before is not None
    updated = store.update_project(
        "p1",
        status=ProjectStatus.RUNNING,
        phase=ProjectPhase.TRAINING,
        progress=Progress(round=2, total_rounds=5, accuracy=0.81),
        services={"aggregator": "svc-1"},
    )
    assert updated.status is ProjectStatus.RUNNING and updated.phase is ProjectPhase.TRAINING
    assert updated.progress == Progress(round=2, total_rounds=5, accuracy=0.81)
    assert updated.updated_at >= before.updated_at
    assert store.get_project("p1") == updated
    assert store.update_project("p1", status="FAILED", error="boom").status is ProjectStatus.FAILED
    with pytest.raises(ProjectNotFound):
        store.update_project("missing", status=ProjectStatus.RUNNING)
    with pytest.raises(ValueError, match="no field"):
        store.update_project("p1", colour="blue")
    with pytest.raises(ValueError):
        store.update_project("p1", status="SLEEPING")


def test_events_get_increasing_sequence_numbers_even_from_many_threads(store: MongoProjectStore) -> None:
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(name: str) -> None:
        for index in range(15):
            stored = store.append_event(EventRecord(project_id="p1", source=name, text=f"{name} {index}"))
            with lock:
                seqs.append(stored.seq)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    store.append_event(EventRecord(project_id="p2", text="other project"))
    assert sorted(seqs) == list(range(1, 61))
    events = store.list_events("p1")
    assert [event.seq for event in events] == list(range(1, 61))
    assert [event.seq for event in store.list_events("p1", after_seq=55)] == [56, 57, 58, 59, 60]
    assert [event.seq for event in store.list_events("p1", after_seq=10, limit=3)] == [11, 12, 13]
    assert [event.text for event in store.list_events("p2")] == ["other project"]


def test_an_event_written_again_is_stored_once(store: MongoProjectStore) -> None:
    """The lifecycle retries a write whose answer was lost in an outage: no doubled event."""
    event = EventRecord(project_id="p-retry", text="round 3/6 done")
    first = store.append_event(event)
    again = store.append_event(event)
    assert again.seq == first.seq == 1
    assert store.append_event(EventRecord(project_id="p-retry", text="round 4/6 done")).seq == 2
    assert [stored.text for stored in store.list_events("p-retry")] == ["round 3/6 done", "round 4/6 done"]


def test_apps_are_saved_found_listed_and_deleted(store: MongoProjectStore) -> None:
    store.save_app("alice", "observatory", "alice", "app-1", {"tracking_url": "http://x"})
    store.save_app("alice", "project", "p1", "app-2", {})
    store.save_app("bob", "observatory", "bob", "app-3", {})
    assert store.find_app("alice", "observatory", "alice") == {
        "customer": "alice", "kind": "observatory", "name": "alice", "app_id": "app-1",
        "data": {"tracking_url": "http://x"},
    }  # fmt: skip
    store.save_app("alice", "observatory", "alice", "app-1b", {"tracking_url": "http://y"})
    assert store.find_app("alice", "observatory", "alice")["app_id"] == "app-1b"  # type: ignore[index]
    assert [app["app_id"] for app in store.list_apps("alice")] == ["app-1b", "app-2"]
    assert [app["app_id"] for app in store.list_apps(kind="observatory")] == ["app-1b", "app-3"]
    assert store.delete_app("alice", "project", "p1") is True
    assert store.delete_app("alice", "project", "p1") is False
    assert store.find_app("alice", "project", "p1") is None


def test_reset_drops_everything_and_sequences_restart(store: MongoProjectStore) -> None:
    store.insert_project(project("p1"))
    store.append_event(EventRecord(project_id="p1", text="a"))
    store.save_app("alice", "observatory", "alice", "app-1", {})
    store.reset()
    assert store.list_projects() == [] and store.list_events("p1") == [] and store.list_apps() == []
    assert store.append_event(EventRecord(project_id="p1", text="again")).seq == 1
    store.insert_project(project("p1"))  # indexes and collections are usable again


def test_a_new_store_on_the_same_database_sees_everything(mongo_uri: str, mongo_db_name: str) -> None:
    """What a manager restart relies on: nothing lives only in the store object."""
    first = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    first.connect()
    first.insert_project(project("p1"))
    first.update_project("p1", status=ProjectStatus.RUNNING, progress=Progress(round=3, total_rounds=4))
    first.append_event(EventRecord(project_id="p1", text="round 3 done"))
    first.save_app("alice", "observatory", "alice", "app-1", {"port": 5000})
    first.close()

    second = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    second.connect()
    try:
        restored = second.get_project("p1")
        assert restored is not None
        assert restored.status is ProjectStatus.RUNNING and restored.progress.round == 3
        assert [event.text for event in second.list_events("p1")] == ["round 3 done"]
        assert second.append_event(EventRecord(project_id="p1", text="next")).seq == 2
        assert second.find_app("alice", "observatory", "alice")["data"] == {"port": 5000}  # type: ignore[index]
        assert second.ping() is True
    finally:
        second.close()


def test_rounds_are_kept_per_project_in_step_order_and_a_repeated_round_replaces_the_first(
    store: MongoProjectStore,
) -> None:
    def stored(cluster: str | None, cycle: int, number: int, accuracy: float, project_id: str = "p-r") -> RoundRecord:
        record = RoundRecord(project_id=project_id, round=number, cycle=cycle, cluster=cluster,
                             step=(cycle - 1) * 2 + number, participants=2, metrics={"accuracy": accuracy})  # fmt: skip
        store.save_round(record)
        return record

    root = stored(None, 1, 2, 0.8)  # the root's cycle, saved before its clusters' last rounds
    b2, a2 = stored("b", 1, 2, 0.7), stored("a", 1, 2, 0.6)
    a1, b1 = stored("a", 1, 1, 0.5), stored("b", 1, 1, 0.4)
    stored("a", 1, 1, 0.1, project_id="other")
    assert store.list_rounds("p-r") == [a1, b1, a2, b2, root]
    again = stored("a", 1, 1, 0.55)  # a redeployed aggregator reports the round again
    assert store.list_rounds("p-r") == [again, b1, a2, b2, root]
    assert [r.metrics for r in store.list_rounds("other")] == [{"accuracy": 0.1}]
    assert store.list_rounds("nothing") == []
    store.reset()
    assert store.list_rounds("p-r") == []
