"""Making sure an image is in the registry: look there first, then in local storage, build last.

:meth:`ImageStore.ensure` is the one cache rule every FLOps image follows:

1. the registry has ``name`` -> nothing to do (no buildah command runs at all);
2. local storage has it (an earlier build, e.g. for another registry) -> push it;
3. otherwise build it (the caller's function commits it to local storage), then push.

Several builders may want the same image at once; a lock per image makes the later
ones wait and then find it in the registry.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flops_utils.service_config import RegistrySettings
from services.builder.oci.engine import ContainerEngine
from services.builder.oci.image_use import ImageRef, mark_reference_used, mark_used
from services.builder.oci.naming import ImageName, human_size
from services.builder.oci.platforms import Platform
from services.builder.oci.registry import ManifestInfo, RegistryClient
from services.builder.oci.steps import StepRecord

Compression = Literal["gzip", "zstd"]
PUSH_TIMEOUT_S = 1800.0
# gzip level 1: about 13 % larger layers than the default level, 2-3x faster pushes (measured on the
# sklearn example's 920 MB dependency image); the registry is internal, so push time matters more.
FAST_COMPRESSION_LEVEL = 1


@dataclass(frozen=True)
class EnsuredImage:
    name: ImageName
    reference: str  # registry/repository:tag
    digest: str  # manifest (or manifest list) digest in the registry
    built: bool  # False: found in the registry or in local storage
    compressed_bytes: int
    size_bytes: int | None = None  # uncompressed, when the image is in local storage
    image_id: str = ""  # config digest: names the content whatever the layer compression

    @property
    def identity(self) -> str:
        """What other images' digests use to name this one."""
        return f"{self.name.repository}@{self.image_id or self.digest}"

    @property
    def pinned(self) -> str:
        """registry/repository@sha256:..."""
        return f"{self.reference.rsplit(':', 1)[0]}@{self.digest}"


class ImageStore:
    """Local storage (through :class:`ContainerEngine`) plus one registry."""

    def __init__(
        self,
        engine: ContainerEngine,
        registry: RegistrySettings,
        compression: Compression = "gzip",
        compression_level: int | None = FAST_COMPRESSION_LEVEL,
    ) -> None:
        self.engine = engine
        self.registry_settings = registry
        self.registry = RegistryClient(registry, containers_root=engine.root)
        self.compression = compression
        self.compression_level = compression_level

    @property
    def address(self) -> str:
        return self.registry_settings.address

    def _transport_args(self) -> list[str]:
        return self.engine.transport_args(self.registry_settings)

    def in_registry(self, name: ImageName) -> ManifestInfo | None:
        return self.registry.manifest(name.repository, name.tag)

    def push(self, local_reference: str, name: ImageName) -> ManifestInfo:
        level = [] if self.compression_level is None else ["--compression-level", str(self.compression_level)]
        with tempfile.TemporaryDirectory(prefix="flops-push-") as scratch:
            digest_file = Path(scratch) / "digest"
            self.engine.buildah(
                "push",
                "--quiet",
                *self._transport_args(),
                "--compression-format",
                self.compression,
                *level,
                "--digestfile",
                str(digest_file),
                local_reference,
                f"docker://{name.remote(self.address)}",
                timeout=PUSH_TIMEOUT_S,
                what=f"pushing {name.remote(self.address)}",
            )
        info = self.in_registry(name)
        if info is None:
            raise RuntimeError(f"{name.remote(self.address)} is not in the registry after the push")
        return info

    def source_reference(self, name: ImageName, platform: Platform | None = None) -> str:
        """A reference ``buildah from`` can use without pulling when the image is local; else pull it first."""
        if self.engine.image_exists(name.local):
            return name.local
        return self.pull_reference(name.remote(self.address), platform)

    def pull_reference(self, reference: str, platform: Platform | None = None) -> str:
        """Any image reference, pulled unless present (with our credentials when it is in our registry)."""
        mark_reference_used(self.engine.root, reference)
        if self.engine.image_exists(reference):
            return reference
        args = ["pull", "--quiet"]
        if reference.startswith(f"{self.address}/"):
            args += self._transport_args()
        if platform is not None:
            args += ["--platform", platform.name]
        self.engine.buildah(*args, f"docker://{reference}", timeout=PUSH_TIMEOUT_S, what=f"pulling {reference}")
        return reference

    @contextmanager
    def working_container(self, source: str, platform: Platform | None = None) -> Iterator[str]:
        """``buildah from source`` (never pulling: use :meth:`source_reference`), removed afterwards."""
        args = ["from", "--quiet", "--pull=never"]
        if platform is not None:
            args += ["--platform", platform.name]
        container = self.engine.buildah(*args, source, what=f"starting from {source}").strip().splitlines()[-1]
        try:
            yield container
        finally:
            self.engine.run("buildah", ["rm", container], timeout=120, check=False)

    def ensure(self, name: ImageName, build: Callable[[], None], record: StepRecord) -> EnsuredImage:
        """Registry first, local storage second, ``build()`` last (it must commit ``name.local``)."""
        remote = name.remote(self.address)
        found = self.in_registry(name)
        if found is None:
            with self.engine.locked(remote):
                found = self.in_registry(name)  # another builder may have pushed it while we waited
                if found is None:
                    built = not self.engine.image_exists(name.local)
                    if built:
                        build()
                    pushed = self.push(name.local, name)
                    size = self.engine.image_size(name.local)
                    record.outcome = "done" if built else "cached"
                    origin = "built and pushed" if built else "pushed from the local image cache"
                    return self._finish(record, name, pushed, built, size, origin)
        record.outcome = "cached"
        return self._finish(record, name, found, False, None, "already in the registry")

    def _finish(
        self, record: StepRecord, name: ImageName, info: ManifestInfo, built: bool, size: int | None, origin: str
    ) -> EnsuredImage:
        image = EnsuredImage(
            name=name,
            reference=name.remote(self.address),
            digest=info.digest,
            built=built,
            compressed_bytes=info.compressed_bytes,
            size_bytes=size,
            image_id=info.config_digest,
        )
        record.image, record.size_bytes, record.compressed_bytes = image.reference, size, info.compressed_bytes
        mark_used(self.engine.root, ImageRef(name.repository, name.tag))  # for the image upkeep
        sizes = f"{human_size(info.compressed_bytes)} compressed"
        if size is not None:
            sizes = f"{human_size(size)}, {sizes}"
        record.detail = f"{image.reference} {origin} ({sizes})"
        return image

    def ensure_list(self, name: ImageName, members: Sequence[EnsuredImage], record: StepRecord) -> EnsuredImage:
        """A manifest list at ``name`` over per-platform images already in the registry."""
        found = self.in_registry(name)
        if found is not None:
            record.outcome = "cached"
            return self._finish(record, name, found, False, None, "already in the registry")
        remote = name.remote(self.address)
        with self.engine.locked(remote):
            local_list = f"{name.local}-list"
            self.engine.run("buildah", ["manifest", "rm", local_list], timeout=60, check=False)
            self.engine.buildah("manifest", "create", local_list, what="creating a manifest list")
            try:
                for member in members:
                    self.engine.buildah(
                        "manifest",
                        "add",
                        *self._transport_args(),
                        local_list,
                        f"docker://{member.pinned}",
                        what=f"adding {member.reference}",
                    )
                self.engine.buildah(
                    "manifest",
                    "push",
                    "--all",
                    "--quiet",
                    *self._transport_args(),
                    local_list,
                    f"docker://{remote}",
                    timeout=PUSH_TIMEOUT_S,
                    what=f"pushing {remote}",
                )
            finally:
                self.engine.run("buildah", ["manifest", "rm", local_list], timeout=60, check=False)
            info = self.in_registry(name)
            if info is None:
                raise RuntimeError(f"{remote} is not in the registry after the push")
        record.outcome = "done"
        return self._finish(record, name, info, True, None, f"manifest list for {', '.join(info.platforms)}")


def configure(
    engine: ContainerEngine,
    container: str,
    *,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    entrypoint: Sequence[str] | None = None,
    workdir: str | None = None,
    ports: Sequence[int] = (),
    platform: Platform | None = None,
) -> None:
    """``buildah config`` in one call."""
    args = ["config"]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    if entrypoint is not None:
        args += ["--entrypoint", json.dumps(list(entrypoint)), "--cmd", "[]"]
    if workdir is not None:
        args += ["--workingdir", workdir]
    for port in ports:
        args += ["--port", f"{port}/tcp"]
    if platform is not None:
        args += ["--os", platform.os, "--arch", platform.architecture]
        if platform.variant:
            args += ["--variant", platform.variant]
    engine.buildah(*args, container, what="configuring the image")


def commit(engine: ContainerEngine, container: str, reference: str) -> None:
    engine.buildah(
        "commit",
        "--quiet",
        "--format",
        "oci",
        container,
        reference,
        timeout=PUSH_TIMEOUT_S,
        what=f"committing {reference}",
    )
