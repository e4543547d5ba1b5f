"""The Python base image every FLOps image starts from.

There is no Docker Hub here, so the default base is made from scratch: a Debian
``minbase`` root file system from ``debootstrap`` with python3 (3.11 on bookworm),
python3-venv and ca-certificates, trimmed of apt lists, package caches, docs and
locales, imported with ``buildah from scratch`` + ``add`` + ``commit``. It is tagged
``flops/base-python:<digest of the recipe>``, built once, and reused from the
registry (or the local image cache) ever after.

Where an upstream image is reachable, :attr:`BaseSettings.upstream` names it instead
(e.g. ``docker.io/library/python:3.11-slim-bookworm``); it must provide ``python3``
with the ``venv`` module.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from services.builder.errors import BuildError
from services.builder.oci.engine import ContainerEngine, EngineError
from services.builder.oci.images import EnsuredImage, ImageStore, commit, configure
from services.builder.oci.naming import ImageName, image_name, tag_of
from services.builder.oci.platforms import Platform
from services.builder.oci.steps import StepRecord

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
RECIPE_VERSION = 1
DEBOOTSTRAP_TIMEOUT_S = 1200.0
DEBOOTSTRAP_ATTEMPTS = 2
_TRIMMED = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/info", "usr/share/locale")
_SOURCES_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class BaseSettings:
    upstream: str | None = None  # an upstream image reference to use instead of the debootstrap base
    suite: str = DEBIAN_SUITE
    mirror: str | None = None  # default: this host's Debian mirror (from /etc/apt), else deb.debian.org
    packages: tuple[str, ...] = field(default=BASE_PACKAGES)


@dataclass(frozen=True)
class BaseImage:
    """The base to start from, and what identifies it in other images' digests."""

    identity: str
    image: EnsuredImage | None = None  # the FLOps base in the registry
    upstream: str | None = None  # or an upstream reference

    def source(self, store: ImageStore, platform: Platform) -> str:
        """A reference ``buildah from`` can start from (pulls our base when it is only in the registry)."""
        if self.upstream:
            return self.upstream
        assert self.image is not None
        return store.source_reference(self.image.name, platform)


def debian_mirror(suite: str = DEBIAN_SUITE, sources_dir: Path = _SOURCES_DIR) -> str:
    """The Debian archive this host installs ``suite`` from (deb822 ``.sources`` or one-line ``.list`` files)."""
    files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
                if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", "deb").split():
                    for uri in fields.get("URIs", "").split():
                        if not uri.rstrip("/").endswith("-security"):
                            return uri
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    words = [part for part in parts[1:] if not part.startswith("[")]
                    if len(words) >= 2 and words[1] == suite:
                        return words[0]
    return DEFAULT_MIRROR


def recipe(settings: BaseSettings, platform: Platform) -> dict[str, object]:
    return {
        "kind": "debootstrap",
        "suite": settings.suite,
        "variant": "minbase",
        "packages": list(settings.packages),
        "architecture": platform.debian_architecture,
        "trimmed": list(_TRIMMED),
        "version": RECIPE_VERSION,
    }


def base_name(settings: BaseSettings, platform: Platform) -> ImageName:
    return image_name("base-python", tag_of(recipe(settings, platform)))


def _trim(rootfs: Path) -> None:
    for relative in _TRIMMED:
        folder = rootfs / relative
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
    docs = rootfs / "usr/share/doc"
    if docs.is_dir():  # keep the copyright notices, drop the rest
        for path in sorted(docs.rglob("*"), reverse=True):
            if path.is_file() and path.name != "copyright" or path.is_symlink():
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def build_debootstrap_base(
    engine: ContainerEngine, settings: BaseSettings, platform: Platform, name: ImageName
) -> None:
    """debootstrap -> tar -> ``buildah from scratch`` + ``add`` + ``commit`` as ``name.local``."""
    work_root = engine.root / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=work_root))
    try:
        rootfs = work / "rootfs"
        mirror = settings.mirror or debian_mirror(settings.suite)
        cache = engine.root / "debootstrap-cache" / platform.debian_architecture
        cache.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, DEBOOTSTRAP_ATTEMPTS + 1):
            try:
                engine.run(
                    "debootstrap",
                    [
                        "--variant=minbase",
                        f"--arch={platform.debian_architecture}",
                        f"--include={','.join(settings.packages)}",
                        f"--cache-dir={cache}",
                        settings.suite,
                        str(rootfs),
                        mirror,
                    ],
                    timeout=DEBOOTSTRAP_TIMEOUT_S,
                    what=f"debootstrap {settings.suite} from {mirror}",
                )
                break
            except EngineError as error:
                # A dropped download fails the whole run; the packages fetched so far stay in the cache dir.
                if attempt == DEBOOTSTRAP_ATTEMPTS:
                    raise BuildError(f"{error} (after {attempt} attempts)") from None
                shutil.rmtree(rootfs, ignore_errors=True)
        _trim(rootfs)
        archive = work / "rootfs.tar"
        engine.run(
            "tar",
            ["--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."],
            timeout=600,
            what="packing the base root file system",
        )
        shutil.rmtree(rootfs, ignore_errors=True)
        container = (
            engine.buildah("from", "--quiet", f"--platform={platform.name}", "scratch", what="starting the base image")
            .strip()
            .splitlines()[-1]
        )
        try:
            engine.buildah("add", "--quiet", container, str(archive), "/", what="adding the base root file system")
            configure(
                engine,
                container,
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                labels={
                    "org.opencontainers.image.title": "flops/base-python",
                    "org.opencontainers.image.description": (
                        f"Debian {settings.suite} minbase with {', '.join(settings.packages)}"
                    ),
                },
                platform=platform,
            )
            commit(engine, container, name.local)
        finally:
            engine.run("buildah", ["rm", container], timeout=120, check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_base(
    engine: ContainerEngine, store: ImageStore, settings: BaseSettings, platform: Platform, record: StepRecord
) -> BaseImage:
    """The base image for ``platform``: the upstream one, or ours (registry -> local cache -> debootstrap)."""
    if settings.upstream:
        if not engine.image_exists(settings.upstream):
            engine.buildah(
                "pull",
                "--quiet",
                f"--platform={platform.name}",
                settings.upstream,
                timeout=1800,
                what=f"pulling {settings.upstream}",
            )
        identity = engine.buildah(
            "inspect", "--type", "image", "--format", "{{.FromImageID}}", settings.upstream
        ).strip()
        record.outcome, record.detail = "cached", f"upstream base {settings.upstream} ({identity[:12]})"
        return BaseImage(identity=f"{settings.upstream}@{identity}", upstream=settings.upstream)
    name = base_name(settings, platform)
    ensured = store.ensure(name, lambda: build_debootstrap_base(engine, settings, platform, name), record)
    return BaseImage(identity=ensured.identity, image=ensured)
