"""Read a repository's Python dependencies from conda.yaml, requirements.txt or pyproject.toml.

Precedence (the reference system used MLflow-style ``conda.yaml``): ``conda.yaml`` /
``conda.yml``, then ``requirements.txt``, then ``pyproject.toml`` with a ``[project]``
table. The result is a sorted, de-duplicated list of PEP 508 requirements with
canonical names, so equivalent files give the same list (and the same digest).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from flops_utils.message_text import one_line
from services.builder.errors import BuildError

CONDA_FILES = ("conda.yaml", "conda.yml")
REQUIREMENTS_FILE = "requirements.txt"
PYPROJECT_FILE = "pyproject.toml"
DEPENDENCY_FILES = (*CONDA_FILES, REQUIREMENTS_FILE, PYPROJECT_FILE)

# Conda packages that are not Python distributions on PyPI (skipped) and conda names that differ from PyPI's.
_CONDA_ONLY = frozenset(
    {"python", "pip", "cpuonly", "cudatoolkit", "cudnn", "mkl", "blas", "libblas", "openssl", "ca-certificates"}
)
_CONDA_TO_PIP = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "py-xgboost": "xgboost",
    "msgpack-python": "msgpack",
    "pytables": "tables",
    "matplotlib-base": "matplotlib",
    "tensorflow-cpu": "tensorflow",
}
_CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)\s*(?P<op>==|>=|<=|!=|>|<|=)?\s*(?P<version>[^\s=<>!]*)")


@dataclass(frozen=True)
class DependencySpec:
    """Where the dependencies came from and the normalised requirement list."""

    file: str
    requirements: tuple[str, ...]


def find_dependency_file(repo: Path) -> Path | None:
    """The first dependency file present in ``repo`` (a pyproject.toml counts only with a [project] table)."""
    for name in DEPENDENCY_FILES:
        path = repo / name
        if path.is_file() and (name != PYPROJECT_FILE or _has_project_table(path)):
            return path
    return None


def _has_project_table(path: Path) -> bool:
    try:
        return "project" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True  # let read_dependencies report why it is unreadable


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BuildError(f"{path.name}: unreadable dependency file (not UTF-8 text)", step="dependencies") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise BuildError(f"{path.name}: unreadable dependency file ({reason})", step="dependencies") from None


def normalise_requirement(text: str, where: str) -> str:
    try:
        requirement = Requirement(text.strip())
    except InvalidRequirement as error:
        raise BuildError(f"{where}: invalid requirement {text.strip()!r} ({one_line(str(error), 120)})") from None
    requirement.name = canonicalize_name(requirement.name)
    return str(requirement)


def _normalised(requirements: list[str]) -> tuple[str, ...]:
    return tuple(sorted(dict.fromkeys(requirements)))


def _from_requirements_txt(path: Path) -> tuple[str, ...]:
    found: list[str] = []
    for number, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise BuildError(f"{path.name} line {number}: pip options such as {line.split()[0]!r} are not supported")
        found.append(normalise_requirement(line, f"{path.name} line {number}"))
    return _normalised(found)


def _conda_to_pip(spec: str, where: str) -> str | None:
    """A conda match spec (``numpy=1.26``, ``conda-forge::pytorch>=2``) as a pip requirement, or None to skip."""
    text = spec.split("::", 1)[-1].strip()
    match = _CONDA_SPEC.match(text)
    if not match:
        raise BuildError(f"{where}: invalid conda dependency {spec!r}")
    name = match["name"].lower()
    if name in _CONDA_ONLY:
        return None
    name = _CONDA_TO_PIP.get(name, name)
    op, version = match["op"], match["version"]
    if not version:
        return normalise_requirement(name, where)
    if op in (None, "="):
        # conda's "=1.26" means 1.26.*; an exact "1.26.1" stays exact.
        pip_spec = f"=={version}" if version.endswith("*") else f"=={version}.*" if op == "=" else f"=={version}"
        return normalise_requirement(f"{name}{pip_spec}", where)
    return normalise_requirement(f"{name}{op}{version}", where)


def _from_conda(path: Path) -> tuple[str, ...]:
    try:
        document = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise BuildError(f"{path.name}: unreadable dependency file (invalid YAML{at}: {problem})") from None
    if document is None:
        return ()
    if not isinstance(document, dict):
        raise BuildError(f"{path.name}: unreadable dependency file (expected a mapping with 'dependencies')")
    dependencies = document.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise BuildError(f"{path.name}: 'dependencies' must be a list")
    found: list[str] = []
    for entry in dependencies:
        if isinstance(entry, dict):
            pip_list = entry.get("pip") or []
            if not isinstance(pip_list, list) or not all(isinstance(item, str) for item in pip_list):
                raise BuildError(f"{path.name}: the 'pip' section must be a list of requirements")
            for item in pip_list:
                if item.strip().startswith("-"):
                    raise BuildError(f"{path.name}: pip options such as {item.split()[0]!r} are not supported")
                found.append(normalise_requirement(item, f"{path.name} pip section"))
        elif isinstance(entry, str | int | float):
            converted = _conda_to_pip(str(entry), path.name)
            if converted is not None:
                found.append(converted)
        else:
            raise BuildError(f"{path.name}: unexpected dependency entry {entry!r}")
    return _normalised(found)


def _from_pyproject(path: Path) -> tuple[str, ...]:
    try:
        document: dict[str, Any] = tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as error:
        raise BuildError(f"{path.name}: unreadable dependency file (invalid TOML: {error})") from None
    dependencies = document.get("project", {}).get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(item, str) for item in dependencies):
        raise BuildError(f"{path.name}: [project] dependencies must be a list of strings")
    return _normalised([normalise_requirement(item, f"{path.name} [project] dependencies") for item in dependencies])


def read_dependencies(repo: Path) -> DependencySpec:
    """The repository's normalised requirements; :class:`BuildError` with a one-line reason otherwise."""
    path = find_dependency_file(repo)
    if path is None:
        raise BuildError(
            f"no dependency file: add one of {', '.join(DEPENDENCY_FILES)} at the repository root",
            step="dependencies",
        )
    try:
        if path.name in CONDA_FILES:
            requirements = _from_conda(path)
        elif path.name == REQUIREMENTS_FILE:
            requirements = _from_requirements_txt(path)
        else:
            requirements = _from_pyproject(path)
    except BuildError as error:
        raise BuildError(str(error), step="dependencies") from None
    return DependencySpec(file=path.name, requirements=requirements)
