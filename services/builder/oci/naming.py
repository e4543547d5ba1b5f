"""Image names and content digests.

Images are named by project repository and content digest:
``flops/<repo>-deps:<deps digest>``, ``flops/<repo>-learner:<app digest>``,
``flops/<repo>-aggregator:<app digest>``, ``flops/base-python:<recipe digest>``.
A tag is the first :data:`TAG_LENGTH` hex digits of a sha256 over everything that
goes into the image, so equal inputs give equal tags on any machine.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from urllib.parse import urlparse

NAMESPACE = "flops"
TAG_LENGTH = 24
LOCAL_REGISTRY = "localhost"  # how buildah names images that live only in local storage
_INVALID = re.compile(r"[^a-z0-9]+")


def digest_of(document: object) -> str:
    """sha256 hex of a JSON document (sorted keys)."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tag_of(document: object) -> str:
    return digest_of(document)[:TAG_LENGTH]


def repo_slug(repo_url: str) -> str:
    """A registry-safe short name for a repository URL or path (``.../sklearn_digits.git`` -> ``sklearn-digits``)."""
    text = repo_url.strip().rstrip("/")
    parsed = urlparse(text)
    path = parsed.path if parsed.scheme else text
    last = re.split(r"[/:\\]", path.rstrip("/"))[-1] if path else ""
    last = last.removesuffix(".git").lower()
    slug = _INVALID.sub("-", last).strip("-")[:40].strip("-")
    return slug or "project"


@dataclass(frozen=True)
class ImageName:
    """``repository`` (e.g. ``flops/sklearn-digits-learner``) and ``tag``; placed in local storage or a registry."""

    repository: str
    tag: str

    @property
    def local(self) -> str:
        return f"{LOCAL_REGISTRY}/{self.repository}:{self.tag}"

    def remote(self, registry_address: str) -> str:
        return f"{registry_address}/{self.repository}:{self.tag}"

    def with_tag(self, tag: str) -> ImageName:
        return ImageName(self.repository, tag)


def image_name(kind: str, tag: str, project: str | None = None) -> ImageName:
    """``flops/<project>-<kind>:<tag>``, or ``flops/<kind>:<tag>`` for shared images such as the base."""
    name = f"{project}-{kind}" if project else kind
    return ImageName(f"{NAMESPACE}/{name}", tag)


def human_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
