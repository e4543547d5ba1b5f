"""Keeps FLOps' image storage bounded: prunes registry and local images no live project needs.

The rules are :mod:`services.builder.oci.image_prune`'s; this module turns the project
records into what they must keep: every image of a live project (not finished) or of a
serving endpoint still up, and when finished projects last used theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from flops_utils.service_config import RegistrySettings
from manager.control import ImagePruneResult
from manager.records import ProjectPhase, ProjectRecord
from services.builder.oci.image_prune import ImageKeep, prune_images
from services.builder.oci.image_use import ImageRef, parse_reference

log = logging.getLogger(__name__)

BUILDING_PHASES = (ProjectPhase.BUILD, ProjectPhase.POST_TRAINING)  # phases that run a builder


def record_images(record: ProjectRecord) -> list[ImageRef]:
    """The images a project record names: learner and aggregator (and their platforms), the model image."""
    images: list[ImageRef] = []
    build = record.build
    platform_digests = build.get("platform_digests") or {}
    for kind in ("learner", "aggregator"):
        reference = build.get(f"{kind}_image")
        image = parse_reference(reference) if isinstance(reference, str) else None
        if image is None:
            continue
        images.append(image)
        digests = platform_digests.get(kind) if isinstance(platform_digests, dict) else None
        for digest in (digests or {}).values():
            if isinstance(digest, str):
                images.append(ImageRef(image.repository, digest=digest))
    model = parse_reference(record.model_image) if record.model_image else None
    if model is not None:
        images.append(model)
    return images


def images_to_keep(records: Iterable[ProjectRecord]) -> ImageKeep:
    keep = ImageKeep()
    for record in records:
        live = not record.status.finished or bool(record.serving_url)
        if not record.status.finished and record.phase in BUILDING_PHASES:
            keep.building = True
        for image in record_images(record):
            if live:
                if image.tag:
                    keep.keys.add(image.key)
                if image.digest:
                    keep.digests.setdefault(image.repository, set()).add(image.digest)
            else:
                when = record.finished_at or record.updated_at
                keep.used_at[image.key] = max(when, keep.used_at.get(image.key, 0.0))
    return keep


def prune_image_storage(
    registry: RegistrySettings | None,
    containers_root: Path,
    records: Iterable[ProjectRecord],
    *,
    max_age_s: float,
    dry_run: bool = False,
    now: float | None = None,
) -> ImagePruneResult:
    report = prune_images(
        registry, containers_root, images_to_keep(records), max_age_s=max_age_s, now=now, dry_run=dry_run
    )
    if not dry_run and (report.removed_from_registry or report.removed_from_storage):
        log.info(
            "images: deleted %d manifests from the registry, removed %d image names from local storage",
            len(report.removed_from_registry),
            len(report.removed_from_storage),
        )
    for note in report.notes:
        log.info("image upkeep: %s", note)
    return ImagePruneResult(
        removed_from_registry=report.removed_from_registry,
        removed_from_storage=report.removed_from_storage,
        kept_in_use=report.kept_in_use,
        kept_recent=report.kept_recent,
        kept_busy=report.kept_busy,
        notes=report.notes,
    )
