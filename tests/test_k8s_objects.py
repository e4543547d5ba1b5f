"""Every object the Kubernetes adapter creates validates strictly against the official schemas."""

from __future__ import annotations

import base64
import functools
import json
import re
from typing import Any

import kubernetes_validate
import pytest
from pydantic import BaseModel

from flops_utils.service_config import (
    AggregatorConfig,
    BuilderConfig,
    DataServerConfig,
    LearnerConfig,
    MqttSettings,
    ObserverConfig,
    RegistrySettings,
    ServingConfig,
    TrackingConfig,
    TrainingSettings,
)
from orchestrator_adapters import k8s_names as names
from orchestrator_adapters import k8s_objects as objects
from orchestrator_adapters import k8s_status as status
from orchestrator_adapters.base import (
    AppKind,
    AppRef,
    Placement,
    PortSpec,
    Resources,
    ServiceKind,
    ServiceSpec,
    ServiceState,
)
from orchestrator_adapters.k8s_settings import KubernetesSettings

SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
# validate() re-reads the (large) schema files on every call; they never change, so read each once.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(  # type: ignore[attr-defined]
    kubernetes_validate.utils.schema_contents  # type: ignore[attr-defined]
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
MQTT = MqttSettings(host="mqtt.flops.svc.cluster.local", port=1883, username="flops", password="secret")
TRAINING = TrainingSettings(data_tags=["mnist"])
PROJECT = "c0ffee0123456789"


def _config(kind: ServiceKind, mode: str) -> BaseModel:
    common: dict[str, Any] = {"project_id": PROJECT, "mqtt": MQTT}
    cluster = "zone-a" if mode == "hierarchical" else None
    if kind is ServiceKind.TRACKING:
        return TrackingConfig(
            customer="Admin",
            backend_store_uri="sqlite:////data/mlflow.db",
            artifacts_destination="/data/artifacts",
            bind_host="0.0.0.0",
            port=5000,
        )
    if kind is ServiceKind.OBSERVER:
        return ObserverConfig(**common, bind_host="0.0.0.0", port=8090, log_file="/work/events.log")
    if kind is ServiceKind.BUILDER:
        return BuilderConfig(
            **common,
            repo_url="https://example.org/ml.git",
            flavor="sklearn",
            cache_dir="/cache",
            mode="oci",
            registry=RegistrySettings(address="registry:5000"),
        )
    if kind is ServiceKind.AGGREGATOR:
        return AggregatorConfig(
            **common,
            role="cluster" if cluster else "classic",
            cluster=cluster,
            training=TRAINING,
            flavor="sklearn",
            app_dir="/app",
            bind_host="0.0.0.0",
            port=9092,
            root_address="root-aggregator.ns.svc.cluster.local:9092" if cluster else None,
            work_dir="/work",
        )
    if kind is ServiceKind.LEARNER:
        return LearnerConfig(
            **common,
            node="node-a",
            cluster=cluster,
            app_dir="/app",
            aggregator_address="aggregator.ns.svc.cluster.local:9092",
            data_server_address="192.0.2.10:9400",
            data_tags=["mnist"],
            work_dir="/work",
        )
    if kind is ServiceKind.SERVING:
        return ServingConfig(
            **common, model_uri="models:/m/1", tracking_uri="http://tracking:5000", bind_host="0.0.0.0", port=8080
        )
    return DataServerConfig(node="node-a", host="0.0.0.0", port=9400, storage_dir="/data")


PORTS = {
    ServiceKind.TRACKING: (PortSpec("http", 5000),),
    ServiceKind.OBSERVER: (PortSpec("http", 8090),),
    ServiceKind.AGGREGATOR: (PortSpec("fleet", 9092),),
    ServiceKind.SERVING: (PortSpec("http", 8080),),
    ServiceKind.DATA_SERVER: (PortSpec("flight", 9400),),
}


def make_spec(kind: ServiceKind, mode: str) -> ServiceSpec:
    hierarchical = mode == "hierarchical"
    placement = Placement()
    if kind is ServiceKind.LEARNER:
        placement = Placement(node="node-a", cluster="zone-a" if hierarchical else None, data_tags=("mnist",))
    elif kind is ServiceKind.AGGREGATOR and hierarchical:
        placement = Placement(cluster="zone-a")
    name = {ServiceKind.LEARNER: "learner-node-a", ServiceKind.AGGREGATOR: "cluster-aggregator-zone-a"}.get(
        kind, kind.value
    )
    return ServiceSpec(
        name=name if hierarchical else name.replace("cluster-aggregator-zone-a", "aggregator"),
        kind=kind,
        config=_config(kind, mode).model_dump(mode="json"),
        image=f"registry:5000/flops/{kind.value}:abc123",
        command=("python", "-m", f"services.{kind.value}.main"),
        environment={"FLOPS_WORKDIR": "/work"},
        resources=Resources(memory_mb=512, vcpus=0.5, storage_mb=200),
        placement=placement,
        ports=PORTS.get(kind, ()),
    )


def make_app(kind: ServiceKind) -> AppRef:
    if kind in (ServiceKind.TRACKING, ServiceKind.OBSERVER):
        return objects.app_ref("flops", "observatory", AppKind.OBSERVATORY, "Admin", None)
    return objects.app_ref("flops", f"project-{PROJECT[:8]}", AppKind.PROJECT, "Admin", PROJECT)


def all_objects(spec: ServiceSpec, settings: KubernetesSettings) -> list[dict[str, Any]]:
    app = make_app(spec.kind)
    manifests = [
        objects.namespace_manifest(app),
        objects.pull_secret_manifest(app, settings),
        objects.config_secret_manifest(app, spec),
        objects.workload_manifest(app, spec, settings, instances=2),
        objects.service_manifest(app, spec),
    ]
    return [manifest for manifest in manifests if manifest is not None]


def _check_metadata(manifest: dict[str, Any]) -> None:
    metadata = manifest["metadata"]
    assert DNS_LABEL.match(metadata["name"]) and len(metadata["name"]) <= 63, metadata["name"]
    for key, value in (metadata.get("labels") or {}).items():
        assert LABEL_KEY.match(key), key
        assert LABEL_VALUE.match(value) and len(value) <= 63, (key, value)


SETTINGS = {
    "plain": KubernetesSettings(),
    "registry": KubernetesSettings(registry=RegistrySettings(address="registry:5000", username="u", password="p")),
}


@pytest.mark.parametrize("settings_name", sorted(SETTINGS))
@pytest.mark.parametrize("mode", ["classic", "hierarchical"])
@pytest.mark.parametrize("kind", list(ServiceKind))
def test_every_object_validates_strictly(kind: ServiceKind, mode: str, settings_name: str) -> None:
    settings = SETTINGS[settings_name]
    manifests = all_objects(make_spec(kind, mode), settings)
    assert len(manifests) >= 3
    for manifest in manifests:
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
        _check_metadata(manifest)
        template = (manifest.get("spec") or {}).get("template")
        if template:
            for key, value in template["metadata"]["labels"].items():
                assert LABEL_KEY.match(key) and LABEL_VALUE.match(value)


def test_a_typo_in_a_manifest_fails_validation() -> None:
    """Guards the test above: strict validation does reject what the API server would."""
    job = objects.workload_manifest(
        make_app(ServiceKind.LEARNER), make_spec(ServiceKind.LEARNER, "classic"), KubernetesSettings()
    )
    job["spec"]["backofLimit"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.37.0", strict=True)


def test_workload_kinds_and_run_semantics() -> None:
    settings = KubernetesSettings(job_ttl_seconds=600)
    for kind in ServiceKind:
        spec = make_spec(kind, "classic")
        manifest = objects.workload_manifest(make_app(kind), spec, settings, instances=3)
        pod = manifest["spec"]["template"]["spec"]
        if kind is ServiceKind.DATA_SERVER:
            assert manifest["kind"] == "DaemonSet"
            assert pod["nodeSelector"] == {"flops.io/learner": "true"}
            assert pod["containers"][0]["ports"][0]["hostPort"] == 9400
            assert pod["volumes"][0]["hostPath"]["path"] == settings.data_host_path
            assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/data"
        elif spec.one_shot:
            assert manifest["kind"] == "Job"
            assert manifest["spec"]["backoffLimit"] == 0
            assert manifest["spec"]["ttlSecondsAfterFinished"] == 600
            assert manifest["spec"]["completions"] == manifest["spec"]["parallelism"] == 3
            assert pod["restartPolicy"] == "Never"
        else:
            assert manifest["kind"] == "Deployment"
            assert manifest["spec"]["replicas"] == 3
            assert pod["restartPolicy"] == "Always"
            selector = manifest["spec"]["selector"]["matchLabels"]
            assert selector.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()


def test_config_document_reaches_the_container_through_the_secret() -> None:
    spec = make_spec(ServiceKind.AGGREGATOR, "classic")
    app = make_app(spec.kind)
    secret = objects.config_secret_manifest(app, spec)
    container = objects.workload_manifest(app, spec, KubernetesSettings())["spec"]["template"]["spec"]["containers"][0]
    reference = next(env for env in container["env"] if env["name"] == "FLOPS_CONFIG")["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert json.loads(secret["stringData"][reference["key"]]) == spec.config
    AggregatorConfig.model_validate_json(secret["stringData"][reference["key"]])
    assert objects.decode_spec(secret["stringData"][names.SPEC_KEY]) == spec
    assert {"name": "FLOPS_WORKDIR", "value": "/work"} in container["env"]
    assert container["command"] == list(spec.command)
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "200Mi"}
    assert container["resources"]["limits"] == container["resources"]["requests"]


def test_placement_by_node_cluster_and_learner_label() -> None:
    settings = KubernetesSettings(cluster_label="example.org/cluster")
    learner = make_spec(ServiceKind.LEARNER, "hierarchical")
    pod = objects.pod_template(make_app(learner.kind), learner, settings)["spec"]
    assert pod["nodeSelector"] == {"example.org/cluster": "zone-a", "flops.io/learner": "true"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}]

    aggregator = make_spec(ServiceKind.AGGREGATOR, "hierarchical")
    pod = objects.pod_template(make_app(aggregator.kind), aggregator, settings)["spec"]
    assert pod["nodeSelector"] == {"example.org/cluster": "zone-a"} and "affinity" not in pod

    unpinned = ServiceSpec("learner-x", ServiceKind.LEARNER, {}, image="i", placement=Placement(data_tags=("t",)))
    pod = objects.pod_template(make_app(unpinned.kind), unpinned, settings, tagged_nodes=["n2", "n1"])["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchFields"][0]["values"] == ["n1", "n2"]


def test_registry_pull_secret_holds_the_credentials() -> None:
    settings = SETTINGS["registry"]
    app = make_app(ServiceKind.BUILDER)
    secret = objects.pull_secret_manifest(app, settings)
    assert secret is not None and secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config["auths"]["registry:5000"]["auth"] == base64.b64encode(b"u:p").decode()
    pod = objects.pod_template(app, make_spec(ServiceKind.BUILDER, "classic"), settings)["spec"]
    assert pod["imagePullSecrets"] == [{"name": secret["metadata"]["name"]}]
    assert objects.pull_secret_manifest(app, KubernetesSettings()) is None
    assert (
        "imagePullSecrets"
        not in objects.pod_template(app, make_spec(ServiceKind.BUILDER, "classic"), KubernetesSettings())["spec"]
    )


def test_names_are_stable_valid_and_distinct() -> None:
    assert names.dns_label("learner-node-a") == "learner-node-a"
    assert names.dns_label("learner_node_a") != names.dns_label("learner-node-a")
    assert names.dns_label("Learner.Node A") == names.dns_label("Learner.Node A")
    long = "x" * 200
    assert len(names.dns_label(long)) <= 63 and DNS_LABEL.match(names.dns_label(long))
    assert names.namespace_name("flops", "Admin", "p1") != names.namespace_name("flops", "admin", "p1")
    for text in ["Admin", "a b/c", "-x-", "ü", "a" * 80]:
        value = names.label_value(text)
        assert LABEL_VALUE.match(value) and len(value) <= 63
    assert names.port_name("Fleet_API_Port_Long", 0) == "fleet-api-port"
    assert names.port_name("123", 1) == "port-1"


def _pod(phase: str, container_state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    container = {
        "name": "c",
        "image": "i",
        "imageID": "",
        "ready": False,
        "restartCount": 3,
        "state": container_state,
        "lastState": last or {},
    }
    return {
        "metadata": {"name": "p-1"},
        "spec": {"nodeName": "node-a"},
        "status": {"phase": phase, "containerStatuses": [container]},
    }


def test_status_mapping_reports_crashes_with_their_reason() -> None:
    crash = _pod(
        "Running",
        {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        {"terminated": {"exitCode": 2, "reason": "Error", "message": "log\nKeyError: 'x'\n"}},
    )
    info = status.deployment_info("observer", {"spec": {"replicas": 1}, "status": {}}, [crash])
    assert info.state is ServiceState.FAILED
    assert info.detail == "p-1: CrashLoopBackOff; last run: Error (exit code 2): KeyError: 'x'"
    assert info.instances[0].exit_code == 2

    pull = _pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}})
    assert status.job_info("builder", {"status": {}}, [pull]).state is ServiceState.FAILED

    failed_job = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ]
        }
    }
    info = status.job_info("learner", failed_job, [])
    assert info.state is ServiceState.FAILED and info.detail.startswith("DeadlineExceeded: Job was active")

    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    finished = _pod("Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}})
    assert status.job_info("learner", done, [finished]).state is ServiceState.SUCCEEDED

    running = _pod("Running", {"running": {"startedAt": "2026-01-01T00:00:00Z"}})
    assert status.job_info("learner", {"status": {"active": 1}}, [running]).state is ServiceState.RUNNING
    assert (
        status.deployment_info("o", {"spec": {"replicas": 1}, "status": {"readyReplicas": 1}}, [running]).state
        is ServiceState.RUNNING
    )
    assert (
        status.daemonset_info("d", {"status": {"desiredNumberScheduled": 2, "numberReady": 1}}, [running]).state
        is ServiceState.PENDING
    )
