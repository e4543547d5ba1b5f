"""The ML repositories under ``examples/`` as real git repositories for tests.

``example_repo("sklearn_digits", tmp_path)`` copies the example into ``tmp_path`` and
commits it with a fixed author and date, so the same files always give the same
commit sha.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "FLOps Tests",
    "GIT_AUTHOR_EMAIL": "tests@flops.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "FLOps Tests",
    "GIT_COMMITTER_EMAIL": "tests@flops.invalid",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path | str, *args: str) -> str:
    """Run git in ``repo`` with the fixed test identity; return its stdout."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(GIT_IDENTITY)
    completed = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def commit_all(repo: Path | str, message: str) -> str:
    """Commit every change in ``repo``; return the new commit sha."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--no-gpg-sign", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def example_repo(name: str, tmp_path: Path) -> str:
    """A fresh git repository holding ``examples/<name>``; returns its path."""
    source = EXAMPLES_DIR / name
    if not source.is_dir():
        raise FileNotFoundError(f"no example named {name!r} in {EXAMPLES_DIR}")
    destination = tmp_path / name
    suffix = 1
    while destination.exists():
        suffix += 1
        destination = tmp_path / f"{name}-{suffix}"
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    git(destination, "init", "-q", "-b", "main")
    commit_all(destination, f"example {name}")
    return str(destination)
