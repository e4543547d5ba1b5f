"""One project run's writes to the store, riding out short database outages.

While the store is unreachable, record updates are merged and events queued in their
order; every later write, and :meth:`RecordWriter.flush` (called from the run's wait
loops), tries again, so nothing the run reported is lost when the database comes back.
Writes never raise; only a strict ``flush`` does, once the store has been away for
``outage_limit_s``, and the project then fails with that reason (recorded when the
database answers again, see :meth:`RecordWriter.settle`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from manager.lifecycle.clock import SYSTEM_CLOCK, Clock
from manager.records import EventRecord, RoundRecord
from manager.storage.base import ProjectStore, StorageUnavailable

log = logging.getLogger(__name__)

RETRY_INTERVAL_S = 2.0  # while the store is away: each try can wait for the driver's whole timeout


class RecordWriter:
    def __init__(
        self, store: ProjectStore, project_id: str, outage_limit_s: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.store = store
        self.clock = clock
        self.project_id = project_id
        self.outage_limit_s = outage_limit_s
        self._fields: dict[str, Any] = {}
        self._events: list[EventRecord] = []
        self._rounds: list[RoundRecord] = []
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._error: StorageUnavailable | None = None
        self._lock = threading.Lock()

    @property
    def pending(self) -> bool:
        return bool(self._fields or self._events or self._rounds)

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._fields.update(fields)
        self.flush(strict=False)

    def event(self, record: EventRecord) -> None:
        with self._lock:
            self._events.append(record)
        self.flush(strict=False)

    def round(self, record: RoundRecord) -> None:
        with self._lock:
            self._rounds.append(record)
        self.flush(strict=False)

    def flush(self, strict: bool = True) -> bool:
        """Write what is pending; False while the store is away (``strict``: raise once it was away too long)."""
        with self._lock:
            if not self.pending:
                return True
            if self._failing_since is not None and self.clock.monotonic() < self._retry_at:
                return self._still_away(strict)
            try:
                if self._fields:
                    self.store.update_project(self.project_id, **self._fields)
                    self._fields = {}
                while self._events:
                    self.store.append_event(self._events[0])
                    self._events.pop(0)
                while self._rounds:
                    self.store.save_round(self._rounds[0])
                    self._rounds.pop(0)
            except StorageUnavailable as error:
                return self._failed(error, strict)
            if self._failing_since is not None:
                log.info("project %s: the store is back; buffered writes done", self.project_id)
                self._failing_since = None
            return True

    def _failed(self, error: StorageUnavailable, strict: bool) -> bool:
        now = self.clock.monotonic()
        self._retry_at = now + RETRY_INTERVAL_S
        self._error = error
        if self._failing_since is None:
            self._failing_since = now
            log.warning(
                "project %s: %s; keeping %d event(s) and the record's changes until it is back",
                self.project_id,
                error,
                len(self._events),
            )
        return self._still_away(strict)

    def _still_away(self, strict: bool) -> bool:
        assert self._failing_since is not None
        away = self.clock.monotonic() - self._failing_since
        if strict and away > self.outage_limit_s:
            raise StorageUnavailable(f"the project store has been unreachable for {away:.0f} s: {self._error}")
        return False

    def settle(self, timeout_s: float) -> bool:
        """Keep trying for up to ``timeout_s`` (the run's last writes); False if something is still pending."""
        deadline = self.clock.monotonic() + timeout_s
        while True:
            if self.flush(strict=False):
                return True
            if self.clock.monotonic() >= deadline:
                return False
            self.clock.sleep(1.0)
