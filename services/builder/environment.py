"""Cached virtualenvs for learners and aggregators (local mode).

``envs/<environment digest>/`` is a virtualenv whose site-packages holds a ``.pth``
file that links the builder's own runtime (its site-packages with flwr, mlflow,
numpy, torch, scikit-learn..., the FLOps repository root for ``services.*`` and
``utils_pkg`` for ``flops_utils``). The user's dependencies are then installed with
that runtime's pip: everything the runtime already has is "already satisfied" and
not downloaded again, so most environments build in seconds.

Concurrency and crashes: builders take an exclusive lock file per digest, build in
place and write a marker file last; a directory without the marker is a leftover
and is rebuilt. (A virtualenv cannot be renamed after it is built: its scripts
carry its absolute path, hence the marker instead of a rename.)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import sysconfig
import time
import venv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import flops_utils
import services
from flops_utils.message_text import one_line
from services.builder.cache import entry_lock_path, mark_used
from services.builder.errors import BuildError
from services.builder.process import last_meaningful_line, run_command

COMPLETE_MARKER = ".flops-environment.json"
RUNTIME_PTH = "flops_runtime.pth"
REQUIREMENTS_NAME = ".flops-requirements.txt"
CONSTRAINTS_NAME = ".flops-constraints.txt"
LOCK_TIMEOUT_S = 1800.0
INSTALL_TIMEOUT_S = 1800.0
# The runtime's binary core: a repository asking for other versions would break flwr/mlflow/pyarrow.
PINNED_RUNTIME_PACKAGES = ("numpy", "pyarrow", "protobuf", "grpcio", "pydantic", "paho-mqtt")
# Console scripts the environment gets wrappers for, so Flower's subprocesses run with its interpreter.
WRAPPED_DISTRIBUTIONS = ("flwr",)


@dataclass(frozen=True)
class Environment:
    path: Path
    cached: bool

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def runtime_site_dirs() -> list[Path]:
    """The builder's own site-packages (purelib and platlib, usually the same)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib")))


def runtime_source_roots() -> list[Path]:
    """Folders that make ``services`` and ``flops_utils`` importable, wherever they are installed."""
    roots = [Path(next(iter(services.__path__))).resolve().parent, Path(flops_utils.__file__).resolve().parent.parent]
    return list(dict.fromkeys(roots))


def environment_site_packages(path: Path) -> Path:
    return Path(sysconfig.get_path("purelib", scheme="venv", vars={"base": str(path), "platbase": str(path)}))


def _pth_text() -> str:
    lines = [str(root) for root in runtime_source_roots()]
    # addsitedir (not a plain path line) also runs the runtime's own .pth files: editable installs.
    lines += [f"import site; site.addsitedir({str(site_dir)!r})" for site_dir in runtime_site_dirs()]
    return "\n".join(lines) + "\n"


def _child_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _pinned_constraints() -> str:
    lines = []
    for name in PINNED_RUNTIME_PACKAGES:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def runtime_conflict(requirements: Sequence[str]) -> str | None:
    """A one-line reason when a requirement excludes the version of a package the runtime pins (pip would
    only say 'conflicting dependencies' without naming the runtime), else None."""
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(requirement.name)
        if name not in PINNED_RUNTIME_PACKAGES or not requirement.specifier:
            continue
        try:
            runtime_version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(runtime_version, prereleases=True):
            return (
                f"the repository asks for {line} but the FL runtime runs {name} {runtime_version} "
                f"({', '.join(PINNED_RUNTIME_PACKAGES)} are the runtime's own): allow {name} {runtime_version}"
            )
    return None


def _install(path: Path, requirements: Sequence[str], timeout: float) -> None:
    requirements_file = path / REQUIREMENTS_NAME
    requirements_file.write_text("".join(f"{line}\n" for line in requirements))
    if not requirements:
        return
    if conflict := runtime_conflict(requirements):
        raise BuildError(f"cannot install the repository's dependencies: {conflict}")
    constraints_file = path / CONSTRAINTS_NAME
    constraints_file.write_text(_pinned_constraints())
    command = [
        str(path / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--no-input",
        "--progress-bar",
        "off",
        "-c",
        str(constraints_file),
        "-r",
        str(requirements_file),
    ]
    outcome = run_command(command, timeout=timeout, cwd=path, env=_child_environment())
    if outcome.timed_out:
        raise BuildError(f"installing the repository's dependencies took longer than {timeout:g} s")
    if not outcome.ok:
        reason = last_meaningful_line(outcome.stderr, ("ERROR: ",)) or f"pip exited with {outcome.returncode}"
        raise BuildError(f"cannot install the repository's dependencies: {one_line(reason, 300)}")


def _write_console_wrappers(path: Path) -> None:
    """``bin/<script>`` for Flower's console scripts, running with this environment's interpreter."""
    python = path / "bin" / "python"
    for distribution in WRAPPED_DISTRIBUTIONS:
        try:
            entry_points = metadata.distribution(distribution).entry_points
        except metadata.PackageNotFoundError:
            continue
        for entry in entry_points:
            if entry.group != "console_scripts" or (path / "bin" / entry.name).exists():
                continue
            head, _, rest = entry.attr.partition(".")
            call = f"{head}.{rest}" if rest else head
            script = path / "bin" / entry.name
            script.write_text(f"#!{python}\nimport sys\nfrom {entry.module} import {head}\nsys.exit({call}())\n")
            script.chmod(0o755)


def _check_imports(path: Path) -> None:
    outcome = run_command(
        [str(path / "bin" / "python"), "-c", "import flops_utils, services, flwr"],
        timeout=300,
        env=_child_environment(),
    )
    if not outcome.ok:
        reason = "timed out" if outcome.timed_out else last_meaningful_line(outcome.stderr) or "no output"
        raise BuildError(f"the new environment cannot import the FL runtime: {one_line(reason, 300)}")


def _create(path: Path, digest: str, requirements: Sequence[str], install_timeout: float) -> None:
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(path)
    site_packages = environment_site_packages(path)
    site_packages.mkdir(parents=True, exist_ok=True)
    (site_packages / RUNTIME_PTH).write_text(_pth_text())
    _install(path, requirements, install_timeout)
    _write_console_wrappers(path)
    _check_imports(path)
    marker = {"digest": digest, "requirements": list(requirements), "created_at": time.time(), "python": sys.version}
    temporary = path / f"{COMPLETE_MARKER}.tmp"
    temporary.write_text(json.dumps(marker, indent=2))
    os.replace(temporary, path / COMPLETE_MARKER)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


@contextmanager
def exclusive_lock(lock_path: Path, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``; :class:`BuildError` if another holder keeps it past ``timeout``."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildError(f"another builder held {lock_path.name} for more than {timeout:g} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_environment(
    envs_dir: Path,
    digest: str,
    requirements: Sequence[str],
    *,
    lock_timeout: float = LOCK_TIMEOUT_S,
    install_timeout: float = INSTALL_TIMEOUT_S,
) -> Environment:
    """The complete environment ``envs_dir/<digest>``, built now unless a previous build left one."""
    path = envs_dir / digest
    # Always under the lock, even when cached: the cache pruner takes it before it removes an entry.
    with exclusive_lock(entry_lock_path(path), lock_timeout):
        if is_complete(path):  # built earlier, or by another builder while we waited
            mark_used(path)
            return Environment(path, cached=True)
        shutil.rmtree(path, ignore_errors=True)  # a leftover of a crashed build
        try:
            _create(path, digest, requirements, install_timeout)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        mark_used(path)
    return Environment(path, cached=False)
