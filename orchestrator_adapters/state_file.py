"""A pydantic document in ``state.json``, shared safely by threads and processes (flock).

The local and container adapters keep their apps, services and planned ports here, so a
restarted manager can still inspect and undeploy what an earlier one started. The
services' configurations hold their credentials, so the file is private to its owner
(mode 0600), like the secrets Kubernetes keeps for the same configurations.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

StateT = TypeVar("StateT", bound=BaseModel)


class JsonStateFile(Generic[StateT]):
    """Locked access to ``directory/state.json``; no I/O until the first read or update."""

    def __init__(self, directory: Path, model: type[StateT]) -> None:
        self.path = directory / "state.json"
        self._lock_path = directory / "state.lock"
        self._model = model
        self._thread_lock = threading.RLock()
        self._depth = 0  # guarded by _thread_lock: nested use in one thread must not flock twice

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth:  # nested in this thread: the file lock is already ours
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> StateT:
        if not self.path.exists():
            return self._model()
        return self._model.model_validate_json(self.path.read_text())

    def read(self) -> StateT:
        with self._locked():
            return self._load()

    @contextmanager
    def update(self) -> Iterator[StateT]:
        """Yield the current state; what the block changes is saved when it ends without error."""
        with self._locked():
            state = self._load()
            yield state
            temporary = self.path.with_suffix(".json.tmp")
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
                file.write(state.model_dump_json(indent=1))
            os.chmod(temporary, 0o600)  # a file left by an older version keeps its mode through O_TRUNC
            os.replace(temporary, self.path)
