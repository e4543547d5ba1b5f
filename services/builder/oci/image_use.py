"""When each FLOps image was last used, and the lock that keeps image pruning away from running builds.

Neither the registry nor containers/storage records when an image was last *used*, so
builders keep a ledger in the container storage root they share with the manager:
``<root>/image-use/<repository>/<tag>`` (or ``@sha256-<hex>`` for an image known only by
digest), whose mtime is the last time a builder handed the image out (found it in the
registry, pushed or pulled it). The manager's image upkeep reads it and starts an image's
clock on first sight when no builder wrote one (builders on another host).

Every OCI build holds :func:`building` (a shared ``flock`` on ``<root>/locks/image-builds.lock``)
from start to end; the upkeep deletes images only while it holds the same lock exclusively
(:func:`services.builder.cache.try_lock`), so no build loses an image it is about to pull.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from services.builder.oci.naming import NAMESPACE

USE_DIR = "image-use"
BUILDS_LOCK = Path("locks") / "image-builds.lock"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    """``repository`` (``flops/...``, no registry host) with a ``tag`` or a ``digest`` (or both)."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def key(self) -> str:
        """``flops/x:tag`` or ``flops/x@sha256:...``: the same image in any registry or in local storage."""
        return f"{self.repository}:{self.tag}" if self.tag else f"{self.repository}@{self.digest}"


def parse_reference(reference: str) -> ImageRef | None:
    """``[host/]flops/<name>[:tag][@digest]`` -> :class:`ImageRef`; None for other images or odd names."""
    name, _, digest = reference.partition("@")
    tag = None
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1 :]:
        name, tag = name.rsplit(":", 1)
    parts = name.split("/")
    if NAMESPACE in parts[:-1]:
        parts = parts[parts.index(NAMESPACE) :]  # drop the registry host ("localhost", "host:port")
    else:
        return None
    if len(parts) < 2 or not all(_COMPONENT.match(part) for part in parts):
        return None
    if (tag is not None and not _TAG.match(tag)) or (digest and not _DIGEST.match(digest)):
        return None
    if tag is None and not digest:
        return None
    return ImageRef("/".join(parts), tag, digest or None)


def _marker(root: Path, image: ImageRef) -> Path:
    leaf = image.tag if image.tag else f"@{(image.digest or '').replace(':', '-')}"
    return root / USE_DIR / image.repository / leaf


def mark_used(root: Path, image: ImageRef) -> None:
    """Record that a builder just used ``image`` (best effort: a read-only root only loses the record)."""
    marker = _marker(root, image)
    with suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def mark_reference_used(root: Path, reference: str) -> None:
    image = parse_reference(reference)
    if image is not None:
        mark_used(root, image)


def last_used(root: Path, image: ImageRef) -> float | None:
    try:
        return _marker(root, image).stat().st_mtime
    except OSError:
        return None


def note_first_seen(root: Path, image: ImageRef, now: float) -> None:
    """Start ``image``'s clock at ``now`` unless it has one."""
    marker = _marker(root, image)
    if marker.exists():
        return
    with suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os.utime(marker, (now, now))


def forget(root: Path, image: ImageRef) -> None:
    """Drop ``image``'s record once the image is gone."""
    with suppress(OSError):
        _marker(root, image).unlink()


@contextmanager
def building(root: Path) -> Iterator[None]:
    """Held (shared) for a whole OCI build: image pruning waits for no build and deletes nothing meanwhile."""
    lock_path = root / BUILDS_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
