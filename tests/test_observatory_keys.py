"""Each customer's observatory (MLflow store and tracking server) has a key of its own, even for names
differing only by case; stores kept under the old lowercased name move to their owner's key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from flops_utils.service_config import MqttSettings
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.observatory import ObservatoryKeeper
from manager.lifecycle.observatory_names import (
    customer_key,
    legacy_observatory_name,
    observatory_name,
    observatory_root,
)
from manager.storage import MongoProjectStore
from orchestrator_adapters.base import AppKind
from orchestrator_adapters.local import LocalAdapter, LocalAdapterSettings


@pytest.fixture()
def store(mongo_uri: str, mongo_db_name: str) -> Iterator[MongoProjectStore]:
    project_store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    project_store.connect()
    yield project_store
    project_store.close()


def test_customers_differing_only_by_case_get_different_readable_keys() -> None:
    keys = {customer: customer_key(customer) for customer in ("acme", "Acme", "ACME", "Team X", "team-x")}
    assert len(set(keys.values())) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9-]{1,30}-[0-9a-f]{8}", key) for key in keys.values()), keys
    assert keys["Acme"].startswith("acme-") and keys["Team X"].startswith("team-x-")
    assert customer_key("acme") == customer_key("acme")  # stable across manager restarts
    assert observatory_name("acme") != observatory_name("Acme")
    assert observatory_root(Path("/s"), "acme") != observatory_root(Path("/s"), "Acme")
    assert len(observatory_name("x" * 64)) <= 63  # a DNS label


def _legacy_observatory(store: MongoProjectStore, adapter: LocalAdapter, state_dir: Path, customer: str) -> Path:
    """What a manager before customer keys left: an app and a store under the lowercased name."""
    name = legacy_observatory_name(customer)
    app = adapter.create_app(name, AppKind.OBSERVATORY, customer)
    store.save_app(customer, AppKind.OBSERVATORY.value, name, app.app_id, {"app_id": app.app_id})
    root = state_dir / "observatories" / name.removeprefix("observatory-")
    root.mkdir(parents=True, exist_ok=True)
    (root / "mlflow.db").write_text(f"runs of {customer}")
    return root


def test_legacy_stores_move_to_their_owner_and_a_shared_one_is_set_aside(
    store: MongoProjectStore, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    adapter = LocalAdapter(LocalAdapterSettings(state_dir=str(tmp_path / "adapter")))
    keeper = ObservatoryKeeper(LifecycleSettings(mqtt=MqttSettings(), state_dir=state_dir, cache_dir=tmp_path), store)
    alone = _legacy_observatory(store, adapter, state_dir, "Bob")
    shared = _legacy_observatory(store, adapter, state_dir, "acme")
    _legacy_observatory(store, adapter, state_dir, "Acme")  # the same folder as acme's

    keeper.adopt_legacy_stores(adapter)

    assert not alone.exists()
    assert (observatory_root(state_dir, "Bob") / "mlflow.db").read_text() == "runs of Bob"
    assert not shared.exists() and (shared.parent / "acme.shared" / "mlflow.db").exists()
    assert not observatory_root(state_dir, "acme").exists() and not observatory_root(state_dir, "Acme").exists()
    assert store.list_apps(kind=AppKind.OBSERVATORY.value) == []  # the old tracking servers are gone
    for customer in ("Bob", "acme", "Acme"):
        assert adapter.find_app(legacy_observatory_name(customer), customer) is None
    keeper.adopt_legacy_stores(adapter)  # a second start finds nothing left to move
    assert (observatory_root(state_dir, "Bob") / "mlflow.db").exists()
