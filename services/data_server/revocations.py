"""Projects whose read tokens a data server refuses: one empty file per project under ``.revoked/``.

Kept on disk so a restarted data server still refuses them; a read token also expires on
its own, so the list only has to outlive the tokens (entries older than that are dropped).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

PROJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEEP_S = 60 * 86400.0  # longer than any read token lives


class Revocations:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def revoke(self, project_id: str) -> str:
        if not PROJECT_ID.fullmatch(project_id):
            raise ValueError(f"invalid project id {project_id[:80]!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / project_id).touch()
        self._drop_old()
        return project_id

    def revoked(self, project_id: str) -> bool:
        return bool(PROJECT_ID.fullmatch(project_id)) and (self.directory / project_id).exists()

    def _drop_old(self) -> None:
        cutoff = time.time() - KEEP_S
        for path in self.directory.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue
