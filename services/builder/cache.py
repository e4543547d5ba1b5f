"""The local build cache's upkeep: when each entry was last used, and pruning old ones.

``cache_dir/envs/<digest>/`` (virtualenvs) and ``cache_dir/apps/<digest>/`` (augmented
apps) are shared by every project built from the same commit and dependencies, so they
would grow forever. A builder marks an entry used, under the entry's lock, each time it
hands it out. :func:`prune_cache` removes an entry only when all of these hold:

* its last use is older than ``max_age_s``;
* no live project uses it (``in_use``: the manager passes the environment and app dirs of
  unfinished projects and of running serving endpoints);
* it can take the entry's lock at once (a builder busy with it keeps it).

An environment a crashed build left half-made is an entry like the others (its builder's
lock is gone). Leftovers in ``work/*`` and ``apps/.staging-*`` have no lock, so they go
only once older than ``max(max_age_s, LEFTOVER_MIN_AGE_S)``: a build in progress never
loses its folders. Lock files stay: unlinking a lock file that another process waits on
would let two holders in.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

LAST_USED_MARKER = ".flops-last-used"
ENVS_DIR = "envs"
APPS_DIR = "apps"
WORK_DIR = "work"
STAGING_PREFIX = ".staging-"
# Longer than a build may take (clone + install + verify are bounded well below this).
LEFTOVER_MIN_AGE_S = 6 * 3600.0


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)  # "envs/<digest>", "apps/<digest>", "work/<name>"
    freed_bytes: int = 0
    kept_in_use: int = 0
    kept_recent: int = 0
    kept_busy: int = 0


def entry_lock_path(entry: Path) -> Path:
    """The lock file builders take while they create or hand out ``entry``."""
    return entry.parent / f"{entry.name}.lock"


def mark_used(entry: Path) -> None:
    """Record that ``entry`` was just handed to a project (call with the entry's lock held)."""
    (entry / LAST_USED_MARKER).touch()  # sets the time to now when the marker exists already


def last_used(entry: Path) -> float:
    """When ``entry`` was last handed out: its marker's time, else the folder's own."""
    for candidate in (entry / LAST_USED_MARKER, entry):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return 0.0


def tree_size(path: Path) -> int:
    """Bytes the files under ``path`` take (symlinks are not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


@contextmanager
def try_lock(lock_path: Path) -> Iterator[bool]:
    """An exclusive ``flock`` if nobody holds it now: yields whether it was taken."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.is_symlink())


def _remove(path: Path, label: str, report: PruneReport, dry_run: bool) -> None:
    report.freed_bytes += tree_size(path)
    report.removed.append(label)
    if not dry_run:
        shutil.rmtree(path, ignore_errors=True)


def prune_cache(
    cache_dir: Path,
    *,
    max_age_s: float,
    in_use: Collection[Path] = (),
    now: float | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Remove cache entries unused for ``max_age_s`` that no live project needs; see the module doc."""
    now = time.time() if now is None else now
    protected = {Path(path).resolve() for path in in_use}
    leftover_age = max(max_age_s, LEFTOVER_MIN_AGE_S)
    report = PruneReport()
    for kind in (ENVS_DIR, APPS_DIR):
        for entry in _entries(cache_dir / kind):
            label = f"{kind}/{entry.name}"
            if entry.name.startswith(STAGING_PREFIX):  # an app being assembled, or a crashed builder's
                if now - last_used(entry) > leftover_age:
                    _remove(entry, label, report, dry_run)
                continue
            if entry.resolve() in protected:
                report.kept_in_use += 1
                continue
            if now - last_used(entry) <= max_age_s:
                report.kept_recent += 1
                continue
            with try_lock(entry_lock_path(entry)) as locked:
                if not locked:
                    report.kept_busy += 1
                elif now - last_used(entry) <= max_age_s:  # handed out while we waited for the lock
                    report.kept_recent += 1
                else:
                    _remove(entry, label, report, dry_run)
    for leftover in _entries(cache_dir / WORK_DIR):
        if now - last_used(leftover) > leftover_age:
            _remove(leftover, f"{WORK_DIR}/{leftover.name}", report, dry_run)
    return report
