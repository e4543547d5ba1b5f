"""The per-project dependency image: the base plus ``/opt/venv`` with FLOps' runtime and the repo's requirements.

Tagged by a digest of (base image, runtime requirements and pins, the repository's
requirements, platform): the commit is *not* part of it, so a code-only change
reuses this image and only the thin learner/aggregator layer is rebuilt.

MLflow comes as ``mlflow-skinny`` (same version as the manager's MLflow) plus pandas
and skops: enough to log, register, load and serve models with every flavor, without
the tracking server's dependencies (Flask, SQLAlchemy, matplotlib ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

from services.builder.environment import PINNED_RUNTIME_PACKAGES
from services.builder.oci.base_image import BaseImage
from services.builder.oci.engine import ContainerEngine
from services.builder.oci.images import ImageStore, commit, configure
from services.builder.oci.naming import ImageName, image_name, tag_of
from services.builder.oci.platforms import Platform, host_architecture
from services.builder.oci.python_env import IMAGE_ENVIRONMENT, PackageIndex, install_requirements, run_check

DEPS_FORMAT = 1
# Modules the FL runtime imports; checked inside the image before it is committed.
RUNTIME_IMPORTS = ("flwr", "mlflow", "mlflow.pyfunc", "pandas", "pyarrow.flight", "paho.mqtt.client", "pydantic",
                   "requests", "yaml", "tomli_w", "uvicorn", "dp_accounting")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def runtime_requirements() -> list[str]:
    """What FLOps' own services need in an image (flwr and MLflow pinned to the manager's versions)."""
    mlflow_version = _version("mlflow-skinny") or _version("mlflow")
    return [
        f"flwr=={_version('flwr') or '1.41.0'}",
        f"mlflow-skinny=={mlflow_version}" if mlflow_version else "mlflow-skinny",
        "pandas",
        "skops",
        "numpy>=1.26",
        "pyarrow>=15",
        "pydantic>=2.6,<3",
        "paho-mqtt>=2.0,<3",
        "requests>=2.31",
        "pyyaml>=6",
        "packaging",
        "tomli-w",
        "uvicorn",
        "dp-accounting>=0.4,<1",  # aggregators account differential privacy
    ]


def runtime_constraints() -> list[str]:
    """The binary core pinned to the manager's versions (as local-mode environments do)."""
    pins = []
    for name in PINNED_RUNTIME_PACKAGES:
        version = _version(name)
        if version is not None:
            pins.append(f"{name}=={version}")
    return pins


def deps_name(project: str, base: BaseImage, requirements: Sequence[str], constraints: Sequence[str],
              platform: Platform) -> ImageName:
    document = {
        "base": base.identity,
        "runtime": runtime_requirements(),
        "requirements": sorted(requirements),
        "constraints": sorted(constraints),
        "platform": platform.name,
        "format": DEPS_FORMAT,
    }
    return image_name("deps", tag_of(document), project)


def build_deps(engine: ContainerEngine, store: ImageStore, base: BaseImage, requirements: Sequence[str],
               constraints: Sequence[str], platform: Platform, name: ImageName, index: PackageIndex | None) -> str:
    """Build ``name.local``; returns which installer ran (uv or pip)."""
    source = base.source(store, platform)
    with store.working_container(source, platform) as container:
        installer = install_requirements(engine, container, [*runtime_requirements(), *requirements],
                                         constraints, index=index,
                                         native=platform.architecture == host_architecture())
        imports = ", ".join(RUNTIME_IMPORTS)
        run_check(engine, container, f"import {imports}", "the runtime does not import in the image")
        configure(engine, container, env=IMAGE_ENVIRONMENT,
                  labels={"org.opencontainers.image.title": name.repository,
                          "io.flops.requirements": " ".join(requirements)[:2000]},
                  platform=platform)
        commit(engine, container, name.local)
    return installer
