"""Run FLOps services on Oakestra through its root orchestrator's REST API.

Apps are Oakestra applications, services are microservices described by SLA v2.0
descriptors (the configuration document travels in the ``FLOPS_CONFIG`` environment
variable). Services are placed with ``direct`` constraints, the only kind Oakestra's
schedulers read (``cluster`` at the root, ``node`` within the cluster): cluster aggregators on
their cluster, learners on their node. Every service with ports gets a deterministic,
collision-checked round-robin address. Status is polled from ``GET /api/service/<id>``, so FAILED and DEAD
services are noticed even when they never reported over MQTT.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator_adapters import oakestra_sla as sla
from orchestrator_adapters.base import (
    AdapterCapabilities,
    AdapterError,
    AppKind,
    AppRef,
    ConfigDelivery,
    Endpoint,
    NodeInfo,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    ServiceInfo,
    ServiceSpec,
    ServiceState,
)
from orchestrator_adapters.oakestra_client import OakestraClient, OakestraError, object_id

__all__ = ["OakestraAdapter", "OakestraNode", "OakestraSettings"]

Json = dict[str, Any]
_ADDRESS_ATTEMPTS = 64


class OakestraNode(BaseModel):
    """A learner node FLOps should know about (the root API lists clusters, not their workers)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    cluster: str
    data_server: str | None = Field(default=None, description="host:port of the node's data server")
    labels: dict[str, str] = Field(default_factory=dict)
    learner: bool = True


class OakestraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="root orchestrator (system manager) URL, e.g. http://root:10000")
    username: str
    password: str = Field(repr=False)
    organization: str | None = None
    verify_tls: bool = True
    application_namespace: str = Field(default="flops", pattern=r"^[a-zA-Z0-9]{1,10}$")
    user_id: str | None = Field(
        default=None, description="list apps via /api/applications/<user_id> (needed when the user is not an admin)"
    )
    learner_addon: str = Field(
        default="FLOps-learner",
        description="without a node inventory, clusters that list this addon in supported_addons host learners",
    )
    virtualization: Literal["container", "unikernel"] = "container"
    expose_ports: bool = Field(default=False, description="also map service ports on the nodes (host:port)")
    service_network: str = Field(default="10.30.0.0/16", description="Oakestra's service (round-robin) addresses")
    nodes: list[OakestraNode] = Field(default_factory=list, description="learner nodes and their data servers")
    schedule_grace_s: float = Field(
        default=60.0, gt=0, description="how long a redeployed service may wait for Oakestra to schedule it"
    )
    token_refresh_margin_s: float = Field(default=60.0, ge=0)
    request_timeout_s: float = Field(default=30.0, gt=0)


class OakestraAdapter(OrchestratorAdapter):
    """Constructing it does no I/O; the first call logs in."""

    name = "oakestra"
    capabilities = AdapterCapabilities(
        runs_images=True,
        host_processes=False,
        bind_host="0.0.0.0",
        config_delivery=ConfigDelivery.ENVIRONMENT,
        private_configs=False,
        runs_data_servers=False,
    )

    def __init__(self, settings: OakestraSettings) -> None:
        self.settings = settings
        self.client = OakestraClient(
            settings.url,
            settings.username,
            settings.password,
            organization=settings.organization,
            verify_tls=settings.verify_tls,
            timeout_s=settings.request_timeout_s,
            refresh_margin_s=settings.token_refresh_margin_s,
        )
        self._addresses: dict[tuple[str, str], str] = {}  # (app id, service name) -> planned address
        self._undeployed: set[str] = set()
        self._requested_at: dict[str, float] = {}  # service id -> when FLOps last asked for an instance
        self._desired: dict[str, int] = {}  # service id -> instances FLOps wants live
        self._removed: dict[str, set[int]] = {}  # service id -> instance numbers FLOps removed (ended ones)
        self._address_lock = threading.Lock()  # concurrent plans must not pick the same address

    def close(self) -> None:
        self.client.close()

    # -- apps ------------------------------------------------------------------------------
    def _applications(self) -> list[Json]:
        path = f"/api/applications/{self.settings.user_id}" if self.settings.user_id else "/api/applications/"
        answer = self.client.call("GET", path, "listing applications")
        return [app for app in answer or [] if isinstance(app, dict)]

    @staticmethod
    def _app_id(doc: Json) -> str:
        return str(doc.get("applicationID") or object_id(doc.get("_id")))

    def _app_doc(self, customer: str, name: str, docs: list[Json] | None = None) -> Json | None:
        oak_name = sla.application_name(customer, name)
        for doc in self._applications() if docs is None else docs:
            if (
                doc.get("application_name") == oak_name
                and doc.get("application_namespace") == self.settings.application_namespace
            ):
                return doc
        return None

    def _app_ref(self, doc: Json, name: str, customer: str) -> AppRef:
        """The app a document stands for; AdapterError when the name is taken by something else."""
        meta = sla.parse_application_desc(doc.get("application_desc"))
        if meta is None or meta.get("name") != name or meta.get("customer") != customer:
            raise AdapterError(
                f"Oakestra application {doc.get('application_name')} already exists and is not FLOps app "
                f"{name!r} of {customer!r}"
            )
        return AppRef(self._app_id(doc), name, AppKind(meta.get("kind", "project")), customer, meta.get("project_id"))

    def create_app(self, name: str, kind: AppKind, customer: str, project_id: str | None = None) -> AppRef:
        existing = self._app_doc(customer, name)
        if existing is not None:
            return self._app_ref(existing, name, customer)
        oak_name = sla.application_name(customer, name)
        body = sla.application_sla(
            customer,
            oak_name,
            self.settings.application_namespace,
            sla.application_desc(name, kind, customer, project_id),
        )
        answer = self.client.call(
            "POST", "/api/application/", f"creating application {name}", json_body=body, allow=(409,)
        )
        docs = [doc for doc in answer if isinstance(doc, dict)] if isinstance(answer, list) else None
        created = self._app_doc(customer, name, docs)
        if created is None:
            raise AdapterError(f"Oakestra did not list application {name} ({oak_name}) after creating it")
        return self._app_ref(created, name, customer)

    def find_app(self, name: str, customer: str) -> AppRef | None:
        doc = self._app_doc(customer, name)
        if doc is None:
            return None
        try:
            return self._app_ref(doc, name, customer)
        except AdapterError:
            return None

    def delete_app(self, app: AppRef) -> None:
        """DELETE removes the application and its services; an app already gone is fine."""
        if not any(self._app_id(doc) == app.app_id for doc in self._applications()):
            return
        self.client.call("DELETE", f"/api/application/{app.app_id}", f"deleting application {app.name}", allow=(404,))
        for key in [key for key in self._addresses if key[0] == app.app_id]:
            del self._addresses[key]

    # -- services --------------------------------------------------------------------------
    def _services(self, app_id: str) -> list[Json]:
        answer = self.client.call("GET", f"/api/services/{app_id}", "listing services", allow=(404,))
        return [job for job in answer or [] if isinstance(job, dict)]

    def _job(self, service_id: str) -> Json | None:
        answer = self.client.call("GET", f"/api/service/{service_id}", f"reading service {service_id}", allow=(404,))
        return answer if isinstance(answer, dict) else None

    def _taken_addresses(self) -> dict[str, tuple[str, str | None]]:
        """Every service address in use (by all listed apps) -> (app id, FLOps name)."""
        taken: dict[str, tuple[str, str | None]] = {}
        for doc in self._applications():
            app_id = self._app_id(doc)
            for job in self._services(app_id):
                address = job.get("RR_ip") or (job.get("addresses") or {}).get("rr_ip")
                if address:
                    taken[str(address)] = (app_id, sla.flops_name_of(job))
        return taken

    def _address(self, app: AppRef, service_name: str) -> str:
        """Deterministic per (app, service); the next candidate when another service holds it."""
        key = (app.app_id, service_name)
        with self._address_lock:
            if key in self._addresses:
                return self._addresses[key]
            taken = self._taken_addresses()
            planned = {address: owner for owner, address in self._addresses.items()}
            for attempt in range(_ADDRESS_ATTEMPTS):
                address = sla.service_address(self.settings.service_network, app.app_id, service_name, attempt)
                holder = taken.get(address) or planned.get(address)
                if holder is None or holder == key:
                    self._addresses[key] = address
                    return address
        raise AdapterError(f"no free service address for {service_name} in {self.settings.service_network}")

    def plan_endpoint(self, app: AppRef, service_name: str, port: PortSpec, placement: Placement) -> Endpoint:
        """The service's round-robin address (Oakestra's semantic overlay) and its port."""
        return Endpoint(self._address(app, service_name), port.port)

    def _active_clusters(self) -> list[Json]:
        answer = self.client.call("GET", "/api/clusters/active", "listing active clusters", auth=False)
        return [cluster for cluster in answer or [] if isinstance(cluster, dict)]

    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        if not spec.image:
            raise AdapterError(f"service {spec.name} has no image; the Oakestra adapter runs images")
        oak_name = sla.microservice_name(spec.name)
        for job in self._services(app.app_id):
            if job.get("microservice_name") != oak_name:
                continue
            if sla.flops_name_of(job) != spec.name:
                raise AdapterError(f"service name {oak_name} is already used by another service of app {app.name}")
            self._delete_service(object_id(job.get("microserviceID") or job.get("_id")))  # re-added: replace it
        node_clusters = {node.name: node.cluster for node in self.settings.nodes}
        clusters: set[str] = set()  # without a node inventory, listed "nodes" are clusters
        if spec.placement.node and spec.placement.node not in node_clusters:
            clusters = {str(cluster.get("cluster_name")) for cluster in self._active_clusters()}
        descriptor = sla.microservice(
            spec,
            virtualization=self.settings.virtualization,
            rr_ip=self._address(app, spec.name) if spec.ports else None,
            expose_ports=self.settings.expose_ports,
            node_clusters=node_clusters,
            clusters=clusters,
        )
        body = sla.service_sla(
            app.customer,
            app.app_id,
            sla.application_name(app.customer, app.name),
            self.settings.application_namespace,
            descriptor,
        )
        problem = sla.sla_problem(body)
        if problem:
            raise AdapterError(f"service {spec.name} was not sent to Oakestra, which would refuse it: {problem}")
        try:
            answer = self.client.call("POST", "/api/service/", f"adding service {spec.name}", json_body=body)
        except OakestraError as error:
            if error.status not in (400, 404, 422):
                raise
            raise AdapterError(f"{error}; it was sent {sla.sent_summary(body)}") from None
        answer = answer if isinstance(answer, dict) else {}
        failed = answer.get("failed_services") or []
        if failed:
            reasons = "; ".join(str(item.get("message") or item) for item in failed if isinstance(item, dict))
            raise AdapterError(f"Oakestra refused service {spec.name}: {reasons or failed}")
        service_id = str(answer.get("job_id") or "")
        if not service_id:
            raise AdapterError(f"Oakestra gave no id for service {spec.name}")
        return service_id

    def _delete_service(self, service_id: str) -> None:
        """DELETE the service; the root answers 500 for a service it does not know: gone if a GET says 404."""
        try:
            self.client.call("DELETE", f"/api/service/{service_id}", f"deleting service {service_id}", allow=(404,))
        except OakestraError as error:
            if error.status != 500 or self._job(service_id) is not None:
                raise
        for state in (self._requested_at, self._desired, self._removed):
            state.pop(service_id, None)
        self._undeployed.discard(service_id)

    def remove_service(self, app: AppRef, service_id: str) -> None:
        """Delete the service from its app (undeployed services would otherwise pile up there)."""
        self._delete_service(service_id)

    def _remove_instance(self, service_id: str, number: int) -> None:
        self.client.call(
            "DELETE",
            f"/api/service/{service_id}/instance/{number}",
            f"removing instance {number} of {service_id}",
            allow=(404,),
        )
        self._removed.setdefault(service_id, set()).add(number)

    def _current(self, service_id: str, job: Json) -> list[Json]:
        """The job's instances, without those FLOps removed (in case the root still lists them)."""
        removed = self._removed.get(service_id, set())
        return [
            item
            for item in job.get("instance_list") or []
            if isinstance(item, dict) and item.get("instance_number") not in removed
        ]

    def _redeploy_pending(self, service_id: str) -> bool:
        asked = self._requested_at.get(service_id)
        return asked is not None and time.monotonic() - asked < self.settings.schedule_grace_s

    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None:
        """Make ``instances`` instances live; live ones (Oakestra's own redeploys too) are kept.

        Ended instances (a FAILED one included) are removed first: Oakestra keeps listing a
        failed instance beside its replacement, and it must not be counted as lost again.
        """
        if instances < 1:
            raise AdapterError(f"cannot deploy {service_id} with {instances} instances; use undeploy to stop it")
        job = self._job(service_id)  # the root answers "ok" for unknown ids: look first
        if job is None:
            raise AdapterError(f"Oakestra has no service {service_id} to deploy")
        live = 0
        for item in self._current(service_id, job):
            number = item.get("instance_number")
            if sla.state_of(item.get("status")) in (ServiceState.PENDING, ServiceState.RUNNING):
                live += 1
            elif isinstance(number, int):
                self._remove_instance(service_id, number)
        if job.get("status") == "REQUESTED" and self._redeploy_pending(service_id):
            live += 1  # asked for moments ago, not scheduled yet
        for _ in range(instances - live):
            self.client.call("POST", f"/api/service/{service_id}/instance", f"deploying service {service_id}")
        if instances > live:
            self._requested_at[service_id] = time.monotonic()
        self._desired[service_id] = instances
        self._undeployed.discard(service_id)

    def undeploy_service(self, app: AppRef, service_id: str) -> None:
        job = self._job(service_id)
        if job is None:
            return
        for item in self._current(service_id, job):
            number = item.get("instance_number")
            if isinstance(number, int):
                self._remove_instance(service_id, number)
        self._undeployed.add(service_id)
        self._desired.pop(service_id, None)
        self._requested_at.pop(service_id, None)

    def _trim(self, service_id: str, instances: list[Json]) -> list[Json]:
        """Oakestra redeployed a failed instance itself after FLOps did: keep only as many as FLOps wants."""
        desired = self._desired.get(service_id)
        live = [
            item
            for item in instances
            if sla.state_of(item.get("status")) in (ServiceState.PENDING, ServiceState.RUNNING)
        ]
        if desired is None or len(live) <= desired:
            return instances
        surplus = sorted(live, key=lambda item: int(item.get("instance_number") or 0))[desired:]
        for item in surplus:
            self._remove_instance(service_id, int(item["instance_number"]))
        return [item for item in instances if item not in surplus]

    def inspect_service(self, app: AppRef, service_id: str) -> ServiceInfo:
        job = self._job(service_id)
        if job is None:
            return ServiceInfo(service_id, ServiceState.UNKNOWN, detail="Oakestra has no such service")
        name = sla.flops_name_of(job) or str(job.get("microservice_name") or service_id)
        job = {**job, "instance_list": self._trim(service_id, self._current(service_id, job))}
        return sla.service_info(name, job, service_id in self._undeployed, self._redeploy_pending(service_id))

    # -- nodes -----------------------------------------------------------------------------
    def list_nodes(self) -> list[NodeInfo]:
        """Configured learner nodes in active clusters; without any, one pseudo-node per active cluster."""
        clusters = self._active_clusters()
        active = {str(cluster.get("cluster_name")): cluster for cluster in clusters if cluster.get("cluster_name")}
        if self.settings.nodes:
            return [
                NodeInfo(node.name, node.cluster, dict(node.labels), node.data_server, node.learner)
                for node in self.settings.nodes
                if node.cluster in active
            ]
        nodes = []
        for name, cluster in sorted(active.items()):
            addons = cluster.get("supported_addons")
            learner = self.settings.learner_addon in addons if isinstance(addons, list) else True
            labels = {"oakestra.io/cluster-id": object_id(cluster.get("_id"))}
            if cluster.get("cluster_location"):
                labels["oakestra.io/location"] = str(cluster["cluster_location"])
            nodes.append(NodeInfo(name, name, labels, None, learner))
        return nodes
