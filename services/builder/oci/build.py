"""OCI-mode build: repository -> base, dependency and thin learner/aggregator images in the registry.

Steps (each a ``BuildStep`` with its duration; image steps carry the image's size):

1. ``platforms``      the requested platforms can be built here (else one clear line)
2. ``clone``          fetch the repository
3. ``contract``       static check of the ML repo contract; the dependency list
4. ``augment``        the app directory (user code + generated Flower app)
5. ``base-image``     ``flops/base-python:<recipe>`` (registry -> local cache -> debootstrap)
6. ``deps-image``     ``flops/<repo>-deps:<deps digest>`` (the learner's; not rebuilt for code-only changes)
7. ``aggregator-deps-image`` ``flops/<repo>-aggregator-deps:<digest>`` (plus MLflow's client)
8. ``learner-image``  ``flops/<repo>-learner:<app digest>``
9. ``aggregator-image`` ``flops/<repo>-aggregator:<app digest>``

Every image step asks the registry first, so a second build of the same commit runs
no buildah command at all. With several platforms, steps 5-9 run per platform
(``deps-image linux/arm64`` ...) and ``learner-image`` / ``aggregator-image`` push one
manifest list each; the result keeps every platform's manifest digest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from flops_utils.mqtt_catalogue import BuildResult
from flops_utils.service_config import BuilderConfig, RegistrySettings
from services.builder.augment import assemble_app
from services.builder.cache import WORK_DIR
from services.builder.contract import check_contract
from services.builder.digest import build_digest, runtime_versions
from services.builder.errors import BuildError
from services.builder.oci.app_images import app_names, app_tag, build_app_image, stage
from services.builder.oci.base_image import BaseImage, BaseSettings, ensure_base
from services.builder.oci.deps_image import (
    aggregator_deps_name,
    build_aggregator_deps,
    build_deps,
    deps_name,
    runtime_constraints,
)
from services.builder.oci.engine import ContainerEngine, EngineSettings
from services.builder.oci.image_use import building
from services.builder.oci.images import FAST_COMPRESSION_LEVEL, Compression, EnsuredImage, ImageStore
from services.builder.oci.naming import ImageName, repo_slug, tag_of
from services.builder.oci.platforms import Platform, check_platforms
from services.builder.oci.python_env import PackageIndex
from services.builder.oci.steps import Reporter, StepLog, StepRecord
from services.builder.source import fetch_source

BASE_IMAGE_ENV = "FLOPS_OCI_BASE_IMAGE"
COMPRESSION_ENV = "FLOPS_OCI_COMPRESSION"


@dataclass(frozen=True)
class OciSettings:
    registry: RegistrySettings
    engine: EngineSettings = field(default_factory=EngineSettings)
    base: BaseSettings = field(default_factory=BaseSettings)
    compression: Compression = "gzip"
    compression_level: int | None = FAST_COMPRESSION_LEVEL  # None: the tool's default level
    index: PackageIndex | None = None  # default: the host's PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, else PyPI

    @classmethod
    def from_builder_config(cls, config: BuilderConfig) -> OciSettings:
        """Settings for a builder service: the registry from its config, the rest from the environment."""
        if config.registry is None:
            raise BuildError("mode 'oci' needs a registry in the builder configuration", step="platforms")
        compression = os.environ.get(COMPRESSION_ENV, "gzip")
        return cls(
            registry=config.registry,
            base=BaseSettings(upstream=os.environ.get(BASE_IMAGE_ENV) or None),
            compression="zstd" if compression == "zstd" else "gzip",
        )


@dataclass(frozen=True)
class OciBuildResult:
    digest: str  # the app images' tag
    commit: str
    cached: bool  # nothing was built or pushed
    learner: EnsuredImage
    aggregator: EnsuredImage
    deps: tuple[EnsuredImage, ...]  # the learner's dependency image, one per platform
    aggregator_deps: tuple[EnsuredImage, ...]  # one per platform
    base: tuple[EnsuredImage, ...]  # one per platform (empty with an upstream base)
    steps: tuple[StepRecord, ...]
    total_seconds: float
    platform_images: dict[str, dict[str, EnsuredImage]] = field(default_factory=dict)  # kind -> platform -> image

    @property
    def platform_digests(self) -> dict[str, dict[str, str]]:
        """kind -> platform name -> that platform's manifest digest (what each node pulls)."""
        return {
            kind: {platform: image.digest for platform, image in images.items()}
            for kind, images in self.platform_images.items()
        }


def _step_name(kind: str, platform: Platform, platforms: list[Platform]) -> str:
    return kind if len(platforms) == 1 else f"{kind} {platform.name}"


def _per_platform(name: ImageName, platform: Platform, platforms: list[Platform]) -> ImageName:
    return name if len(platforms) == 1 else name.with_tag(f"{name.tag}-{platform.suffix}")


class _Images:
    """The image steps of one build (steps 5-8)."""

    def __init__(self, config: BuilderConfig, settings: OciSettings, engine: ContainerEngine, steps: StepLog) -> None:
        self.config = config
        self.settings = settings
        self.engine = engine
        self.steps = steps
        self.store = ImageStore(engine, settings.registry, settings.compression, settings.compression_level)
        self.project = repo_slug(config.repo_url)

    def base(self, platform: Platform, platforms: list[Platform]) -> BaseImage:
        with self.steps.step(_step_name("base-image", platform, platforms)) as record:
            return ensure_base(self.engine, self.store, self.settings.base, platform, record)

    def deps(
        self, base: BaseImage, requirements: tuple[str, ...], platform: Platform, platforms: list[Platform]
    ) -> tuple[EnsuredImage, EnsuredImage]:
        """The learner's dependency image and the aggregator's (the same plus MLflow's client)."""
        constraints = runtime_constraints()
        name = _per_platform(deps_name(self.project, base, requirements, constraints, platform), platform, platforms)
        with self.steps.step(_step_name("deps-image", platform, platforms)) as record:

            def build() -> None:
                installer = build_deps(
                    self.engine, self.store, base, requirements, constraints, platform, name, self.settings.index
                )
                record.detail = f"installed with {installer}"

            deps = self.store.ensure(name, build, record)
        upper = _per_platform(aggregator_deps_name(self.project, deps, constraints, platform), platform, platforms)
        with self.steps.step(_step_name("aggregator-deps-image", platform, platforms)) as record:

            def build_upper() -> None:
                build_aggregator_deps(self.engine, self.store, deps, constraints, platform, upper, self.settings.index)

            return deps, self.store.ensure(upper, build_upper, record)

    def apps(
        self,
        deps: dict[str, EnsuredImage],
        app_dir: Path,
        work: Path,
        commit: str,
        platform: Platform,
        platforms: list[Platform],
    ) -> dict[str, EnsuredImage]:
        """The thin images; ``deps`` maps each kind (learner, aggregator) to the image it starts from."""
        staged = stage(app_dir, work / f"stage-{platform.suffix}")
        tag = app_tag({kind: image.identity for kind, image in deps.items()}, staged, platform)
        names = {kind: _per_platform(name, platform, platforms) for kind, name in app_names(self.project, tag).items()}
        labels = {"org.opencontainers.image.revision": commit, "org.opencontainers.image.source": self.config.repo_url}
        ensured: dict[str, EnsuredImage] = {}
        for kind, name in names.items():
            source = deps[kind]
            with self.steps.step(_step_name(f"{kind}-image", platform, platforms)) as record:

                def build(kind: str = kind, name: ImageName = name, source: EnsuredImage = source) -> None:
                    build_app_image(
                        self.engine,
                        self.store,
                        self.store.source_reference(source.name, platform),
                        staged,
                        kind,
                        name,
                        platform,
                        {**labels, "io.flops.deps": source.reference},
                    )

                ensured[kind] = self.store.ensure(name, build, record)
        return ensured

    def manifest_lists(self, per_platform: list[dict[str, EnsuredImage]]) -> dict[str, EnsuredImage]:
        tag = tag_of([image.name.tag for images in per_platform for image in images.values()])
        lists = {}
        for kind, name in app_names(self.project, tag).items():
            with self.steps.step(f"{kind}-image") as record:
                lists[kind] = self.store.ensure_list(name, [images[kind] for images in per_platform], record)
        return lists


def build_images(
    config: BuilderConfig,
    report: Reporter | None = None,
    *,
    base_dir: Path | None = None,
    settings: OciSettings | None = None,
    engine: ContainerEngine | None = None,
) -> OciBuildResult:
    """Build (or find) every image for ``config.repo_url``; raises :class:`BuildError` with one line."""
    started = time.monotonic()
    steps = StepLog(project_id=config.project_id, sender=config.instance_name or "builder", report=report)
    with steps.step("platforms") as record:
        platforms = check_platforms(config.platforms)
        record.detail = ", ".join(platform.name for platform in platforms)
    settings = settings or OciSettings.from_builder_config(config)
    engine = engine or ContainerEngine(settings.engine)
    images = _Images(config, settings, engine, steps)
    cache_dir = Path(config.cache_dir).expanduser().resolve()
    (cache_dir / WORK_DIR).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="oci-build-", dir=cache_dir / WORK_DIR))
    build_lock = ExitStack()
    build_lock.enter_context(building(engine.root))  # the image upkeep deletes nothing while this runs
    try:
        with steps.step("clone") as record:
            checkout = fetch_source(
                config.repo_url,
                config.repo_ref,
                work / "repo",
                base_dir=base_dir,
                credentials=config.repo_credentials,
                access=config.repo_access,
            )
            record.detail = f"{checkout.kind} {checkout.commit[:12]}"
        with steps.step("contract") as record:
            dependencies = check_contract(checkout.path)
            record.detail = f"{dependencies.file}: {', '.join(dependencies.requirements) or 'no requirements'}"
        with steps.step("augment") as record:
            digest = build_digest(checkout.commit, dependencies.requirements, runtime_versions())
            build_info = {
                "commit": checkout.commit,
                "source": checkout.kind,
                "repo_url": config.repo_url,
                "repo_ref": config.repo_ref,
                "dependency_file": dependencies.file,
                "requirements": list(dependencies.requirements),
                "mode": "oci",
            }
            app_dir = assemble_app(checkout.path, work / "apps", digest, build_info)
            record.detail = f"app for commit {checkout.commit[:12]}"
        per_platform: list[dict[str, EnsuredImage]] = []
        bases: list[EnsuredImage] = []
        deps_images: list[EnsuredImage] = []
        upper_images: list[EnsuredImage] = []
        for platform in platforms:
            base = images.base(platform, platforms)
            if base.image is not None:
                bases.append(base.image)
            deps, upper = images.deps(base, dependencies.requirements, platform, platforms)
            deps_images.append(deps)
            upper_images.append(upper)
            sources = {"learner": deps, "aggregator": upper}
            per_platform.append(images.apps(sources, app_dir, work, checkout.commit, platform, platforms))
        final = per_platform[0] if len(platforms) == 1 else images.manifest_lists(per_platform)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        images.store.registry.close()
        build_lock.close()
    image_steps = [record for record in steps.records if record.step.split()[0].endswith("-image")]
    return OciBuildResult(
        digest=final["learner"].name.tag,
        commit=checkout.commit,
        cached=all(record.outcome == "cached" for record in image_steps),
        learner=final["learner"],
        aggregator=final["aggregator"],
        deps=tuple(deps_images),
        aggregator_deps=tuple(upper_images),
        base=tuple(bases),
        steps=tuple(steps.records),
        total_seconds=round(time.monotonic() - started, 3),
        platform_images={
            kind: {platform.name: images_of[kind] for platform, images_of in zip(platforms, per_platform, strict=True)}
            for kind in ("learner", "aggregator")
        },
    )


def build_oci(
    config: BuilderConfig,
    report: Reporter,
    *,
    base_dir: Path | None = None,
    settings: OciSettings | None = None,
    engine: ContainerEngine | None = None,
) -> BuildResult:
    """The builder service's ``mode="oci"``: build, then publish one ``BuildResult`` through ``report``."""
    built = build_images(config, report, base_dir=base_dir, settings=settings, engine=engine)
    result = BuildResult(
        project_id=config.project_id,
        sender=config.instance_name or "builder",
        digest=built.digest,
        commit=built.commit,
        cached=built.cached,
        learner_image=built.learner.reference,
        aggregator_image=built.aggregator.reference,
        platform_digests=built.platform_digests,
        total_seconds=built.total_seconds,
    )
    report(result)
    return result
