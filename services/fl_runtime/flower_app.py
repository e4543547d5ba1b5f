"""The generated Flower app that wraps a user's repository (``app_dir/pyproject.toml``).

``flwr run`` packs ``app_dir`` into a FAB (its .py/.toml/.md/.yaml/.json files), and
every ServerApp/ClientApp process imports the FL runtime (``services.*``) from its
environment and the user's ``model_manager`` from the unpacked FAB.
"""

from __future__ import annotations

import re

RUN_CONFIG_KEY = "flops-config-file"
PUBLISHER = "flops"
SERVER_APP_REF = "services.aggregator.server_app:app"
CLIENT_APP_REF = "services.learner.client_app:app"
_MAX_NAME = 32  # Flower's limit on app names


def flower_app_name(project_id: str) -> str:
    """A valid Flower app name for the project: a letter first, then letters, digits, hyphens."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", project_id).strip("-").lower()
    return f"flops-{slug}"[:_MAX_NAME].rstrip("-")


def flower_app_pyproject(project_id: str) -> str:
    """The ``pyproject.toml`` the builder writes at the root of ``app_dir``."""
    return f'''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{flower_app_name(project_id)}"
version = "1.0.0"
description = "FLOps federated app for project {project_id}"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "{PUBLISHER}"

[tool.flwr.app.components]
serverapp = "{SERVER_APP_REF}"
clientapp = "{CLIENT_APP_REF}"

[tool.flwr.app.config]
{RUN_CONFIG_KEY} = ""
'''
