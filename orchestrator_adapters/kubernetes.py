"""Run FLOps services on a Kubernetes cluster through the official client.

An app is a namespace labelled with its customer and project; one-shot services are Jobs,
long-lived ones Deployments, data servers a DaemonSet on learner nodes; services with ports
get a ClusterIP Service. Every object carries the app's label, so cleanup deletes exactly
what the app created. Manifests come from :mod:`orchestrator_adapters.k8s_objects`.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from flops_utils.service_config import DataServerConfig, ServerCertificate
from orchestrator_adapters import k8s_names as names
from orchestrator_adapters import k8s_objects as objects
from orchestrator_adapters import k8s_status as status
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
    Resources,
    ServiceInfo,
    ServiceKind,
    ServiceSpec,
    ServiceState,
)
from orchestrator_adapters.k8s_settings import KubernetesSettings

__all__ = ["KubernetesAdapter", "KubernetesSettings"]

DATA_SERVERS_APP = "data-servers"
DATA_SERVERS_CUSTOMER = "flops"

Manifest = dict[str, Any]
_CONFLICT, _NOT_FOUND = 409, 404


def _reason(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or error.reason or f"HTTP {error.status}")


class KubernetesAdapter(OrchestratorAdapter):
    """Constructing it does no I/O; the kubeconfig is read on the first call."""

    name = "kubernetes"
    capabilities = AdapterCapabilities(
        runs_images=True,
        host_processes=False,
        bind_host="0.0.0.0",
        config_delivery=ConfigDelivery.SECRET,
        private_configs=True,
        runs_data_servers=True,
    )

    def __init__(self, settings: KubernetesSettings) -> None:
        self.settings = settings
        self._api_client: client.ApiClient | None = None
        self._client_lock = threading.Lock()
        self._specs: dict[tuple[str, str], ServiceSpec] = {}

    # -- plumbing ----------------------------------------------------------------------
    def _client(self) -> client.ApiClient:
        with self._client_lock:
            return self._client_locked()

    def _client_locked(self) -> client.ApiClient:
        if self._api_client is None:
            try:
                if self.settings.in_cluster:
                    configuration = client.Configuration()
                    config.load_incluster_config(client_configuration=configuration)
                    self._api_client = client.ApiClient(configuration)
                else:
                    self._api_client = config.new_client_from_config(
                        config_file=self.settings.kubeconfig, context=self.settings.context
                    )
            except (config.ConfigException, OSError) as error:
                raise AdapterError(f"cannot load Kubernetes credentials: {error}") from error
        return self._api_client

    @property
    def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._client())

    @property
    def _batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self._client())

    @property
    def _apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self._client())

    def _call(
        self, what: str, method: Callable[..., Any], *args: Any, ignore: tuple[int, ...] = (), **kwargs: Any
    ) -> Manifest | None:
        """Call the API and return the answer's JSON (None when its status is in ``ignore``).

        Answers are read as plain JSON rather than client models: status fields the models
        would reject, or a server newer than the client, never break the adapter.
        """
        try:
            response = method(*args, _request_timeout=self.settings.request_timeout_s, _preload_content=False, **kwargs)
        except ApiException as error:
            if error.status in ignore:
                return None
            raise AdapterError(f"Kubernetes refused to {what}: {_reason(error)}") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise AdapterError(f"cannot reach the Kubernetes API to {what}: {error}") from error
        try:
            answer = json.loads(response.data or b"{}")
        except ValueError as error:
            raise AdapterError(f"the Kubernetes API answered {what} with something other than JSON") from error
        return answer if isinstance(answer, dict) else {}

    def _items(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Manifest]:
        found = self._call(what, method, *args, ignore=(_NOT_FOUND,), **kwargs)
        return list((found or {}).get("items") or [])

    def start(self) -> None:
        """With ``data_server_image`` set: ensure a data server runs on every learner node."""
        image = self.settings.data_server_image
        if not image:
            return
        app = self.create_app(DATA_SERVERS_APP, AppKind.OBSERVATORY, DATA_SERVERS_CUSTOMER)
        port = self.settings.data_server_port
        security = self.settings.data_security
        config = DataServerConfig(
            node="kubernetes-daemonset",
            node_from_env="FLOPS_NODE_NAME",
            host="0.0.0.0",
            port=port,
            storage_dir="/data",
            tls=ServerCertificate(cert_pem=security.cert_pem, key_pem=security.key_pem) if security else None,
            token_public_key_pem=security.token_public_key_pem if security else None,
        )
        spec = ServiceSpec(
            name="data-server",
            kind=ServiceKind.DATA_SERVER,
            config=config.model_dump(mode="json"),
            image=image,
            command=tuple(self.settings.data_server_command),
            resources=Resources(memory_mb=512, vcpus=0.5),
            ports=(PortSpec("flight", port),),
        )
        self.deploy_service(app, self.add_service(app, spec))

    def close(self) -> None:
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None

    # -- apps ----------------------------------------------------------------------------
    def create_app(self, name: str, kind: AppKind, customer: str, project_id: str | None = None) -> AppRef:
        app = objects.app_ref(self.settings.namespace_prefix, name, kind, customer, project_id)
        created = self._call(
            f"create namespace {app.app_id}",
            self._core.create_namespace,
            objects.namespace_manifest(app),
            ignore=(_CONFLICT,),
        )
        if created is None:
            existing = self._app_in(app.app_id)
            if existing is None or existing.name != name or existing.customer != customer:
                raise AdapterError(
                    f"namespace {app.app_id} already exists and is not FLOps app {name!r} of {customer!r} "
                    "(or is still being deleted)"
                )
            app = existing
        pull_secret = objects.pull_secret_manifest(app, self.settings)
        if pull_secret is not None:
            self._apply_secret(app.app_id, pull_secret)
        return app

    def _app_in(self, namespace: str) -> AppRef | None:
        found = self._call(f"read namespace {namespace}", self._core.read_namespace, namespace, ignore=(_NOT_FOUND,))
        if found is None or (found.get("status") or {}).get("phase") == "Terminating":
            return None
        return objects.app_from_namespace(found)

    def find_app(self, name: str, customer: str) -> AppRef | None:
        namespace = names.namespace_name(self.settings.namespace_prefix, customer, name)
        app = self._app_in(namespace)
        if app is None or app.name != name or app.customer != customer:
            return None
        return app

    def delete_app(self, app: AppRef) -> None:
        """Delete the app's objects (by its label) and then the namespace it created."""
        selector = self._app_selector(app)
        namespace = app.app_id
        kinds: list[tuple[str, Callable[..., Any], Callable[..., Any]]] = [
            ("jobs", self._batch.list_namespaced_job, self._batch.delete_namespaced_job),
            ("deployments", self._apps.list_namespaced_deployment, self._apps.delete_namespaced_deployment),
            ("daemon sets", self._apps.list_namespaced_daemon_set, self._apps.delete_namespaced_daemon_set),
            ("services", self._core.list_namespaced_service, self._core.delete_namespaced_service),
            ("secrets", self._core.list_namespaced_secret, self._core.delete_namespaced_secret),
        ]
        for label, list_method, delete_method in kinds:
            for item in self._items(
                f"list the {label} of {namespace}", list_method, namespace, label_selector=selector
            ):
                name = item["metadata"]["name"]
                self._call(
                    f"delete {name}",
                    delete_method,
                    name,
                    namespace,
                    propagation_policy="Background",
                    ignore=(_NOT_FOUND,),
                )
        for key in [key for key in self._specs if key[0] == namespace]:
            del self._specs[key]
        if self._app_in(namespace) is not None:
            self._call(f"delete namespace {namespace}", self._core.delete_namespace, namespace, ignore=(_NOT_FOUND,))

    @staticmethod
    def _app_selector(app: AppRef) -> str:
        return f"{names.MANAGED_BY}={names.MANAGER},{names.APP_LABEL}={app.app_id}"

    def _apply_secret(self, namespace: str, manifest: Manifest) -> None:
        name = manifest["metadata"]["name"]
        created = self._call(
            f"create secret {name}", self._core.create_namespaced_secret, namespace, manifest, ignore=(_CONFLICT,)
        )
        if created is None:
            self._call(f"replace secret {name}", self._core.replace_namespaced_secret, name, namespace, manifest)

    # -- services ----------------------------------------------------------------------
    def plan_endpoint(self, app: AppRef, service_name: str, port: PortSpec, placement: Placement) -> Endpoint:
        """The Service DNS name: ``<service>.<namespace>.svc.cluster.local:<port>``."""
        return Endpoint(objects.service_host(app, service_name, self.settings), port.port)

    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        if not spec.image:
            raise AdapterError(f"service {spec.name} has no image; the Kubernetes adapter runs container images")
        self._apply_secret(app.app_id, objects.config_secret_manifest(app, spec))
        self._specs[(app.app_id, spec.name)] = spec
        return spec.name

    def _registration(self, app: AppRef, service_id: str) -> Manifest | None:
        secret_name = names.config_secret_name(service_id)
        return self._call(
            f"read secret {secret_name}",
            self._core.read_namespaced_secret,
            secret_name,
            app.app_id,
            ignore=(_NOT_FOUND,),
        )

    def _spec(self, app: AppRef, service_id: str) -> ServiceSpec | None:
        """The registered spec: cached, or read back from its Secret (the manager may have restarted)."""
        cached = self._specs.get((app.app_id, service_id))
        if cached is not None:
            return cached
        encoded = ((self._registration(app, service_id) or {}).get("data") or {}).get(names.SPEC_KEY)
        if not encoded:
            return None
        spec = objects.decode_spec(base64.b64decode(encoded).decode())
        self._specs[(app.app_id, service_id)] = spec
        return spec

    def _require_spec(self, app: AppRef, service_id: str) -> ServiceSpec:
        spec = self._spec(app, service_id)
        if spec is None:
            raise AdapterError(f"service {service_id} is not registered in app {app.name}")
        return spec

    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None:
        spec = self._require_spec(app, service_id)
        tagged_nodes = None
        if spec.kind is ServiceKind.LEARNER and spec.placement.data_tags and not spec.placement.node:
            tagged_nodes = self._nodes_with_tags(spec.placement.data_tags)
            if not tagged_nodes:
                raise AdapterError(
                    f"no node advertises data tags {list(spec.placement.data_tags)} "
                    f"(node annotation {self.settings.data_tags_annotation})"
                )
        manifest = objects.workload_manifest(app, spec, self.settings, instances, tagged_nodes)
        self._create_workload(app, spec, manifest)
        secret_name = names.config_secret_name(spec.name)
        self._call(
            f"mark {spec.name} deployed",
            self._core.patch_namespaced_secret,
            secret_name,
            app.app_id,
            {"metadata": {"annotations": {names.DEPLOYED_ANNOTATION: "true"}}},
            ignore=(_NOT_FOUND,),
        )
        service = objects.service_manifest(app, spec)
        if service is not None:
            self._call(
                f"create the Service of {spec.name}",
                self._core.create_namespaced_service,
                app.app_id,
                service,
                ignore=(_CONFLICT,),
            )

    def _create_workload(self, app: AppRef, spec: ServiceSpec, manifest: Manifest) -> None:
        kind, name, namespace = manifest["kind"], manifest["metadata"]["name"], app.app_id
        methods: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None]] = {
            "Job": (self._batch.create_namespaced_job, None),
            "Deployment": (self._apps.create_namespaced_deployment, self._apps.replace_namespaced_deployment),
            "DaemonSet": (self._apps.create_namespaced_daemon_set, self._apps.replace_namespaced_daemon_set),
        }
        create, replace = methods[kind]
        created = self._call(f"create {kind} {name}", create, namespace, manifest, ignore=(_CONFLICT,))
        if created is not None:
            return
        if replace is None:
            raise AdapterError(f"service {spec.name} is already running as Job {name}; undeploy it first")
        self._call(f"update {kind} {name}", replace, name, namespace, manifest)

    def undeploy_service(self, app: AppRef, service_id: str) -> None:
        spec = self._spec(app, service_id)
        name, namespace = names.object_name(service_id), app.app_id
        deleters = {
            "Job": self._batch.delete_namespaced_job,
            "Deployment": self._apps.delete_namespaced_deployment,
            "DaemonSet": self._apps.delete_namespaced_daemon_set,
        }
        kinds = [objects.workload_kind(spec)] if spec is not None else list(deleters)
        for kind in kinds:
            self._call(
                f"delete {kind} {name}",
                deleters[kind],
                name,
                namespace,
                propagation_policy="Background",
                ignore=(_NOT_FOUND,),
            )
        self._call(
            f"delete Service {name}", self._core.delete_namespaced_service, name, namespace, ignore=(_NOT_FOUND,)
        )

    def inspect_service(self, app: AppRef, service_id: str) -> ServiceInfo:
        spec = self._spec(app, service_id)
        if spec is None:
            return ServiceInfo(service_id, ServiceState.UNKNOWN, detail="no such service")
        name, namespace, kind = names.object_name(service_id), app.app_id, objects.workload_kind(spec)
        reader = {
            "Job": self._batch.read_namespaced_job,
            "Deployment": self._apps.read_namespaced_deployment,
            "DaemonSet": self._apps.read_namespaced_daemon_set,
        }[kind]
        workload = self._call(f"read {kind} {name}", reader, name, namespace, ignore=(_NOT_FOUND,))
        if workload is None:
            registration = self._registration(app, service_id) or {}
            annotations = (registration.get("metadata") or {}).get("annotations") or {}
            if annotations.get(names.DEPLOYED_ANNOTATION) == "true":
                return ServiceInfo(service_id, ServiceState.STOPPED, detail="undeployed")
            return ServiceInfo(service_id, ServiceState.PENDING, detail="registered, not deployed yet")
        selector = ",".join(f"{key}={value}" for key, value in objects.selector_labels(app, service_id).items())
        pods = self._items(
            f"list the pods of {name}", self._core.list_namespaced_pod, namespace, label_selector=selector
        )
        pods.sort(key=lambda pod: pod["metadata"]["name"])
        if kind == "Job":
            return status.job_info(service_id, workload, pods)
        if kind == "Deployment":
            return status.deployment_info(service_id, workload, pods)
        return status.daemonset_info(service_id, workload, pods)

    # -- nodes ---------------------------------------------------------------------------
    def _node_manifests(self) -> list[Manifest]:
        return self._items("list nodes", self._core.list_node)

    def _data_server_addresses(self) -> dict[str, str]:
        """node -> host:port of the FLOps data server pod running there."""
        selector = f"{names.MANAGED_BY}={names.MANAGER},{names.KIND_LABEL}={ServiceKind.DATA_SERVER.value}"
        addresses: dict[str, str] = {}
        for pod in self._items("list data servers", self._core.list_pod_for_all_namespaces, label_selector=selector):
            spec, pod_status = pod.get("spec") or {}, pod.get("status") or {}
            node, host = spec.get("nodeName"), pod_status.get("hostIP")
            ports = [port for container in spec.get("containers") or [] for port in container.get("ports") or []]
            if pod_status.get("phase") != "Running" or not node or not host or not ports:
                continue
            addresses[node] = f"{host}:{ports[0].get('hostPort') or ports[0]['containerPort']}"
        return addresses

    def _tags_of(self, node: Manifest) -> set[str]:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        raw = annotations.get(self.settings.data_tags_annotation, "")
        return {tag.strip() for tag in raw.split(",") if tag.strip()}

    def _nodes_with_tags(self, tags: tuple[str, ...]) -> list[str]:
        wanted = set(tags)
        return sorted(node["metadata"]["name"] for node in self._node_manifests() if self._tags_of(node) & wanted)

    def _is_learner(self, node: Manifest) -> bool:
        labels = (node.get("metadata") or {}).get("labels") or {}
        if labels.get(self.settings.learner_node_label, "").lower() not in ("true", "1", "yes"):
            return False
        if (node.get("spec") or {}).get("unschedulable"):
            return False
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = [condition for condition in conditions if condition.get("type") == "Ready"]
        return not ready or ready[0].get("status") == "True"

    def list_nodes(self) -> list[NodeInfo]:
        nodes = self._node_manifests()
        data_servers = self._data_server_addresses()
        infos: list[NodeInfo] = []
        for node in nodes:
            metadata = node.get("metadata") or {}
            labels = dict(metadata.get("labels") or {})
            annotations = metadata.get("annotations") or {}
            tags = self._tags_of(node)
            if tags:
                labels[self.settings.data_tags_annotation] = ",".join(sorted(tags))
            name = metadata["name"]
            infos.append(
                NodeInfo(
                    name=name,
                    cluster=labels.get(self.settings.cluster_label),
                    labels=labels,
                    data_server=data_servers.get(name) or annotations.get(self.settings.data_server_annotation),
                    learner=self._is_learner(node),
                )
            )
        return sorted(infos, key=lambda info: info.name)
