"""The behaviour every ProjectStore must show, as a reusable pytest class.

Use it by subclassing and providing two fixtures::

    class TestMyStoreContract(StoreContract):
        @pytest.fixture
        def make_store(self) -> StoreFactory: ...        # an unconnected store on this test's own, empty data

        @pytest.fixture
        def unreachable_store(self) -> ProjectStore: ...  # an unconnected store whose database is down

``make_store()`` may be called several times: every store it returns sees the same data
(a manager restart opens a new store on the same database). The class name does not start
with ``Test``, so it only runs where it is subclassed (``tests/test_storage.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from manager.records import EventRecord, Progress, ProjectPhase, ProjectRecord, ProjectStatus, RoundRecord
from manager.storage import ProjectNotFound, ProjectStore, StorageUnavailable

StoreFactory = Callable[[], ProjectStore]


def project(project_id: str, customer: str = "alice", created_at: float | None = None) -> ProjectRecord:
    record = ProjectRecord(project_id=project_id, customer=customer, sla={"ml_repo_url": "/srv/repo"})
    if created_at is not None:
        record.created_at = created_at
    return record


class StoreContract:
    @pytest.fixture
    def store(self, make_store: StoreFactory) -> Iterator[ProjectStore]:
        project_store = make_store()
        project_store.connect()
        yield project_store
        project_store.close()

    def test_an_unconnected_store_refuses_calls_until_connected(self, make_store: StoreFactory) -> None:
        unconnected = make_store()
        with pytest.raises(StorageUnavailable, match="not connected"):
            unconnected.get_project("p")
        unconnected.connect()
        try:
            assert unconnected.ping() is True
            assert unconnected.get_project("p") is None
        finally:
            unconnected.close()

    def test_a_database_that_is_down_is_unavailable_with_a_clear_error(self, unreachable_store: ProjectStore) -> None:
        with pytest.raises(StorageUnavailable, match="^cannot reach the database at "):
            unreachable_store.connect()
        assert unreachable_store.ping() is False

    def test_projects_round_trip_and_list_newest_first_per_customer(self, store: ProjectStore) -> None:
        now = time.time()
        oldest = project("p-old", "alice", now - 20)
        oldest.sealed = {"repo_credentials": "sealed-bytes"}
        store.insert_project(oldest)
        store.insert_project(project("p-bob", "bob", now - 10))
        store.insert_project(project("p-new", "alice", now))
        restored = store.get_project("p-old")
        assert restored == oldest and restored is not None and restored.sealed == oldest.sealed
        assert store.get_project("missing") is None
        assert [r.project_id for r in store.list_projects()] == ["p-new", "p-bob", "p-old"]
        assert [r.project_id for r in store.list_projects("alice")] == ["p-new", "p-old"]
        assert store.list_projects("carol") == []
        with pytest.raises(ValueError, match="already exists"):
            store.insert_project(project("p-old"))

    def test_a_returned_record_is_a_copy(self, store: ProjectStore) -> None:
        record = project("p1")
        store.insert_project(record)
        record.services["aggregator"] = "changed after insert"
        fetched = store.get_project("p1")
        assert fetched is not None and fetched.services == {}
        fetched.services["x"] = "y"
        assert store.get_project("p1").services == {}  # type: ignore[union-attr]

    def test_update_sets_fields_atomically_and_dumps_nested_models(self, store: ProjectStore) -> None:
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
        assert store.update_project("p1", updated_at=12.5).updated_at == 12.5
        with pytest.raises(ProjectNotFound, match="no project 'missing'"):
            store.update_project("missing", status=ProjectStatus.RUNNING)
        with pytest.raises(ValueError, match="no field 'colour'"):
            store.update_project("p1", colour="blue")
        with pytest.raises(ValueError):
            store.update_project("p1", status="SLEEPING")
        assert store.get_project("p1").status is ProjectStatus.FAILED  # type: ignore[union-attr]

    def test_events_get_increasing_sequence_numbers_even_from_many_threads(self, store: ProjectStore) -> None:
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
        assert store.list_events("nothing") == []

    def test_an_event_written_again_is_stored_once(self, store: ProjectStore) -> None:
        """The lifecycle retries a write whose answer was lost in an outage: no doubled event."""
        event = EventRecord(project_id="p-retry", text="round 3/6 done")
        first = store.append_event(event)
        again = store.append_event(event)
        assert again.seq == first.seq == 1
        assert store.append_event(EventRecord(project_id="p-retry", text="round 4/6 done")).seq == 2
        assert [stored.text for stored in store.list_events("p-retry")] == ["round 3/6 done", "round 4/6 done"]

    def test_apps_are_saved_found_listed_and_deleted(self, store: ProjectStore) -> None:
        store.save_app("alice", "observatory", "alice", "app-1", {"tracking_url": "http://x"})
        store.save_app("alice", "project", "p1", "app-2", {})
        store.save_app("bob", "observatory", "bob", "app-3", {})
        assert store.find_app("alice", "observatory", "alice") == {
            "customer": "alice",
            "kind": "observatory",
            "name": "alice",
            "app_id": "app-1",
            "data": {"tracking_url": "http://x"},
        }
        store.save_app("alice", "observatory", "alice", "app-1b", {"tracking_url": "http://y"})
        assert store.find_app("alice", "observatory", "alice")["app_id"] == "app-1b"  # type: ignore[index]
        assert [app["app_id"] for app in store.list_apps("alice")] == ["app-1b", "app-2"]
        assert [app["app_id"] for app in store.list_apps(kind="observatory")] == ["app-1b", "app-3"]
        assert [app["app_id"] for app in store.list_apps("bob", "project")] == []
        assert store.delete_app("alice", "project", "p1") is True
        assert store.delete_app("alice", "project", "p1") is False
        assert store.find_app("alice", "project", "p1") is None

    def test_service_configs_are_kept_by_id_and_deleted_by_owner(self, store: ProjectStore) -> None:
        store.save_service_config("c1", "p1", {"sealed": "abc", "token_sha256": "t1"})
        store.save_service_config("c2", "p1:serving", {"sealed": "def"})
        store.save_service_config("c3", "p2", {"sealed": "ghi"})
        expected = {"sealed": "abc", "token_sha256": "t1", "config_id": "c1", "owner": "p1"}
        assert store.get_service_config("c1") == expected
        store.save_service_config("c1", "p1", {"sealed": "new"})
        assert store.get_service_config("c1") == {"sealed": "new", "config_id": "c1", "owner": "p1"}
        assert store.get_service_config("missing") is None
        assert store.delete_service_configs([]) == 0
        assert store.delete_service_configs(["p1", "p1:serving", "nobody"]) == 2
        assert store.get_service_config("c1") is None and store.get_service_config("c2") is None
        assert store.get_service_config("c3") is not None

    def test_rounds_are_kept_per_project_in_step_order_and_a_repeated_round_replaces_the_first(
        self, store: ProjectStore
    ) -> None:
        def stored(
            cluster: str | None, cycle: int, number: int, accuracy: float, project_id: str = "p-r"
        ) -> RoundRecord:
            record = RoundRecord(
                project_id=project_id,
                round=number,
                cycle=cycle,
                cluster=cluster,
                step=(cycle - 1) * 2 + number,
                participants=2,
                metrics={"accuracy": accuracy},
            )
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

    def test_reset_drops_everything_and_sequences_restart(self, store: ProjectStore) -> None:
        store.insert_project(project("p1"))
        store.append_event(EventRecord(project_id="p1", text="a"))
        store.save_app("alice", "observatory", "alice", "app-1", {})
        store.save_round(RoundRecord(project_id="p1", round=1, step=1))
        store.save_service_config("c1", "p1", {})
        store.reset()
        assert store.list_projects() == [] and store.list_events("p1") == [] and store.list_apps() == []
        assert store.list_rounds("p1") == [] and store.get_service_config("c1") is None
        assert store.append_event(EventRecord(project_id="p1", text="again")).seq == 1
        store.insert_project(project("p1"))  # indexes and collections are usable again

    def test_a_new_store_on_the_same_database_sees_everything(self, make_store: StoreFactory) -> None:
        """What a manager restart relies on: nothing lives only in the store object."""
        first = make_store()
        first.connect()
        first.insert_project(project("p1"))
        first.update_project("p1", status=ProjectStatus.RUNNING, progress=Progress(round=3, total_rounds=4))
        first.append_event(EventRecord(project_id="p1", text="round 3 done"))
        first.save_app("alice", "observatory", "alice", "app-1", {"port": 5000})
        first.close()

        second = make_store()
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
