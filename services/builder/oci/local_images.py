"""The images in FLOps' container storage, which containers use them, and removing one."""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.builder.oci.engine import ContainerEngine, describe_failure

LIST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LocalImage:
    image_id: str  # full hex, no "sha256:"
    names: tuple[str, ...]  # host/repository:tag or host/repository@sha256:...


def _bare_id(value: object) -> str:
    return str(value or "").removeprefix("sha256:")


def list_images(engine: ContainerEngine) -> list[LocalImage]:
    """Every image in the storage (``buildah images``); raises EngineError when buildah fails."""
    outcome = engine.run("buildah", ["images", "--json", "--no-trunc"], timeout=LIST_TIMEOUT_S, what="listing images")
    entries = json.loads(outcome.stdout or "null") or []
    return [
        LocalImage(_bare_id(entry.get("id")), tuple(str(name) for name in entry.get("names") or ()))
        for entry in entries
    ]


def images_used_by_containers(engine: ContainerEngine) -> set[str]:
    """IDs of images a container (buildah's working containers and podman's) is made from."""
    outcome = engine.run(
        "buildah", ["containers", "--all", "--json"], timeout=LIST_TIMEOUT_S, what="listing containers"
    )
    entries = json.loads(outcome.stdout or "null") or []
    return {_bare_id(entry.get("imageid")) for entry in entries if entry.get("imageid")}


def remove_image(engine: ContainerEngine, image: LocalImage) -> str | None:
    """Remove ``image`` by untagging all its names (never forced); the one-line reason when buildah refuses."""
    outcome = engine.run("buildah", ["rmi", *image.names], timeout=LIST_TIMEOUT_S, check=False)
    return None if outcome.ok else describe_failure(outcome, LIST_TIMEOUT_S)
