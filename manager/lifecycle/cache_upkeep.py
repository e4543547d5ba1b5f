"""Keeps the shared build cache from growing forever: prunes entries no live project needs.

Builders running as local processes share the manager's ``cache_dir``; on other
orchestrators the builder's cache lives in its container and this finds nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from manager.control import CachePruneResult
from manager.records import ProjectRecord
from services.builder.cache import prune_cache

log = logging.getLogger(__name__)

DAY_S = 86400.0


def cache_in_use(records: Iterable[ProjectRecord]) -> set[Path]:
    """Environment and app dirs of projects still running and of serving endpoints still up."""
    in_use: set[Path] = set()
    for record in records:
        if record.status.finished and not record.serving_url:
            continue
        for key in ("environment_dir", "app_dir"):
            location = record.build.get(key)
            if isinstance(location, str) and location:
                in_use.add(Path(location))
    return in_use


def prune_build_cache(
    cache_dir: Path, records: Iterable[ProjectRecord], *, max_age_s: float, dry_run: bool = False
) -> CachePruneResult:
    report = prune_cache(cache_dir, max_age_s=max_age_s, in_use=cache_in_use(records), dry_run=dry_run)
    if report.removed and not dry_run:
        log.info(
            "build cache: removed %d entries (%.1f MB) unused for %.1f days",
            len(report.removed),
            report.freed_bytes / 1e6,
            max_age_s / DAY_S,
        )
    return CachePruneResult(
        removed=report.removed,
        freed_bytes=report.freed_bytes,
        kept_in_use=report.kept_in_use,
        kept_recent=report.kept_recent,
        kept_busy=report.kept_busy,
        dry_run=dry_run,
    )
