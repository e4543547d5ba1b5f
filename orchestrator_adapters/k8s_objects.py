"""Every Kubernetes object the adapter creates, as plain manifests built by pure functions.

Keeping construction free of I/O lets the tests validate each object, for every service
kind and both training modes, against the official schemas.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict
from typing import Any

from orchestrator_adapters import k8s_names as names
from orchestrator_adapters.base import (
    AppKind,
    AppRef,
    Placement,
    PortSpec,
    Resources,
    ServiceKind,
    ServiceSpec,
    image_command,
)
from orchestrator_adapters.k8s_settings import KubernetesSettings

Manifest = dict[str, Any]

LEARNER_KINDS = frozenset({ServiceKind.LEARNER, ServiceKind.DATA_SERVER})


# -- apps ------------------------------------------------------------------------
def app_labels(app: AppRef) -> dict[str, str]:
    labels = {
        names.MANAGED_BY: names.MANAGER,
        names.APP_LABEL: app.app_id,
        names.APP_KIND_LABEL: app.kind.value,
        names.CUSTOMER_LABEL: names.label_value(app.customer),
    }
    if app.project_id:
        labels[names.PROJECT_LABEL] = names.label_value(app.project_id)
    return labels


def app_annotations(app: AppRef) -> dict[str, str]:
    annotations = {names.NAME_ANNOTATION: app.name, names.CUSTOMER_ANNOTATION: app.customer}
    if app.project_id:
        annotations[names.PROJECT_ANNOTATION] = app.project_id
    return annotations


def app_ref(prefix: str, name: str, kind: AppKind, customer: str, project_id: str | None) -> AppRef:
    """The app a namespace stands for; its id is the namespace name."""
    return AppRef(names.namespace_name(prefix, customer, name), name, kind, customer, project_id)


def app_from_namespace(namespace: Manifest) -> AppRef | None:
    """Read an app back from its namespace; None when FLOps did not create the namespace."""
    metadata = namespace.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if labels.get(names.MANAGED_BY) != names.MANAGER or names.NAME_ANNOTATION not in annotations:
        return None
    return AppRef(
        app_id=metadata["name"],
        name=annotations[names.NAME_ANNOTATION],
        kind=AppKind(labels.get(names.APP_KIND_LABEL, AppKind.PROJECT.value)),
        customer=annotations.get(names.CUSTOMER_ANNOTATION, ""),
        project_id=annotations.get(names.PROJECT_ANNOTATION),
    )


def namespace_manifest(app: AppRef) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": app.app_id, "labels": app_labels(app), "annotations": app_annotations(app)},
    }


def pull_secret_manifest(app: AppRef, settings: KubernetesSettings) -> Manifest | None:
    """A dockerconfigjson Secret for the registry, when it has credentials."""
    registry, name = settings.registry, settings.pull_secret_name
    if registry is None or not registry.username or name is None:
        return None
    password = registry.password or ""
    auth = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    config = {"auths": {registry.address: {"username": registry.username, "password": password, "auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": app.app_id, "labels": app_labels(app)},
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


# -- service specs ---------------------------------------------------------------
def encode_spec(spec: ServiceSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def decode_spec(text: str) -> ServiceSpec:
    data = json.loads(text)
    placement = data["placement"]
    return ServiceSpec(
        name=data["name"],
        kind=ServiceKind(data["kind"]),
        config=data["config"],
        image=data["image"],
        command=tuple(data["command"]),
        environment=dict(data["environment"]),
        resources=Resources(**data["resources"]),
        placement=Placement(
            node=placement["node"],
            cluster=placement["cluster"],
            node_labels=dict(placement["node_labels"]),
            data_tags=tuple(placement["data_tags"]),
        ),
        ports=tuple(PortSpec(**port) for port in data["ports"]),
    )


def service_labels(app: AppRef, spec: ServiceSpec) -> dict[str, str]:
    return {**app_labels(app), names.SERVICE_LABEL: names.object_name(spec.name), names.KIND_LABEL: spec.kind.value}


def selector_labels(app: AppRef, service_name: str) -> dict[str, str]:
    return {names.APP_LABEL: app.app_id, names.SERVICE_LABEL: names.object_name(service_name)}


def _metadata(app: AppRef, spec: ServiceSpec, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": app.app_id,
        "labels": service_labels(app, spec),
        "annotations": {names.SERVICE_ANNOTATION: spec.name},
    }


def config_secret_manifest(app: AppRef, spec: ServiceSpec) -> Manifest:
    """The service's configuration document (and its spec, so a restarted manager can deploy it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(app, spec, names.config_secret_name(spec.name)),
        "stringData": {names.CONFIG_KEY: json.dumps(spec.config), names.SPEC_KEY: encode_spec(spec)},
    }


# -- pods --------------------------------------------------------------------------
def cpu_quantity(vcpus: float) -> str:
    millicores = max(1, math.ceil(vcpus * 1000))
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def resource_requirements(resources: Resources) -> Manifest:
    """Requests and limits from the SLA's resource constraints (memory and storage are hard limits)."""
    amounts = {"cpu": cpu_quantity(resources.vcpus), "memory": f"{max(1, resources.memory_mb)}Mi"}
    if resources.storage_mb > 0:
        amounts["ephemeral-storage"] = f"{resources.storage_mb}Mi"
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _node_selector(spec: ServiceSpec, settings: KubernetesSettings) -> dict[str, str]:
    selector = dict(spec.placement.node_labels)
    if spec.placement.cluster:
        selector[settings.cluster_label] = spec.placement.cluster
    if spec.kind in LEARNER_KINDS:
        selector[settings.learner_node_label] = "true"
    return selector


def _affinity(spec: ServiceSpec, tagged_nodes: list[str] | None) -> Manifest | None:
    """Pin to one node (by name), or to the nodes advertising the service's data tags."""
    nodes = [spec.placement.node] if spec.placement.node else tagged_nodes
    if not nodes:
        return None
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": sorted(nodes)}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def _environment(spec: ServiceSpec) -> list[Manifest]:
    env: list[Manifest] = [
        {
            "name": names.CONFIG_KEY,
            "valueFrom": {"secretKeyRef": {"name": names.config_secret_name(spec.name), "key": names.CONFIG_KEY}},
        }
    ]
    env += [{"name": key, "value": value} for key, value in sorted(spec.environment.items()) if key != names.CONFIG_KEY]
    fields = {"FLOPS_NODE_NAME": "spec.nodeName", "FLOPS_POD_NAME": "metadata.name"}
    env += [
        {"name": key, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for key, path in fields.items()
        if key not in spec.environment
    ]
    return env


def _container(spec: ServiceSpec, settings: KubernetesSettings, host_ports: bool) -> Manifest:
    if not spec.image:
        raise ValueError(f"service {spec.name} has no image; Kubernetes runs container images")
    container: Manifest = {
        "name": names.container_name(spec.kind.value),
        "image": spec.image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": _environment(spec),
        "resources": resource_requirements(spec.resources),
        # A crash's last log lines become the terminated state's message: the status shows why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if command := image_command(spec):
        container["command"] = list(command)
    if spec.ports:
        container["ports"] = [
            {
                "name": names.port_name(port.name, index),
                "containerPort": port.port,
                "protocol": port.protocol.upper(),
                **({"hostPort": port.port} if host_ports else {}),
            }
            for index, port in enumerate(spec.ports)
        ]
    return container


def pod_template(
    app: AppRef, spec: ServiceSpec, settings: KubernetesSettings, tagged_nodes: list[str] | None = None
) -> Manifest:
    data_server = spec.kind is ServiceKind.DATA_SERVER
    container = _container(spec, settings, host_ports=data_server)
    pod_spec: Manifest = {
        "containers": [container],
        "restartPolicy": "Never" if spec.one_shot else "Always",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    selector = _node_selector(spec, settings)
    if selector:
        pod_spec["nodeSelector"] = selector
    affinity = _affinity(spec, tagged_nodes)
    if affinity:
        pod_spec["affinity"] = affinity
    if settings.pull_secret_name:
        pod_spec["imagePullSecrets"] = [{"name": settings.pull_secret_name}]
    storage_dir = spec.config.get("storage_dir")
    if data_server and isinstance(storage_dir, str):
        pod_spec["volumes"] = [
            {"name": "data", "hostPath": {"path": settings.data_host_path, "type": "DirectoryOrCreate"}}
        ]
        container["volumeMounts"] = [{"name": "data", "mountPath": storage_dir}]
    return {
        "metadata": {"labels": service_labels(app, spec), "annotations": {names.SERVICE_ANNOTATION: spec.name}},
        "spec": pod_spec,
    }


# -- workloads -------------------------------------------------------------------
def job_manifest(
    app: AppRef, spec: ServiceSpec, settings: KubernetesSettings, instances: int, tagged_nodes: list[str] | None
) -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(app, spec, names.object_name(spec.name)),
        "spec": {
            "backoffLimit": 0,  # a failed run is reported, not retried behind the user's back
            "completions": instances,
            "parallelism": instances,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "template": pod_template(app, spec, settings, tagged_nodes),
        },
    }


def deployment_manifest(
    app: AppRef, spec: ServiceSpec, settings: KubernetesSettings, instances: int, tagged_nodes: list[str] | None
) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(app, spec, names.object_name(spec.name)),
        "spec": {
            "replicas": instances,
            "selector": {"matchLabels": selector_labels(app, spec.name)},
            "template": pod_template(app, spec, settings, tagged_nodes),
        },
    }


def daemonset_manifest(app: AppRef, spec: ServiceSpec, settings: KubernetesSettings) -> Manifest:
    """Data servers: one pod on every node labelled as a learner, reachable at the node's address."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _metadata(app, spec, names.object_name(spec.name)),
        "spec": {
            "selector": {"matchLabels": selector_labels(app, spec.name)},
            "template": pod_template(app, spec, settings),
        },
    }


def workload_kind(spec: ServiceSpec) -> str:
    if spec.kind is ServiceKind.DATA_SERVER:
        return "DaemonSet"
    return "Job" if spec.one_shot else "Deployment"


def workload_manifest(
    app: AppRef,
    spec: ServiceSpec,
    settings: KubernetesSettings,
    instances: int = 1,
    tagged_nodes: list[str] | None = None,
) -> Manifest:
    kind = workload_kind(spec)
    if kind == "DaemonSet":
        return daemonset_manifest(app, spec, settings)
    if kind == "Job":
        return job_manifest(app, spec, settings, instances, tagged_nodes)
    return deployment_manifest(app, spec, settings, instances, tagged_nodes)


def service_manifest(app: AppRef, spec: ServiceSpec) -> Manifest | None:
    """A ClusterIP Service giving the service's ports a stable DNS name; None without ports."""
    if not spec.ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(app, spec, names.object_name(spec.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(app, spec.name),
            "ports": [
                {
                    "name": names.port_name(port.name, index),
                    "port": port.port,
                    "targetPort": port.port,
                    "protocol": port.protocol.upper(),
                }
                for index, port in enumerate(spec.ports)
            ],
        },
    }


def service_host(app: AppRef, service_name: str, settings: KubernetesSettings) -> str:
    return f"{names.object_name(service_name)}.{app.app_id}.{settings.service_domain}"
