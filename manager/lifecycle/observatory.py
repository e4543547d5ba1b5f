"""The customer's observatory app: one MLflow tracking server per customer, created on demand.

With ``tracking_pki`` it speaks HTTPS with a certificate from the manager's CA. With
``tracking_access`` enabled the server lets in only the customer's (and the admin's)
API tokens and the services' token; the digests it was started with are stored with the
app, and an observatory whose digests are out of date (a token was changed) is replaced.
Its store lives outside the app, so runs survive that. An observatory nobody used for
a while is stopped (:meth:`ObservatoryKeeper.stop_idle`; its store stays) and started
again by the next :meth:`ObservatoryKeeper.ensure`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flops_utils.service_config import TrackingConfig
from manager.lifecycle.config_reference import by_reference
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.errors import PhaseFailed
from manager.lifecycle.observatory_names import (
    legacy_observatory_name,
    observatory_name,
    observatory_owner,
    observatory_root,
    safe_name,
)
from manager.lifecycle.specs import TRACKING_PORT, service_spec
from manager.lifecycle.waiting import http_ok, wait_until
from manager.security.config_vault import ConfigVault
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import AppKind, AppRef, OrchestratorAdapter, Placement, ServiceKind, ServiceState

TRACKING_SERVICE = "tracking"

log = logging.getLogger("flops.observatory")


@dataclass(frozen=True)
class Observatory:
    app: AppRef
    tracking_url: str
    tracking_service: str


class ObservatoryKeeper:
    """Finds or creates each customer's observatory, one at a time per customer."""

    def __init__(self, settings: LifecycleSettings, store: ProjectStore) -> None:
        self.settings = settings
        self.store = store
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._last_used: dict[str, float] = {}  # customer -> monotonic time its observatory was last asked for

    def _lock(self, customer: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(customer, threading.Lock())

    def touch(self, customer: str) -> None:
        """Note a use of the customer's observatory: an idle one is stopped only a while after its last use."""
        with self._guard:
            self._last_used[customer] = time.monotonic()

    def running_customers(self) -> set[str]:
        """Customers whose observatory is running (not stopped as idle), from the store."""
        return {
            str(app["customer"])
            for app in self.store.list_apps(kind=AppKind.OBSERVATORY.value)
            if not (app.get("data") or {}).get("stopped")
        }

    def stop_idle(self, adapter_for: Callable[[str], OrchestratorAdapter], busy: set[str], idle_s: float) -> list[str]:
        """Stop the tracking server of every running observatory whose customer is not in ``busy`` (no
        unfinished project) and that was not used for ``idle_s``; returns those customers."""
        stopped = []
        now = time.monotonic()
        for app in self.store.list_apps(kind=AppKind.OBSERVATORY.value):
            customer, data = str(app["customer"]), dict(app.get("data") or {})
            with self._guard:
                last = self._last_used.setdefault(customer, now)  # unknown (manager restarted): from now
            if data.get("stopped") or customer in busy or now - last < idle_s:
                continue
            with self._lock(customer):
                if (self._last_used.get(customer, now) > last) or customer in busy:
                    continue  # used meanwhile
                observatory = self._stored(customer, data)
                adapter = adapter_for(str(data.get("orchestrator") or ""))
                adapter.undeploy_service(observatory.app, observatory.tracking_service)
                self._save(customer, {**data, "stopped": True})
            log.info("stopped the idle observatory of %s (unused for %.0f s)", customer, now - last)
            stopped.append(customer)
        return stopped

    def _stored(self, customer: str, data: dict[str, Any]) -> Observatory:
        app = AppRef(str(data["app_id"]), observatory_name(customer), AppKind.OBSERVATORY, customer)
        return Observatory(app, str(data["tracking_url"]), str(data["tracking_service"]))

    def _save(self, customer: str, data: dict[str, Any]) -> None:
        name = observatory_name(customer)
        self.store.save_app(customer, AppKind.OBSERVATORY.value, name, str(data["app_id"]), data)

    def ensure(
        self, adapter: OrchestratorAdapter, customer: str, note: Callable[[str], None] | None = None
    ) -> Observatory:
        """``note`` hears what is awaited when the server has to be started (it takes a while)."""
        self.touch(customer)
        try:
            return self._ensure(adapter, customer, note)
        finally:
            self.touch(customer)  # starting a server takes a while: idle time counts from its answer

    def _ensure(
        self, adapter: OrchestratorAdapter, customer: str, note: Callable[[str], None] | None = None
    ) -> Observatory:
        with self._lock(customer):
            name = observatory_name(customer)
            stored = self.store.find_app(customer, AppKind.OBSERVATORY.value, name)
            if stored is not None:
                data = stored.get("data", stored)
                app = AppRef(str(data["app_id"]), name, AppKind.OBSERVATORY, customer)
                observatory = Observatory(app, str(data["tracking_url"]), str(data["tracking_service"]))
                if list(data.get("token_sha256") or []) != self._digests(customer):
                    log.warning("the MLflow access of %s changed: replacing its tracking server", customer)
                    adapter.delete_app(app)
                elif observatory.tracking_url.startswith("https://") != (self.settings.tracking_pki is not None):
                    log.warning("mlflow_tls changed: replacing the tracking server of %s", customer)
                    adapter.delete_app(app)
                elif self._healthy_or_restarted(adapter, observatory, note):
                    if data.get("stopped"):
                        self._save(customer, {**data, "stopped": False})
                        log.info("started the observatory of %s again", customer)
                    return observatory
            return self._create(adapter, customer, name, note)

    def adopt_legacy_stores(self, adapter: OrchestratorAdapter) -> None:
        """Move observatories kept under the old lowercased name to their customer's own key.

        The old tracking servers are stopped (the next ``ensure`` starts one on the moved
        store). A store that customers differing only by case shared belongs to none of
        them: it is set aside as ``<name>.shared`` for the admin, and each starts afresh.
        """
        owners: dict[str, list[dict[str, Any]]] = {}
        for stored in self.store.list_apps(kind=AppKind.OBSERVATORY.value):
            customer = str(stored.get("customer", ""))
            if stored.get("name") == legacy_observatory_name(customer) != observatory_name(customer):
                owners.setdefault(safe_name(customer), []).append(stored)
        folder = self.settings.state_dir / "observatories"
        for slug, records in owners.items():
            for stored in records:
                customer, name = str(stored["customer"]), str(stored["name"])
                with contextlib.suppress(Exception):  # the old server may be gone already
                    adapter.delete_app(AppRef(str(stored["app_id"]), name, AppKind.OBSERVATORY, customer))
                ConfigVault(self.store, self.settings.secret_box).revoke(observatory_owner(customer))
                self.store.delete_app(customer, AppKind.OBSERVATORY.value, name)
            legacy_root = folder / slug
            if not legacy_root.is_dir():
                continue
            customers = sorted({str(stored["customer"]) for stored in records})
            target = observatory_root(self.settings.state_dir, customers[0])
            if len(customers) == 1 and not target.exists():
                legacy_root.rename(target)
                log.info("moved the MLflow store of %s from %s to %s", customers[0], legacy_root, target)
            elif len(customers) == 1:
                log.warning(
                    "the MLflow store %s of %s stays in place: %s exists already", legacy_root, customers[0], target
                )
            else:
                aside = folder / f"{slug}.shared"
                legacy_root.rename(aside)
                log.warning(
                    "the MLflow store %s was shared by customers %s (names differing only by case): "
                    "set aside as %s for the admin; each customer starts a new one",
                    legacy_root,
                    ", ".join(customers),
                    aside,
                )

    def _digests(self, customer: str) -> list[str]:
        return self.settings.tracking_access.digests(customer)

    def ca_pem(self) -> str | None:
        """The CA MLflow clients verify tracking servers with (None: plain HTTP)."""
        return self.settings.tracking_pki.ca_pem() if self.settings.tracking_pki is not None else None

    def _health(self, observatory: Observatory) -> bool:
        pki = self.settings.tracking_pki
        verify: bool | str = str(pki.ca_file) if pki is not None else True
        return http_ok(f"{observatory.tracking_url}/health", verify=verify)

    def _healthy_or_restarted(
        self, adapter: OrchestratorAdapter, observatory: Observatory, note: Callable[[str], None] | None = None
    ) -> bool:
        if self._health(observatory):
            return True
        try:
            info = adapter.inspect_service(observatory.app, observatory.tracking_service)
        except Exception:  # the app vanished (e.g. orchestrator state wiped): create anew
            return False
        if info.state in (ServiceState.PENDING, ServiceState.RUNNING):
            return self._wait_healthy(adapter, observatory, note)
        adapter.deploy_service(observatory.app, observatory.tracking_service)
        return self._wait_healthy(adapter, observatory, note)

    def _create(
        self, adapter: OrchestratorAdapter, customer: str, name: str, note: Callable[[str], None] | None = None
    ) -> Observatory:
        app = adapter.find_app(name, customer) or adapter.create_app(name, AppKind.OBSERVATORY, customer)
        endpoint = adapter.plan_endpoint(app, TRACKING_SERVICE, TRACKING_PORT, Placement())
        root = observatory_root(self.settings.state_dir, customer)
        pki = self.settings.tracking_pki
        url = endpoint.url if pki is None else "https://" + endpoint.url.split("://", 1)[-1]
        image = self.settings.images.get(ServiceKind.TRACKING.value) if adapter.capabilities.runs_images else None
        in_image = bool(image)  # else a process on the manager's host
        backend_store_uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")
        if self.settings.tracking_store is not None:
            backend_store_uri, artifacts = self.settings.tracking_store.for_customer(root.name)
        elif in_image:
            log.warning(
                "the MLflow store of %s is kept inside its tracking server's container and is lost with "
                "it: set tracking_store",
                customer,
            )
        config = TrackingConfig(
            customer=customer,
            backend_store_uri=backend_store_uri,
            artifacts_destination=artifacts,
            bind_host=adapter.capabilities.bind_host,
            port=endpoint.port,
            access_token_sha256=self._digests(customer),
            tls=pki.issue(endpoint.host) if pki is not None else None,
            tls_dir=None if in_image else str(root / "tls"),  # in an image: a private directory of its own
        )
        spec = service_spec(TRACKING_SERVICE, ServiceKind.TRACKING, config, image=image, ports=(TRACKING_PORT,))
        owner = observatory_owner(customer)
        ConfigVault(self.store, self.settings.secret_box).revoke(owner)  # a replaced server's reference
        spec = by_reference(spec, owner=owner, adapter=adapter, settings=self.settings, store=self.store)
        service_id = adapter.add_service(app, spec)
        adapter.deploy_service(app, service_id)
        observatory = Observatory(app, url, service_id)
        self.store.save_app(
            customer,
            AppKind.OBSERVATORY.value,
            name,
            app.app_id,
            {
                "app_id": app.app_id,
                "tracking_url": url,
                "tracking_service": service_id,
                "token_sha256": config.access_token_sha256,
                "orchestrator": adapter.name,
                "stopped": False,
            },
        )
        if not self._wait_healthy(adapter, observatory, note):
            raise PhaseFailed(f"the MLflow tracking server did not become healthy at {url}")
        return observatory

    def _wait_healthy(
        self, adapter: OrchestratorAdapter, observatory: Observatory, note: Callable[[str], None] | None = None
    ) -> bool:
        if note is not None:
            note(f"waiting for the MLflow tracking server at {observatory.tracking_url} to start")

        def crashed() -> None:
            info = adapter.inspect_service(observatory.app, observatory.tracking_service)
            if info.state in (ServiceState.FAILED, ServiceState.SUCCEEDED, ServiceState.STOPPED):
                raise PhaseFailed(f"the MLflow tracking server stopped: {info.detail or info.state.value}")

        return wait_until(
            lambda: self._health(observatory),
            timeout=self.settings.tracking_timeout_s,
            interval=1.0,
            check=crashed,
        )
