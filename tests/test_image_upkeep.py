"""Image upkeep with the real registry (the suite's config: TLS, htpasswd, deletes on) and real buildah.

Images are tiny (one file on ``scratch``), pushed through :class:`ImageStore` as builds push
theirs, into a container storage of the test's own. Ages come from an injected clock
(``now`` 40 days ahead, or a ledger entry dated back), never from sleeping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flops_utils.process_groups import free_port
from flops_utils.service_config import MqttSettings, RegistrySettings
from manager.control import CachePruneRequest
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.image_upkeep import prune_image_storage
from manager.lifecycle.service import LifecycleService
from manager.records import ProjectPhase, ProjectRecord, ProjectStatus
from manager.storage import MongoProjectStore
from manager.suite import load_endpoints, start_suite, stop_suite
from manager.suite.state import HOST
from services.builder.oci import ContainerEngine, EngineSettings, EnsuredImage, ImageStore, RegistryClient
from services.builder.oci.image_use import USE_DIR, building, parse_reference
from services.builder.oci.images import commit
from services.builder.oci.naming import ImageName
from services.builder.oci.steps import StepRecord

DAY = 86400.0
LIMIT_S = 30 * DAY
LATER = 40 * DAY  # the injected clock runs this far ahead: everything last used now is old


@pytest.fixture(scope="module")
def registry_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A suite with its registry (the config the suite writes: TLS with the suite's CA, htpasswd, deletes on)."""
    state_dir = tmp_path_factory.mktemp("registry-suite")
    try:
        start_suite(state_dir, registry=True)
        yield state_dir
    finally:
        stop_suite(state_dir)


@pytest.fixture(scope="module")
def registry(registry_suite: Path) -> RegistrySettings:
    endpoints = load_endpoints(registry_suite)
    assert endpoints is not None and endpoints.registry is not None and endpoints.registry.ca_pem
    return endpoints.registry.settings()


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path / "containers"


@pytest.fixture()
def store(root: Path, registry: RegistrySettings) -> Iterator[ImageStore]:
    store = ImageStore(ContainerEngine(EngineSettings(root=root)), registry)
    try:
        yield store
    finally:
        store.registry.close()


def tiny_image(store: ImageStore, repository: str, tag: str) -> EnsuredImage:
    """A one-file image built from scratch, committed locally and pushed, as a build's image step does."""
    name = ImageName(repository, tag)
    payload = store.engine.root.parent / f"payload-{tag}"
    payload.write_text(f"{repository}:{tag}\n")

    def build() -> None:
        with store.working_container("scratch") as container:
            store.engine.buildah("copy", "--quiet", container, str(payload), "/payload")
            commit(store.engine, container, name.local)

    return store.ensure(name, build, StepRecord("image"))


def record(project_id: str, images: dict[str, EnsuredImage], **fields: object) -> ProjectRecord:
    build = {f"{kind}_image": image.reference for kind, image in images.items()}
    return ProjectRecord(project_id=project_id, customer="alice", sla={}, build=build, **fields)  # type: ignore[arg-type]


def date_back(root: Path, image: EnsuredImage, seconds: float) -> None:
    """Pretend the builder last used ``image`` ``seconds`` ago (the ledger's documented layout)."""
    marker = root / USE_DIR / image.name.repository / image.name.tag
    assert marker.is_file(), "the builder records every image it hands out"
    stamp = time.time() - seconds
    os.utime(marker, (stamp, stamp))


def in_registry(client: RegistryClient, image: EnsuredImage) -> bool:
    tagged = image.name.tag in client.tags(image.name.repository)
    by_digest = client.manifest(image.name.repository, image.digest) is not None
    assert tagged == by_digest, (tagged, by_digest)
    return tagged


@pytest.mark.parametrize(
    ("reference", "key"),
    [
        ("127.0.0.1:5000/flops/sklearn-digits-learner:0123abcd", "flops/sklearn-digits-learner:0123abcd"),
        ("localhost/flops/base-python:feed", "flops/base-python:feed"),
        ("registry.example.org/flops/trained-model@sha256:" + "ab" * 32, "flops/trained-model@sha256:" + "ab" * 32),
        ("docker.io/library/python:3.11-slim", None),  # not FLOps'
        ("localhost/flops/x-learner", None),  # neither tag nor digest
        ("localhost/flops/x-learner@sha256:short", None),
        ("localhost/flops/../etc:tag", None),  # never a path outside the ledger
    ],
)
def test_only_flops_image_names_are_ledger_keys(reference: str, key: str | None) -> None:
    image = parse_reference(reference)
    assert (image.key if image else None) == key


def test_old_unused_images_go_from_registry_and_storage_and_in_use_ones_stay(
    store: ImageStore, root: Path, registry: RegistrySettings
) -> None:
    unused = tiny_image(store, "flops/upkeep-a-learner", "old1")
    live = tiny_image(store, "flops/upkeep-b-learner", "live1")
    finished_long_ago = tiny_image(store, "flops/upkeep-c-learner", "done1")
    recent = tiny_image(store, "flops/upkeep-d-learner", "new1")
    serving = tiny_image(store, "flops/upkeep-model", "serve1")
    records = [
        record("p-live", {"learner": live}, status=ProjectStatus.RUNNING, phase=ProjectPhase.TRAINING),
        record(
            "p-done",
            {"learner": finished_long_ago},
            status=ProjectStatus.COMPLETED,
            finished_at=time.time() - 50 * DAY,
        ),
        ProjectRecord(
            project_id="p-serving",
            customer="alice",
            sla={},
            status=ProjectStatus.COMPLETED,
            model_image=serving.pinned,  # records pin the model image by digest only
            serving_url="http://127.0.0.1:1/",
        ),
    ]
    for image in (unused, live, finished_long_ago, serving):
        date_back(root, image, 45 * DAY)
    date_back(root, recent, 2 * DAY)
    gone = [unused, finished_long_ago]
    client = RegistryClient(registry, containers_root=root)

    dry = prune_image_storage(registry, root, records, max_age_s=LIMIT_S, dry_run=True)
    assert dry.notes == []
    expected = sorted(f"{registry.address}/{image.name.repository}@{image.digest}" for image in gone)
    assert sorted(dry.removed_from_registry) == expected
    assert sorted(dry.removed_from_storage) == sorted(image.name.local for image in gone)
    assert all(in_registry(client, image) and store.engine.image_exists(image.name.local) for image in gone)

    done = prune_image_storage(registry, root, records, max_age_s=LIMIT_S)
    assert sorted(done.removed_from_registry) == expected
    assert sorted(done.removed_from_storage) == sorted(dry.removed_from_storage)
    assert (done.kept_in_use, done.kept_recent, done.kept_busy) == (4, 2, 0)  # live, serving; recent: twice each
    for image in gone:
        assert not in_registry(client, image), image.reference
        assert not store.engine.image_exists(image.name.local), image.name.local
    for image in (live, recent, serving):
        assert in_registry(client, image) and store.engine.image_exists(image.name.local), image.reference
    again = prune_image_storage(registry, root, records, max_age_s=LIMIT_S)
    assert again.removed_from_registry == again.removed_from_storage == []
    client.close()


def test_images_nobody_recorded_start_their_clock_when_first_seen(
    store: ImageStore, root: Path, registry: RegistrySettings
) -> None:
    foreign = tiny_image(store, "flops/upkeep-e-learner", "seen1")
    (root / USE_DIR / foreign.name.repository / foreign.name.tag).unlink()  # pushed by a builder elsewhere
    now = time.time() + LATER
    first = prune_image_storage(registry, root, [], max_age_s=LIMIT_S, now=now)
    assert foreign.name.local not in first.removed_from_storage
    assert f"{registry.address}/{foreign.name.repository}@{foreign.digest}" not in first.removed_from_registry
    later = prune_image_storage(registry, root, [], max_age_s=LIMIT_S, now=now + LATER)
    assert f"{registry.address}/{foreign.name.repository}@{foreign.digest}" in later.removed_from_registry
    assert foreign.name.local in later.removed_from_storage


def test_a_running_build_keeps_every_image(store: ImageStore, root: Path, registry: RegistrySettings) -> None:
    image = tiny_image(store, "flops/upkeep-f-learner", "busy1")
    date_back(root, image, 45 * DAY)
    client = RegistryClient(registry, containers_root=root)
    with building(root):  # a build on this host
        held = prune_image_storage(registry, root, [], max_age_s=LIMIT_S)
    building_elsewhere = [
        ProjectRecord(
            project_id="p-b", customer="alice", sla={}, status=ProjectStatus.RUNNING, phase=ProjectPhase.BUILD
        )
    ]
    remote = prune_image_storage(registry, root, building_elsewhere, max_age_s=LIMIT_S)
    for result in (held, remote):
        assert result.removed_from_registry == result.removed_from_storage == []
        assert result.kept_busy >= 2, result
    assert held.notes == ["a build (or another prune) is running here: images are kept until the next prune"]
    assert remote.notes == ["a project is building: images are kept until the next prune"]
    assert in_registry(client, image) and store.engine.image_exists(image.name.local)
    client.close()


def test_a_kept_manifest_list_keeps_the_platform_images_it_names(
    store: ImageStore, root: Path, registry: RegistrySettings
) -> None:
    member = tiny_image(store, "flops/upkeep-g-learner", "multi1-amd64")
    listed = store.ensure_list(ImageName("flops/upkeep-g-learner", "multi1"), [member], StepRecord("list"))
    date_back(root, member, 45 * DAY)
    date_back(root, listed, 45 * DAY)
    live = [record("p-multi", {"learner": listed}, status=ProjectStatus.RUNNING, phase=ProjectPhase.TRAINING)]
    kept = prune_image_storage(registry, root, live, max_age_s=LIMIT_S)
    client = RegistryClient(registry, containers_root=root)
    assert kept.removed_from_registry == [] and in_registry(client, member) and in_registry(client, listed)
    assert store.engine.image_exists(member.name.local)  # its tag is the list's member: in use
    finished = [record("p-multi", {"learner": listed}, status=ProjectStatus.COMPLETED, finished_at=1.0)]
    pruned = prune_image_storage(registry, root, finished, max_age_s=LIMIT_S)
    assert pruned.removed_from_registry == [
        f"{registry.address}/flops/upkeep-g-learner@{listed.digest}",  # the list first
        f"{registry.address}/flops/upkeep-g-learner@{member.digest}",
    ]
    assert not in_registry(client, member) and not in_registry(client, listed)
    client.close()


def test_an_unreachable_registry_or_missing_storage_is_a_reason_not_an_error(
    store: ImageStore, root: Path, tmp_path: Path
) -> None:
    image = tiny_image(store, "flops/upkeep-h-learner", "down1")
    date_back(root, image, 45 * DAY)
    nobody = RegistrySettings(address=f"{HOST}:{free_port(HOST)}", username="flops", password="x")
    down = prune_image_storage(nobody, root, [], max_age_s=LIMIT_S)
    assert len(down.notes) == 1 and down.notes[0].startswith(f"registry not pruned: registry {nobody.address}")
    assert "unreachable" in down.notes[0] and "\n" not in down.notes[0]
    assert down.removed_from_storage == [image.name.local]  # local storage is pruned all the same
    assert not store.engine.image_exists(image.name.local)

    empty_root = tmp_path / "no-containers"
    missing = prune_image_storage(nobody, empty_root, [], max_age_s=LIMIT_S)
    assert missing.notes[-1] == f"local images not pruned: no container storage at {empty_root}"
    assert not (empty_root / "engine").exists()


def test_the_managers_cache_prune_prunes_images_too(
    store: ImageStore, root: Path, registry: RegistrySettings, tmp_path: Path, mongo_uri: str, mongo_db_name: str
) -> None:
    """Through the lifecycle (what the API route, the CLI and the housekeeping loop call), records from the database."""
    unused = tiny_image(store, "flops/upkeep-i-learner", "api1")
    live = tiny_image(store, "flops/upkeep-i-learner", "api2")
    for image in (unused, live):
        date_back(root, image, 45 * DAY)
    projects = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    projects.connect()
    try:
        projects.insert_project(record("p-api", {"learner": live}, status=ProjectStatus.RUNNING))
        settings = LifecycleSettings(
            mqtt=MqttSettings(host=HOST, port=1),
            state_dir=tmp_path / "state",
            cache_dir=tmp_path / "cache",
            registry=registry,
            containers_dir=root,
        )
        lifecycle = LifecycleService(settings, projects)
        dry = lifecycle.prune_cache(CachePruneRequest(dry_run=True)).images
        assert dry.removed_from_storage == [unused.name.local] and store.engine.image_exists(unused.name.local)
        result = lifecycle.prune_cache(CachePruneRequest())
        assert result.images.removed_from_registry == [f"{registry.address}/flops/upkeep-i-learner@{unused.digest}"]
        assert result.images.removed_from_storage == [unused.name.local]
        assert store.engine.image_exists(live.name.local) and not store.engine.image_exists(unused.name.local)
        young = lifecycle.prune_cache(CachePruneRequest(older_than_days=60)).images
        assert young.removed_from_registry == young.removed_from_storage == [] and young.kept_in_use >= 2
    finally:
        projects.close()


def _blobs(suite_dir: Path) -> set[str]:
    return {path.parent.name for path in (suite_dir / "registry" / "storage").rglob("blobs/sha256/*/*/data")}


def test_the_suites_registry_gc_frees_the_blobs_of_pruned_images(
    store: ImageStore, root: Path, registry: RegistrySettings, registry_suite: Path
) -> None:
    """Last in this file: the registry restarts (same port, same credentials)."""
    pruned = tiny_image(store, "flops/upkeep-j-learner", "gc1")
    kept = tiny_image(store, "flops/upkeep-j-learner", "gc2")
    client = RegistryClient(registry, containers_root=root)
    pruned_info, kept_info = (
        client.manifest("flops/upkeep-j-learner", "gc1"),
        client.manifest("flops/upkeep-j-learner", "gc2"),
    )
    assert pruned_info is not None and kept_info is not None
    pruned_blobs = {digest.removeprefix("sha256:") for digest in (*pruned_info.layers, pruned_info.config_digest)}
    date_back(root, pruned, 45 * DAY)
    live = [record("p-gc", {"learner": kept}, status=ProjectStatus.RUNNING, phase=ProjectPhase.TRAINING)]
    result = prune_image_storage(registry, root, live, max_age_s=LIMIT_S)
    assert f"{registry.address}/flops/upkeep-j-learner@{pruned.digest}" in result.removed_from_registry
    assert pruned_blobs <= _blobs(registry_suite)  # a manifest delete frees no blob

    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOPS_")}
    env["FLOPS_SUITE_DIR"] = str(registry_suite)
    flops = str(Path(sys.executable).with_name("flops"))
    done = subprocess.run([flops, "suite", "registry-gc"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("registry garbage-collect: ") and "blobs deleted" in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("the registry is up again"), done.stdout
    assert not pruned_blobs & _blobs(registry_suite)
    client.close()
    after = RegistryClient(registry, containers_root=root)  # same address and login after the restart
    still = after.manifest("flops/upkeep-j-learner", "gc2")
    assert still is not None and still.digest == kept.digest
    assert {digest.removeprefix("sha256:") for digest in still.layers} <= _blobs(registry_suite)
    after.close()
