"""Content digests that name cached environments and built apps.

* :func:`environment_digest` names ``cache_dir/envs/<digest>``: dependencies plus
  runtime, NOT the commit, so a code-only change reuses the environment.
* :func:`build_digest` names the whole build (``cache_dir/apps/<digest>``): the commit,
  the dependencies, the runtime versions and the Python version.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Sequence
from importlib import metadata

RUNTIME_DISTRIBUTIONS = ("flops", "flops-utils", "flwr", "mlflow")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def runtime_versions() -> dict[str, str]:
    """Versions of the injected runtime and of the Python that runs it."""
    versions = {name: _version(name) for name in RUNTIME_DISTRIBUTIONS}
    versions["python"] = platform.python_version()
    return versions


def _sha256(document: object) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def environment_digest(requirements: Sequence[str], runtime: dict[str, str], runtime_location: str = sys.prefix) -> str:
    """Identity of a virtualenv: what it installs, what it links to and where that runtime lives."""
    return _sha256({"requirements": list(requirements), "runtime": runtime, "location": runtime_location})


def build_digest(commit: str, requirements: Sequence[str], runtime: dict[str, str]) -> str:
    """Identity of a whole build: the repository commit plus everything in its environment."""
    return _sha256({"commit": commit, "requirements": list(requirements), "runtime": runtime})
