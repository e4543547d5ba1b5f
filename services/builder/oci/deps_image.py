"""The per-project dependency images: the base plus ``/opt/venv`` with FLOps' runtime and the repo's requirements.

Two images, each holding only what its service runs:

* ``flops/<repo>-deps`` (the learner's): flwr's client side (the learner runs the
  ClientApp in-process over FLOps' own gRPC link), grpcio, numpy, pyarrow (Arrow
  Flight for the data server), pydantic, paho-mqtt and the repository's requirements.
  flwr declares its SuperLink/CLI stack as dependencies (SQLAlchemy, Alembic, FastAPI,
  Starlette, uvicorn, prompt-toolkit and uv itself); the in-process runtime never imports
  them, so they are left out (:data:`LEARNER_EXCLUDES`).
* ``flops/<repo>-aggregator-deps``: the learner's dependency image plus MLflow's client
  (``mlflow-skinny`` of the manager's MLflow version, pandas, skops) and uvicorn: the
  aggregator logs and registers the model, and the trained-model and serving images
  start from it. No tracking server, UI, Flask or SQLAlchemy stack.

Tagged by a digest of (base or parent image, requirements and pins, platform): the
commit is *not* part of it, so a code-only change reuses both images and only the thin
learner/aggregator layer is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

from services.builder.environment import PINNED_RUNTIME_PACKAGES
from services.builder.oci.base_image import BaseImage
from services.builder.oci.engine import ContainerEngine
from services.builder.oci.images import EnsuredImage, ImageStore, commit, configure
from services.builder.oci.naming import ImageName, image_name, tag_of
from services.builder.oci.platforms import Platform
from services.builder.oci.python_env import IMAGE_ENVIRONMENT, PackageIndex, install_requirements, run_check

DEPS_FORMAT = 2
# Modules the learner imports; checked inside the image before it is committed.
LEARNER_IMPORTS = (
    "flwr.app",
    "flwr.clientapp",
    "flwr.common.serde",
    "grpc",
    "numpy",
    "pyarrow.flight",
    "paho.mqtt.client",
    "pydantic",
    "tomli_w",
)
# ... and the aggregator (plus the learner's).
AGGREGATOR_IMPORTS = (
    "flwr.serverapp.strategy",
    "mlflow",
    "mlflow.pyfunc",
    "pandas",
    "requests",
    "yaml",
    "uvicorn",
    "dp_accounting",
)
# flwr's declared server/CLI dependencies that FLOps' in-process runtime never imports.
LEARNER_EXCLUDES = ("uv", "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "prompt-toolkit")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def learner_requirements() -> list[str]:
    """What a learner needs in its image besides the repository's requirements (flwr pinned to the manager's)."""
    return [
        f"flwr=={_version('flwr') or '1.41.0'}",
        "numpy>=1.26",
        "pyarrow>=15",
        "pydantic>=2.6,<3",
        "paho-mqtt>=2.0,<3",
        "tomli-w",
    ]


def aggregator_requirements() -> list[str]:
    """Added on top of the learner's for the aggregator: MLflow's client (the manager's version) and serving."""
    mlflow_version = _version("mlflow-skinny") or _version("mlflow")
    return [
        f"mlflow-skinny=={mlflow_version}" if mlflow_version else "mlflow-skinny",
        "pandas",
        "skops",
        "requests>=2.31",
        "pyyaml>=6",
        "packaging",
        "uvicorn",
        "dp-accounting>=0.4,<1",  # aggregators account differential privacy
    ]


def runtime_requirements() -> list[str]:
    """Everything FLOps' services need in an image (the aggregator image's content)."""
    return [*learner_requirements(), *aggregator_requirements()]


def runtime_constraints() -> list[str]:
    """The binary core pinned to the manager's versions (as local-mode environments do)."""
    pins = []
    for name in PINNED_RUNTIME_PACKAGES:
        version = _version(name)
        if version is not None:
            pins.append(f"{name}=={version}")
    return pins


def deps_name(
    project: str, base: BaseImage, requirements: Sequence[str], constraints: Sequence[str], platform: Platform
) -> ImageName:
    document = {
        "base": base.identity,
        "runtime": learner_requirements(),
        "excludes": list(LEARNER_EXCLUDES),
        "requirements": sorted(requirements),
        "constraints": sorted(constraints),
        "platform": platform.name,
        "format": DEPS_FORMAT,
    }
    return image_name("deps", tag_of(document), project)


def aggregator_deps_name(project: str, deps: EnsuredImage, constraints: Sequence[str], platform: Platform) -> ImageName:
    document = {
        "deps": deps.identity,
        "runtime": aggregator_requirements(),
        "constraints": sorted(constraints),
        "platform": platform.name,
        "format": DEPS_FORMAT,
    }
    return image_name("aggregator-deps", tag_of(document), project)


def build_deps(
    engine: ContainerEngine,
    store: ImageStore,
    base: BaseImage,
    requirements: Sequence[str],
    constraints: Sequence[str],
    platform: Platform,
    name: ImageName,
    index: PackageIndex | None,
) -> str:
    """Build ``name.local`` (the learner's dependency image); returns which installer ran (uv or pip)."""
    source = base.source(store, platform)
    with store.working_container(source, platform) as container:
        installer = install_requirements(
            engine,
            container,
            [*learner_requirements(), *requirements],
            constraints,
            excludes=LEARNER_EXCLUDES,
            index=index,
            platform=platform,
        )
        run_check(
            engine,
            container,
            f"import {', '.join(LEARNER_IMPORTS)}",
            "the learner runtime does not import in the image",
            timeout=900,
        )
        configure(
            engine,
            container,
            env=IMAGE_ENVIRONMENT,
            labels={
                "org.opencontainers.image.title": name.repository,
                "io.flops.requirements": " ".join(requirements)[:2000],
            },
            platform=platform,
        )
        commit(engine, container, name.local)
    return installer


def build_aggregator_deps(
    engine: ContainerEngine,
    store: ImageStore,
    deps: EnsuredImage,
    constraints: Sequence[str],
    platform: Platform,
    name: ImageName,
    index: PackageIndex | None,
) -> str:
    """Build ``name.local``: the learner's dependency image plus MLflow's client; returns the installer."""
    with store.working_container(store.source_reference(deps.name, platform), platform) as container:
        installer = install_requirements(
            engine, container, aggregator_requirements(), constraints, index=index, platform=platform
        )
        run_check(
            engine,
            container,
            f"import {', '.join(LEARNER_IMPORTS + AGGREGATOR_IMPORTS)}",
            "the aggregator runtime does not import in the image",
            timeout=900,
        )
        configure(engine, container, labels={"org.opencontainers.image.title": name.repository}, platform=platform)
        commit(engine, container, name.local)
    return installer
