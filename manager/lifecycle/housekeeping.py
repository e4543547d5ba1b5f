"""The manager's background upkeep: pruning the build cache and images, stopping idle observatories,
watching the serving endpoints of completed projects."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flops_utils.container_storage import default_root
from flops_utils.message_text import one_line
from manager.control import CachePruneRequest, CachePruneResult, ImagePruneResult
from manager.lifecycle.cache_upkeep import DAY_S, prune_build_cache
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.image_upkeep import prune_image_storage
from manager.lifecycle.observatory import ObservatoryKeeper
from manager.lifecycle.serving_watch import WATCH_EVERY_S, ServingWatch
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import OrchestratorAdapter

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(
        self,
        settings: LifecycleSettings,
        store: ProjectStore,
        observatories: ObservatoryKeeper,
        adapter: Callable[[str | None], OrchestratorAdapter],
        closing: threading.Event,
    ) -> None:
        """``adapter`` gives an orchestrator's adapter by name; the loops end when ``closing`` is set."""
        self.settings = settings
        self.store = store
        self.observatories = observatories
        self._adapter = adapter
        self._closing = closing
        self.serving = ServingWatch(store, lambda name: adapter(name or None))

    def start(self) -> None:
        """Start the serving watch and the loops the settings turn on, each in a daemon thread."""
        threading.Thread(target=self._watch_serving_forever, name="serving-watch", daemon=True).start()
        if self.settings.cache_max_age_s > 0:
            threading.Thread(target=self._prune_cache_forever, name="cache-upkeep", daemon=True).start()
        if self.settings.quotas.observatory_idle_s > 0:
            threading.Thread(target=self._stop_idle_observatories_forever, name="observatory-idle", daemon=True).start()

    def prune_cache(self, request: CachePruneRequest) -> CachePruneResult:
        days = request.older_than_days
        max_age_s = self.settings.cache_max_age_s if days is None else days * DAY_S
        records = list(self.store.list_projects(None))
        result = prune_build_cache(self.settings.cache_dir, records, max_age_s=max_age_s, dry_run=request.dry_run)
        try:
            result.images = prune_image_storage(
                self.settings.registry,
                self.settings.containers_dir or default_root(),
                records,
                max_age_s=max_age_s,
                dry_run=request.dry_run,
            )
        except Exception as error:  # images are pruned next time; the build cache's result still counts
            log.warning("could not prune images: %s", error)
            result.images = ImagePruneResult(notes=[f"images not pruned: {one_line(str(error), 200)}"])
        return result

    def _stop_idle_observatories_forever(self) -> None:
        """Stop observatories unused for ``quotas.observatory_idle_s`` whose customer runs no project."""
        idle_s = self.settings.quotas.observatory_idle_s
        while not self._closing.wait(max(1.0, min(60.0, idle_s / 4))):
            try:
                busy = {record.customer for record in self.store.list_projects(None) if not record.status.finished}
                for customer in busy:
                    self.observatories.touch(customer)  # idle time counts from a customer's last project
                self.observatories.stop_idle(lambda name: self._adapter(name or None), busy, idle_s)
            except Exception as error:  # the database or orchestrator may be away; try again next turn
                log.warning("could not stop idle observatories: %s", error)

    def _watch_serving_forever(self) -> None:
        while not self._closing.wait(WATCH_EVERY_S):
            try:
                self.serving.check_all()
            except Exception as error:  # the database may be away; look again next turn
                log.warning("could not watch the serving endpoints: %s", error)

    def _prune_cache_forever(self) -> None:
        """Prune at start and then every ``cache_prune_interval_s``; a failure waits for the next turn."""
        while not self._closing.is_set():
            try:
                self.prune_cache(CachePruneRequest())
            except Exception as error:  # the database may be away; the cache can wait
                log.warning("could not prune the build cache and images: %s", error)
            self._closing.wait(max(self.settings.cache_prune_interval_s, 60.0))
