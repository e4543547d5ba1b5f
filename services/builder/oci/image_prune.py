"""Pruning FLOps images (``flops/...``) unused for a while from the registry and from the container storage.

An image goes only when all of these hold (the rules of :mod:`services.builder.cache`, for images):

* no live project or serving endpoint uses it (:class:`ImageKeep`, from the manager's records;
  a kept manifest list keeps the per-platform manifests it names);
* its last use (:mod:`services.builder.oci.image_use`'s ledger, or a finished project's record)
  is older than ``max_age_s``; an image with neither starts its clock when first seen here;
* no build is running: the upkeep holds the builds' lock exclusively, and no live project
  is in its build or post-training phase (builders on other hosts take no local lock);
* in local storage, no container is made from it.

Registry: each ``flops/`` repository's tags are resolved to manifest digests (``HEAD`` with
the index and manifest Accept types) and a digest is deleted (``DELETE /v2/<name>/manifests/<digest>``,
which removes its tags too) only when none of its tags is kept. The registry frees the blobs
at its next ``garbage-collect``, which Distribution runs only offline: that stays the
operator's periodic job. Local storage: ``buildah rmi`` of all the image's names, never forced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from flops_utils.service_config import RegistrySettings
from services.builder.cache import try_lock
from services.builder.oci.engine import ContainerEngine, EngineError, EngineSettings
from services.builder.oci.image_use import BUILDS_LOCK, ImageRef, forget, last_used, note_first_seen, parse_reference
from services.builder.oci.local_images import images_used_by_containers, list_images, remove_image
from services.builder.oci.naming import NAMESPACE
from services.builder.oci.registry import INDEX_TYPES, RegistryClient, RegistryError


@dataclass
class ImageKeep:
    """What the manager's project records say about images (keys as :attr:`ImageRef.key`)."""

    keys: set[str] = field(default_factory=set)  # flops/x:tag a live project or serving endpoint uses
    digests: dict[str, set[str]] = field(default_factory=dict)  # repository -> manifest digests in use
    used_at: dict[str, float] = field(default_factory=dict)  # key -> when a finished project last used it
    building: bool = False  # a live project is building images now (perhaps on another host)


@dataclass
class ImagePruneReport:
    removed_from_registry: list[str] = field(default_factory=list)  # <registry>/<repository>@<digest>
    removed_from_storage: list[str] = field(default_factory=list)  # image names in the container storage
    kept_in_use: int = 0
    kept_recent: int = 0
    kept_busy: int = 0
    notes: list[str] = field(default_factory=list)  # one line per part that could not be pruned


@dataclass
class _Pass:
    root: Path
    keep: ImageKeep
    max_age_s: float
    now: float
    dry_run: bool
    busy: bool
    report: ImagePruneReport
    gone: list[ImageRef] = field(default_factory=list)  # ledger entries to drop once both passes are done

    def recent(self, images: list[ImageRef]) -> bool:
        """Used within ``max_age_s``; images nobody has a time for start their clock now."""
        times = [last_used(self.root, image) for image in images]
        times += [self.keep.used_at.get(image.key) for image in images]
        known = [moment for moment in times if moment is not None]
        if not known:
            if not self.dry_run:
                for image in images:
                    note_first_seen(self.root, image, self.now)
            return True
        return self.now - max(known) <= self.max_age_s


def _prune_repository(client: RegistryClient, repository: str, work: _Pass, in_use_keys: set[str]) -> None:
    groups: dict[str, list[str]] = {}
    media: dict[str, str] = {}
    for tag in client.tags(repository):
        found = client.manifest_digest(repository, tag)
        if found is not None:
            groups.setdefault(found[0], []).append(tag)
            media[found[0]] = found[1]
    refs = {digest: [ImageRef(repository, tag) for tag in tags] for digest, tags in groups.items()}
    wanted_digests = work.keep.digests.get(repository, set())
    in_use = {
        digest
        for digest, images in refs.items()
        if digest in wanted_digests or any(image.key in work.keep.keys for image in images)
    }
    digest_refs = {digest: ImageRef(repository, digest=digest) for digest in refs}
    recent = {
        digest
        for digest, images in refs.items()
        if digest not in in_use and work.recent([*images, digest_refs[digest]])
    }
    for kept in (in_use, recent):
        for digest in [digest for digest in kept if media.get(digest) in INDEX_TYPES]:
            info = client.manifest(repository, digest)
            kept.update(child for child in (info.children if info else ()) if child in refs)
    recent -= in_use
    work.report.kept_in_use += len(in_use)
    work.report.kept_recent += len(recent)
    in_use_keys.update(image.key for digest in in_use for image in refs[digest])
    doomed = sorted(set(refs) - in_use - recent, key=lambda digest: media.get(digest) not in INDEX_TYPES)
    for digest in doomed:  # lists first: a list never names a manifest that is gone
        if work.busy:
            work.report.kept_busy += 1
            continue
        work.report.removed_from_registry.append(f"{client.address}/{repository}@{digest}")
        if not work.dry_run:
            client.delete_manifest(repository, digest)
            work.gone += [*refs[digest], digest_refs[digest]]


def prune_registry(client: RegistryClient, work: _Pass) -> set[str] | None:
    """Prune the registry's ``flops/`` repositories; the keys of the tags in use (None when it failed)."""
    in_use_keys: set[str] = set()
    try:
        for repository in client.catalog():
            if repository.startswith(f"{NAMESPACE}/"):
                _prune_repository(client, repository, work, in_use_keys)
    except RegistryError as error:
        work.report.notes.append(f"registry not pruned: {error}")
        return None
    return in_use_keys


def _local_in_use(image: ImageRef, work: _Pass, in_use_keys: set[str] | None) -> bool:
    if image.key in work.keep.keys or (in_use_keys is not None and image.key in in_use_keys):
        return True
    digests = work.keep.digests.get(image.repository)
    if not digests:
        return False
    # Records pin some images by registry digest only; without the registry's tags, keep the whole repository.
    return in_use_keys is None or (image.digest is not None and image.digest in digests)


def prune_storage(engine: ContainerEngine, work: _Pass, in_use_keys: set[str] | None) -> None:
    """Prune FLOps' images from the container storage (images with other names too are not FLOps' own)."""
    if not (engine.root / "engine").is_dir():
        work.report.notes.append(f"local images not pruned: no container storage at {engine.root}")
        return
    try:
        images = list_images(engine)
        used_by_containers = images_used_by_containers(engine)
    except EngineError as error:
        work.report.notes.append(f"local images not pruned: {error}")
        return
    for image in images:
        refs = [parse_reference(name) for name in image.names]
        ours = [ref for ref in refs if ref is not None]
        if not ours or len(ours) != len(refs):
            continue
        if image.image_id in used_by_containers or any(_local_in_use(ref, work, in_use_keys) for ref in ours):
            work.report.kept_in_use += 1
        elif work.recent(ours):
            work.report.kept_recent += 1
        elif work.busy:
            work.report.kept_busy += 1
        elif work.dry_run:
            work.report.removed_from_storage += image.names
        else:
            failure = remove_image(engine, image)
            if failure is None:
                work.report.removed_from_storage += image.names
                work.gone += ours
            else:
                work.report.kept_busy += 1
                work.report.notes.append(f"could not remove {image.names[0]}: {failure}")


def prune_images(
    registry: RegistrySettings | None,
    root: Path,
    keep: ImageKeep,
    *,
    max_age_s: float,
    now: float | None = None,
    dry_run: bool = False,
) -> ImagePruneReport:
    """Remove FLOps images unused for ``max_age_s`` from the registry and from the storage at ``root``."""
    report = ImagePruneReport()
    if registry is None:
        report.notes.append("images not pruned: the manager has no registry configured")
        return report
    moment = time.time() if now is None else now
    with try_lock(root / BUILDS_LOCK) as locked:
        work = _Pass(root, keep, max_age_s, moment, dry_run, keep.building or not locked, report)
        if keep.building:
            report.notes.append("a project is building: images are kept until the next prune")
        elif not locked:
            report.notes.append("a build (or another prune) is running here: images are kept until the next prune")
        client = RegistryClient(registry, containers_root=root)
        try:
            in_use_keys = prune_registry(client, work)
        finally:
            client.close()
        prune_storage(ContainerEngine(EngineSettings(root=root)), work, in_use_keys)
        for image in work.gone:
            forget(root, image)
    return report
