"""Thin learner and aggregator images: a dependency image plus the app and FLOps' runtime code.

The learner image starts from ``<repo>-deps``, the aggregator image from
``<repo>-aggregator-deps`` (the same plus MLflow's client); each gets the augmented app
at :data:`IMAGE_APP_DIR` and the runtime packages (``flops_utils``, ``services``) at
:data:`IMAGE_RUNTIME_DIR` as one small layer. Their tag is a digest of both dependency
images, the app's files, the runtime's files and the entrypoints: unchanged inputs give
the same tag and nothing is rebuilt.

Services in these images run with ``cwd=/app``; their configs should name
``app_dir=/app`` and a ``work_dir`` under ``/tmp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flops_utils
import services
from services.builder.oci.engine import ContainerEngine
from services.builder.oci.images import ImageStore, commit, configure
from services.builder.oci.naming import ImageName, image_name, tag_of
from services.builder.oci.platforms import Platform
from services.builder.oci.python_env import VENV_DIR, run_check
from services.builder.source import content_hash, copy_tree

IMAGE_APP_DIR = "/app"
IMAGE_RUNTIME_DIR = "/opt/flops"
IMAGE_WORK_DIR = "/tmp/flops"
APP_FORMAT = 2
ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "learner": ("python", "-m", "services.learner.main"),
    "aggregator": ("python", "-m", "services.aggregator.main"),
}


@dataclass(frozen=True)
class StagedApp:
    """The files that go into the thin layer, staged on the host, with their content digests."""

    app_dir: Path
    runtime_dir: Path
    app_digest: str
    runtime_digest: str


def runtime_packages() -> dict[str, Path]:
    """The FLOps runtime packages this builder carries (and copies into images)."""
    return {
        "flops_utils": Path(flops_utils.__file__).resolve().parent,
        "services": Path(next(iter(services.__path__))).resolve(),
    }


def stage(app_dir: Path, destination: Path) -> StagedApp:
    """Copy the app and the runtime (no caches, no .git) under ``destination``."""
    staged_app, runtime = destination / "app", destination / "runtime"
    copy_tree(app_dir, staged_app)
    runtime.mkdir(parents=True)
    for package, source in runtime_packages().items():
        copy_tree(source, runtime / package)
    return StagedApp(staged_app, runtime, content_hash(staged_app), content_hash(runtime))


def app_tag(deps_identities: dict[str, str], staged: StagedApp, platform: Platform) -> str:
    return tag_of(
        {
            "deps": deps_identities,
            "app": staged.app_digest,
            "runtime": staged.runtime_digest,
            "entrypoints": {kind: list(argv) for kind, argv in ENTRYPOINTS.items()},
            "platform": platform.name,
            "format": APP_FORMAT,
        }
    )


def app_names(project: str, tag: str) -> dict[str, ImageName]:
    return {kind: image_name(kind, tag, project) for kind in ENTRYPOINTS}


_VERIFY = """
import importlib, sys
importlib.import_module(sys.argv[1])
import flops_utils, model_manager
if not isinstance(getattr(model_manager, "ModelManager", None), type):
    sys.exit("model_manager.py defines no class ModelManager")
print("ok")
"""


def build_app_image(
    engine: ContainerEngine,
    store: ImageStore,
    deps_source: str,
    staged: StagedApp,
    kind: str,
    name: ImageName,
    platform: Platform,
    labels: dict[str, str],
) -> None:
    """Commit ``name.local``: ``deps_source`` plus the app and the runtime, with ``kind``'s entrypoint."""
    with store.working_container(deps_source, platform) as container:
        engine.buildah("copy", "--quiet", container, str(staged.app_dir), IMAGE_APP_DIR, what="copying the app")
        engine.buildah(
            "copy", "--quiet", container, str(staged.runtime_dir), IMAGE_RUNTIME_DIR, what="copying the FLOps runtime"
        )
        configure(
            engine,
            container,
            workdir=IMAGE_APP_DIR,
            env={"PYTHONPATH": IMAGE_RUNTIME_DIR, "FLOPS_APP_DIR": IMAGE_APP_DIR},
            labels={**labels, "org.opencontainers.image.title": name.repository, "io.flops.service": kind},
            entrypoint=ENTRYPOINTS[kind],
            platform=platform,
        )
        entry_module = ENTRYPOINTS[kind][2]
        run_check(
            engine,
            container,
            _VERIFY.replace("sys.argv[1]", repr(entry_module)),
            f"the {kind} does not import in the image",
            timeout=900,
        )
        commit(engine, container, name.local)


__all__ = [
    "ENTRYPOINTS",
    "IMAGE_APP_DIR",
    "IMAGE_RUNTIME_DIR",
    "IMAGE_WORK_DIR",
    "VENV_DIR",
    "StagedApp",
    "app_names",
    "app_tag",
    "build_app_image",
    "stage",
]
