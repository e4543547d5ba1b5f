"""OCI mode of the builder: real images with buildah, cached in the internal registry.

Entry points:

* :func:`build_oci` - the builder service's ``mode="oci"`` (same signature as
  ``services.builder.local.build_local``);
* :func:`build_images` - the same build, returning every image and step;
* :func:`build_model_image` - an inference image for a model logged in MLflow.

See ``docs/images.md`` for the image layout, cache rules and platform support.
"""

from services.builder.oci.app_images import ENTRYPOINTS, IMAGE_APP_DIR, IMAGE_RUNTIME_DIR, IMAGE_WORK_DIR
from services.builder.oci.base_image import BaseSettings
from services.builder.oci.build import OciBuildResult, OciSettings, build_images, build_oci
from services.builder.oci.engine import ContainerEngine, EngineError, EngineSettings
from services.builder.oci.images import EnsuredImage, ImageStore
from services.builder.oci.model_image import (
    MODEL_IMAGE_PORT,
    ModelImageResult,
    build_model_image,
)
from services.builder.oci.platforms import PlatformUnsupported, check_platforms
from services.builder.oci.python_env import PackageIndex
from services.builder.oci.registry import RegistryClient, RegistryError
from services.builder.oci.steps import StepLog, StepRecord

__all__ = [
    "ENTRYPOINTS",
    "IMAGE_APP_DIR",
    "IMAGE_RUNTIME_DIR",
    "IMAGE_WORK_DIR",
    "MODEL_IMAGE_PORT",
    "BaseSettings",
    "ContainerEngine",
    "EngineError",
    "EngineSettings",
    "EnsuredImage",
    "ImageStore",
    "ModelImageResult",
    "OciBuildResult",
    "OciSettings",
    "PackageIndex",
    "PlatformUnsupported",
    "RegistryClient",
    "RegistryError",
    "StepLog",
    "StepRecord",
    "build_images",
    "build_model_image",
    "build_oci",
    "check_platforms",
]
