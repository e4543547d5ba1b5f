"""Build-cache upkeep: real folders, real flock holders, real builds, the lifecycle against SecantusDB."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flops_utils.service_config import BuilderConfig, MqttSettings
from manager.control import CachePruneRequest
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.service import LifecycleService
from manager.records import ProjectRecord, ProjectStatus
from manager.storage import MongoProjectStore
from services.builder.cache import LAST_USED_MARKER, LEFTOVER_MIN_AGE_S, entry_lock_path, last_used, prune_cache
from services.builder.local import build_local
from tests.example_repos import example_repo

DAY = 86400.0
UNUSED_MQTT = MqttSettings(host="127.0.0.1", port=1)


def _entry(cache: Path, kind: str, name: str, age_s: float, size: int = 1000) -> Path:
    """A cache entry last used ``age_s`` ago, holding ``size`` bytes."""
    entry = cache / kind / name
    entry.mkdir(parents=True)
    (entry / "payload.bin").write_bytes(b"x" * size)
    marker = entry / LAST_USED_MARKER
    marker.touch()
    stamp = time.time() - age_s
    os.utime(marker, (stamp, stamp))
    os.utime(entry, (stamp, stamp))
    return entry


@pytest.fixture()
def held_lock() -> Iterator[object]:
    """Holds a path's flock from another process, as a busy builder would."""
    holders: list[subprocess.Popen[str]] = []

    def hold(lock_path: Path) -> None:
        code = (
            "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", code, str(lock_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holders.append(holder)

    yield hold
    for holder in holders:
        holder.communicate(timeout=10)


def test_only_old_unused_and_unlocked_entries_are_removed(tmp_path: Path, held_lock) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    old_env = _entry(cache, "envs", "a" * 64, 40 * DAY, size=5000)
    old_app = _entry(cache, "apps", "b" * 64, 40 * DAY, size=3000)
    recent_env = _entry(cache, "envs", "c" * 64, 2 * DAY)
    in_use_app = _entry(cache, "apps", "d" * 64, 90 * DAY)
    busy_env = _entry(cache, "envs", "e" * 64, 90 * DAY)
    held_lock(entry_lock_path(busy_env))
    fresh_staging = _entry(cache, "apps", ".staging-ffff-1", 31 * DAY)
    os.utime(fresh_staging / LAST_USED_MARKER, (time.time(), time.time()))  # a builder assembling right now
    old_work = _entry(cache, "work", "build-crashed", 40 * DAY)
    young_work = _entry(cache, "work", "build-running", LEFTOVER_MIN_AGE_S / 2)

    dry = prune_cache(cache, max_age_s=30 * DAY, in_use=[in_use_app], dry_run=True)
    assert sorted(dry.removed) == sorted([f"envs/{old_env.name}", f"apps/{old_app.name}", "work/build-crashed"])
    assert dry.freed_bytes >= 5000 + 3000 + 1000
    assert old_env.exists() and old_app.exists() and old_work.exists()  # a dry run removes nothing

    report = prune_cache(cache, max_age_s=30 * DAY, in_use=[in_use_app])
    assert sorted(report.removed) == sorted(dry.removed)
    assert (report.kept_in_use, report.kept_recent, report.kept_busy) == (1, 1, 1)
    assert not old_env.exists() and not old_app.exists() and not old_work.exists()
    for kept in (recent_env, in_use_app, busy_env, fresh_staging, young_work):
        assert kept.exists(), kept
    assert entry_lock_path(busy_env).exists()  # lock files stay: a waiting builder may hold them open


def test_young_leftovers_survive_even_a_zero_age_limit(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    young_work = _entry(cache, "work", "oci-build-running", 60.0)
    old_env = _entry(cache, "envs", "a" * 64, 60.0)
    report = prune_cache(cache, max_age_s=0)
    assert report.removed == [f"envs/{old_env.name}"]
    assert young_work.exists()


def test_a_pruned_build_is_made_again_and_a_reused_one_is_marked_used(tmp_path: Path) -> None:
    (tmp_path / "repos").mkdir()
    repo = example_repo("sklearn_digits", tmp_path / "repos")
    cache = tmp_path / "cache"
    config = BuilderConfig.model_validate(
        {"project_id": "p-cache", "mqtt": UNUSED_MQTT, "repo_url": repo, "flavor": "sklearn", "cache_dir": str(cache)}
    )
    first = build_local(config, lambda message: None)
    environment, app = Path(first.environment_dir or ""), Path(first.app_dir or "")
    assert last_used(environment) > time.time() - 600 and last_used(app) > time.time() - 600

    stale = time.time() - 40 * DAY
    for entry in (environment, app):
        os.utime(entry / LAST_USED_MARKER, (stale, stale))
    again = build_local(config, lambda message: None)
    assert again.cached is True
    assert last_used(environment) > time.time() - 600 and last_used(app) > time.time() - 600
    assert prune_cache(cache, max_age_s=30 * DAY).removed == []  # the reuse counted as a use

    report = prune_cache(cache, max_age_s=0, now=time.time() + 1)
    assert sorted(report.removed) == sorted([f"envs/{environment.name}", f"apps/{app.name}"])
    rebuilt = build_local(config, lambda message: None)
    assert rebuilt.cached is False and rebuilt.digest == first.digest
    probe = subprocess.run(
        [str(environment / "bin" / "python"), "-c", "import flops_utils, flwr, sklearn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert (app / "model_manager.py").is_file()


def test_the_manager_keeps_what_live_projects_and_serving_endpoints_use(
    tmp_path: Path, mongo_uri: str, mongo_db_name: str
) -> None:
    cache = tmp_path / "cache"
    dirs = {
        name: (_entry(cache, "envs", name * 64, 60 * DAY), _entry(cache, "apps", name * 64, 60 * DAY))
        for name in ("r", "c", "s")
    }
    store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    store.connect()
    try:
        for name, status, serving in (
            ("r", ProjectStatus.RUNNING, None),
            ("c", ProjectStatus.COMPLETED, None),
            ("s", ProjectStatus.COMPLETED, "http://127.0.0.1:1/"),
        ):
            environment, app = dirs[name]
            store.insert_project(
                ProjectRecord(
                    project_id=f"project-{name}",
                    customer="alice",
                    sla={},
                    status=status,
                    serving_url=serving,
                    build={"environment_dir": str(environment), "app_dir": str(app)},
                )
            )
        lifecycle = LifecycleService(
            LifecycleSettings(mqtt=UNUSED_MQTT, state_dir=tmp_path / "state", cache_dir=cache), store
        )

        dry = lifecycle.prune_cache(CachePruneRequest(dry_run=True))
        assert dry.dry_run and sorted(dry.removed) == ["apps/" + "c" * 64, "envs/" + "c" * 64]
        assert all(entry.exists() for pair in dirs.values() for entry in pair)
        assert lifecycle.prune_cache(CachePruneRequest(older_than_days=90)).removed == []

        result = lifecycle.prune_cache(CachePruneRequest())  # the default limit: 30 days
        assert sorted(result.removed) == sorted(dry.removed) and result.kept_in_use == 4
        assert not any(entry.exists() for entry in dirs["c"])
        assert all(entry.exists() for name in ("r", "s") for entry in dirs[name])
    finally:
        store.close()
