"""Inference images for trained models: MLflow's scoring protocol (``/invocations``, ``/ping``) in a container.

The reference system ran ``mlflow models generate-dockerfile`` and built an adapted
Dockerfile. Here the same result comes from buildah directly:

1. download the model's artifacts from MLflow (``mlflow.artifacts.download_artifacts``);
2. start from a base that has Python (by default the FLOps base image; pass the
   project's aggregator image to reuse its already installed dependencies);
3. install the model's ``requirements.txt`` into ``/opt/venv`` (``mlflow`` becomes
   ``mlflow-skinny`` of the same version plus pandas: the scoring server needs no
   tracking-server dependencies) - a no-op when the base already satisfies them;
4. copy the model to ``/opt/model`` and FLOps' serving code (``flops_utils`` and
   ``services.serving``) to ``/opt/flops``; the entrypoint
   (:mod:`services.serving.image_entry`) serves the model with MLflow's own scoring server
   under uvicorn, behind the token guard of :mod:`services.serving.guard`. It needs
   ``FLOPS_SERVING_TOKEN_SHA256`` (the digests of the tokens that may call ``/invocations``)
   or ``FLOPS_SERVING_OPEN=1`` and refuses to start with neither. ``/opt/venv/bin`` is on
   PATH, so ``uvicorn`` (and ``mlflow models serve``) also work from a shell in the image;
   the build checks that before committing (a missing ``uvicorn`` once made serving
   exit with code 127).

The image listens on ``$UVICORN_HOST:$UVICORN_PORT`` (default ``0.0.0.0:8080``): set
``UVICORN_PORT`` to serve on another port with host networking. The pushed image's
digest is written to the model's MLflow run as the tag ``flops.model_image``.

With several ``platforms`` (the project's ``supported_platforms``) one image is built per
platform (``<tag>-arm64``; a foreign one installs its wheels from the host, see
``python_env``) and ``<name>:<tag>`` is a manifest list over them; each platform's digest
is also tagged on the run (``flops.model_image.linux/arm64``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from flops_utils.message_text import one_line
from flops_utils.service_config import RegistrySettings
from services.builder.errors import BuildError
from services.builder.oci.app_images import IMAGE_RUNTIME_DIR, runtime_packages
from services.builder.oci.base_image import BaseSettings, ensure_base
from services.builder.oci.deps_image import runtime_requirements
from services.builder.oci.engine import ContainerEngine, EngineSettings
from services.builder.oci.image_use import building
from services.builder.oci.images import Compression, EnsuredImage, ImageStore, commit, configure
from services.builder.oci.naming import ImageName, image_name, tag_of
from services.builder.oci.platforms import Platform, check_platforms
from services.builder.oci.python_env import IMAGE_ENVIRONMENT, PackageIndex, install_requirements, run_check
from services.builder.oci.steps import Reporter, StepLog, StepRecord
from services.builder.source import content_hash, copy_tree
from services.serving.image_entry import MODEL_PATH_ENV

log = logging.getLogger("flops.builder.oci")

MODEL_IMAGE_PORT = 8080
MODEL_DIR = "/opt/model"
SERVING_ENTRYPOINT = ("python", "-m", "services.serving.image_entry")
RUN_TAG = "flops.model_image"
MODEL_FORMAT = 2  # 2: the token guard and FLOps' serving code in the image
DEFAULT_IMAGE_NAME = "trained-model"

_VERIFY = f"""
import shutil, sys
import mlflow.pyfunc, mlflow.pyfunc.scoring_server, uvicorn
import services.serving.image_entry, services.serving.guard
if shutil.which("uvicorn") is None:
    sys.exit("uvicorn is not on PATH in the image")
mlflow.pyfunc.load_model({MODEL_DIR!r})
print("ok")
"""


@dataclass(frozen=True)
class ModelImageResult:
    image: EnsuredImage
    model_uri: str
    run_id: str | None
    run_tagged: bool
    steps: tuple[StepRecord, ...] = field(default=())
    total_seconds: float = 0.0
    platform_digests: dict[str, str] = field(default_factory=dict)  # platform -> its manifest digest

    @property
    def reference(self) -> str:
        """registry/flops/<name>:<tag>"""
        return self.image.reference

    @property
    def digest(self) -> str:
        """The pushed manifest's digest (sha256:...)."""
        return self.image.digest

    @property
    def pinned(self) -> str:
        """registry/flops/<name>@sha256:..."""
        return self.image.pinned

    @property
    def cached(self) -> bool:
        return not self.image.built


def flavor_extras(model_dir: Path) -> list[str]:
    """Packages a model's serialization needs that MLflow may leave out of requirements.txt."""
    try:
        document = yaml.safe_load((model_dir / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    sklearn = (document.get("flavors") or {}).get("sklearn") or {}
    serialization = str(sklearn.get("serialization_format", "")).lower()
    return [name for name in ("skops", "cloudpickle") if name == serialization]


def serving_requirements(lines: Sequence[str], extras: Sequence[str] = ()) -> list[str]:
    """A model's ``requirements.txt`` for serving: mlflow -> mlflow-skinny (same version) plus pandas."""
    result: list[str] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise BuildError(f"the model's requirements.txt has an invalid line {line!r}") from None
        if canonicalize_name(requirement.name) == "mlflow":
            requirement.name = "mlflow-skinny"
            requirement.extras = set()
        result.append(str(requirement))
    names = {canonicalize_name(Requirement(line).name) for line in result}
    if "mlflow-skinny" not in names:
        result.append(next(line for line in runtime_requirements() if line.startswith("mlflow-skinny")))
    result += [extra for extra in ("pandas", "uvicorn", *extras) if extra not in names]
    return result


def stage_serving_runtime(destination: Path) -> Path:
    """``flops_utils`` and ``services.serving`` (what the image's entrypoint runs) under ``destination``."""
    packages = runtime_packages()
    copy_tree(packages["flops_utils"], destination / "flops_utils")
    copy_tree(packages["services"] / "serving", destination / "services" / "serving")
    shutil.copy2(packages["services"] / "__init__.py", destination / "services" / "__init__.py")
    return destination


def download_model(model_uri: str, tracking_uri: str | None, destination: Path) -> Path:
    import mlflow
    import mlflow.artifacts

    if tracking_uri:  # models:/ URIs resolve through the registry, which MLflow 3 does not derive from tracking_uri
        mlflow.set_registry_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, tracking_uri=tracking_uri, dst_path=str(destination)
        )
    except Exception as error:
        raise BuildError(f"cannot download model {model_uri}: {one_line(str(error), 240)}") from None
    path = Path(local)
    if not (path / "MLmodel").is_file():
        raise BuildError(f"{model_uri} is not an MLflow model (no MLmodel file)")
    return path


def model_run_id(model_uri: str, tracking_uri: str | None) -> str | None:
    """The MLflow run that logged the model, when the URI leads to one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if model_uri.startswith("runs:/"):
            return model_uri.removeprefix("runs:/").split("/", 1)[0] or None
        if not model_uri.startswith("models:/"):
            return None
        path = model_uri.removeprefix("models:/").strip("/")
        if path.startswith("m-") and "/" not in path:
            return client.get_logged_model(path).source_run_id
        if "@" in path:
            name, alias = path.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = path.partition("/")
        return client.get_model_version(name, version).run_id if version.isdigit() else None
    except Exception as error:
        log.warning("no run found for %s: %s", model_uri, one_line(str(error), 200))
        return None


def tag_run(
    run_id: str, tracking_uri: str | None, image: EnsuredImage, members: dict[str, EnsuredImage] | None = None
) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.set_tag(run_id, RUN_TAG, image.pinned)
        client.set_tag(run_id, f"{RUN_TAG}_reference", image.reference)
        for platform, member in (members or {}).items():
            client.set_tag(run_id, f"{RUN_TAG}.{platform}", member.digest)
    except Exception as error:
        log.warning("cannot tag run %s with its image: %s", run_id, one_line(str(error), 200))
        return False
    return True


def build_model_image(
    model_uri: str,
    tracking_uri: str | None,
    registry: RegistrySettings,
    *,
    image: str = DEFAULT_IMAGE_NAME,
    base_image: str | None = None,
    project_id: str | None = None,
    report: Reporter | None = None,
    engine: ContainerEngine | None = None,
    compression: Compression = "gzip",
    index: PackageIndex | None = None,
    platforms: Sequence[str] = (),
) -> ModelImageResult:
    """Build (or find) and push ``<registry>/flops/<image>:<content digest>`` serving ``model_uri``.

    ``base_image``: start from this image (e.g. the project's aggregator image, whose
    ``/opt/venv`` already has the model's dependencies and MLflow's client) instead of the FLOps base.
    ``platforms``: one image per platform and a manifest list over them (default: the host's).
    Steps are reported as ``BuildStep`` messages when ``project_id`` and ``report`` are given.
    Raises :class:`BuildError` with a one-line reason.
    """
    started = time.monotonic()
    engine = engine or ContainerEngine(EngineSettings())
    store = ImageStore(engine, registry, compression)
    steps = StepLog(project_id=project_id, sender="model-image-builder", report=report)
    wanted = check_platforms(list(platforms))
    platform = wanted[0]
    work_root = engine.root / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="model-", dir=work_root))
    build_lock = ExitStack()
    build_lock.enter_context(building(engine.root))  # the image upkeep deletes nothing while this runs
    try:
        with steps.step("download-model") as record:
            model_dir = download_model(model_uri, tracking_uri, work / "download")
            requirements_file = model_dir / "requirements.txt"
            lines = requirements_file.read_text().splitlines() if requirements_file.is_file() else []
            requirements = serving_requirements(lines, flavor_extras(model_dir))
            record.detail = f"{model_uri}: {', '.join(requirements)}"
        runtime_dir = stage_serving_runtime(work / "runtime")
        if base_image:
            base_identity = base_image
        else:
            with steps.step("base-image") as record:
                base = ensure_base(engine, store, BaseSettings(), platform, record)
            base_identity = base.identity
        name: ImageName = image_name(
            image,
            tag_of(
                {
                    "base": base_identity,
                    "model": content_hash(model_dir),
                    "requirements": requirements,
                    "runtime": content_hash(runtime_dir),
                    "entrypoint": list(SERVING_ENTRYPOINT),
                    "format": MODEL_FORMAT,
                    **({"platforms": [item.name for item in wanted]} if len(wanted) > 1 else {}),
                }
            ),
        )

        def build_for(target: Platform, target_name: ImageName) -> None:
            if base_image:
                source = base_image
                args = (
                    ["pull", "--quiet", *store.engine.transport_args(registry)]
                    if base_image.startswith(f"{registry.address}/")
                    else ["pull", "--quiet"]
                )
                engine.buildah(
                    *args,
                    "--platform",
                    target.name,
                    f"docker://{base_image}",
                    timeout=1800,
                    what=f"pulling {base_image} for {target.name}",
                )
            else:
                source = ensure_base(engine, store, BaseSettings(), target, StepRecord("base-image")).source(
                    store, target
                )
            with store.working_container(source, target) as container:
                install_requirements(engine, container, requirements, index=index, platform=target)
                engine.buildah("copy", "--quiet", container, str(model_dir), MODEL_DIR, what="copying the model")
                engine.buildah(
                    "copy",
                    "--quiet",
                    container,
                    str(runtime_dir),
                    IMAGE_RUNTIME_DIR,
                    what="copying FLOps' serving code",
                )
                configure(
                    engine,
                    container,
                    env={
                        **IMAGE_ENVIRONMENT,
                        MODEL_PATH_ENV: MODEL_DIR,
                        "PYTHONPATH": IMAGE_RUNTIME_DIR,
                        "UVICORN_HOST": "0.0.0.0",
                        "UVICORN_PORT": str(MODEL_IMAGE_PORT),
                    },
                    entrypoint=SERVING_ENTRYPOINT,
                    workdir="/",
                    ports=(MODEL_IMAGE_PORT,),
                    labels={
                        "org.opencontainers.image.title": target_name.repository,
                        "io.flops.model_uri": model_uri[:500],
                    },
                    platform=target,
                )
                run_check(engine, container, _VERIFY, "the model cannot be served from the image", timeout=900)
                commit(engine, container, target_name.local)

        members: dict[str, EnsuredImage] = {}
        if len(wanted) == 1:
            with steps.step("model-image") as record:
                ensured = store.ensure(name, lambda: build_for(platform, name), record)
            members[platform.name] = ensured
        else:
            for target in wanted:
                member = name.with_tag(f"{name.tag}-{target.suffix}")
                with steps.step(f"model-image {target.name}") as record:

                    def build_member(target: Platform = target, member: ImageName = member) -> None:
                        build_for(target, member)

                    members[target.name] = store.ensure(member, build_member, record)
            with steps.step("model-image") as record:
                ensured = store.ensure_list(name, list(members.values()), record)
        run_id = model_run_id(model_uri, tracking_uri)
        tagged = tag_run(run_id, tracking_uri, ensured, members if len(wanted) > 1 else None) if run_id else False
    finally:
        shutil.rmtree(work, ignore_errors=True)
        store.registry.close()
        build_lock.close()
    return ModelImageResult(
        image=ensured,
        model_uri=model_uri,
        run_id=run_id,
        run_tagged=tagged,
        steps=tuple(steps.records),
        total_seconds=round(time.monotonic() - started, 3),
        platform_digests={target: member.digest for target, member in members.items()},
    )
