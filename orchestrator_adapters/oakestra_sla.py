"""SLA v2.0 descriptors, names, service addresses and status mapping for Oakestra (pure functions).

Oakestra limits names to ``^[a-zA-Z0-9]{1,30}$`` (and applications to 10 characters in its
registration check), so FLOps names are mapped deterministically: kept when already valid,
otherwise cleaned and suffixed with a digest so distinct names stay distinct.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from typing import Any

from flops_utils.config_fetch import CONFIG_URL_ENV
from flops_utils.message_text import one_line
from orchestrator_adapters.base import (
    AppKind,
    InstanceInfo,
    ServiceInfo,
    ServiceKind,
    ServiceSpec,
    ServiceState,
    image_command,
)

SLA_VERSION = "v2.0"
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9]{1,30}$")
APP_NAME_LENGTH = 10
SERVICE_NAME_ENV = "FLOPS_SERVICE_NAME"  # every microservice carries its FLOps name (collision checks)
CONFIG_ENV = "FLOPS_CONFIG"

Json = dict[str, Any]


def _hex(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def application_name(customer: str, name: str) -> str:
    """The 10-character Oakestra application name of a FLOps app (stable across runs)."""
    return "f" + _hex(f"{customer}\n{name}", APP_NAME_LENGTH - 1)


def microservice_name(name: str) -> str:
    if NAME_PATTERN.match(name):
        return name
    cleaned = re.sub(r"[^a-zA-Z0-9]", "", name)[:22]
    return f"{cleaned}{_hex(name, 8)}"


def microservice_namespace(kind: ServiceKind) -> str:
    return kind.value.replace("_", "")


def application_desc(name: str, kind: AppKind, customer: str, project_id: str | None) -> str:
    """What FLOps needs to recognise its app later (names are digests)."""
    return json.dumps({"flops": {"name": name, "kind": kind.value, "customer": customer, "project_id": project_id}})


def parse_application_desc(desc: object) -> Json | None:
    try:
        data = json.loads(desc) if isinstance(desc, str) else None
    except ValueError:
        return None
    flops = data.get("flops") if isinstance(data, dict) else None
    return flops if isinstance(flops, dict) else None


def service_address(network: str, app_id: str, name: str, attempt: int) -> str:
    """Candidate ``attempt`` for a service's round-robin address: a digest, never Python's ``hash()``."""
    net = ipaddress.ip_network(network)
    digest = int(hashlib.sha256(f"{app_id}/{name}/{attempt}".encode()).hexdigest(), 16)
    return str(net[1 + digest % (net.num_addresses - 2)])


def environment_of(job: Json) -> dict[str, str]:
    entries = job.get("environment") or []
    return dict(entry.split("=", 1) for entry in entries if isinstance(entry, str) and "=" in entry)


def flops_name_of(job: Json) -> str | None:
    return environment_of(job).get(SERVICE_NAME_ENV)


def application_sla(customer: str, app_name: str, namespace: str, desc: str) -> Json:
    return {
        "sla_version": SLA_VERSION,
        "customerID": customer,
        "applications": [
            {
                "applicationID": "",
                "application_name": app_name,
                "application_namespace": namespace,
                "application_desc": desc,
                "microservices": [],
            }
        ],
    }


def constraints_for(spec: ServiceSpec, node_clusters: dict[str, str], clusters: set[str]) -> list[Json]:
    """Oakestra's schedulers read only ``direct`` constraints: ``cluster`` at the root, ``node`` in the cluster.

    ``node_clusters`` maps inventory nodes to their clusters; a "node" that is an active
    cluster's name (no inventory) pins to that cluster.
    """
    cluster, node = spec.placement.cluster, spec.placement.node
    if node and node not in node_clusters and node in clusters:
        cluster, node = cluster or node, None
    if node and not cluster:
        cluster = node_clusters.get(node)
    constraint: Json = {"type": "direct"}
    if cluster:
        constraint["cluster"] = cluster
    if node:
        constraint["node"] = node
    return [constraint] if len(constraint) > 1 else []


def microservice(
    spec: ServiceSpec,
    *,
    virtualization: str,
    rr_ip: str | None,
    expose_ports: bool,
    node_clusters: dict[str, str],
    clusters: set[str],
) -> Json:
    if not spec.image:
        raise ValueError(f"service {spec.name} has no image; Oakestra runs images")
    environment = {**spec.environment, SERVICE_NAME_ENV: spec.name}
    if CONFIG_URL_ENV not in spec.environment:  # by reference the manager keeps the document: no empty copy
        environment[CONFIG_ENV] = json.dumps(spec.config)
    descriptor: Json = {
        "microserviceID": "",
        "microservice_name": microservice_name(spec.name),
        "microservice_namespace": microservice_namespace(spec.kind),
        "virtualization": virtualization,
        "code": spec.image,
        "memory": max(1, spec.resources.memory_mb),
        "vcpus": max(1, math.ceil(spec.resources.vcpus)),
        "storage": max(0, spec.resources.storage_mb),
        "one_shot": spec.one_shot,
        "cmd": list(image_command(spec)),
        "environment": [f"{key}={value}" for key, value in sorted(environment.items())],
    }
    constraints = constraints_for(spec, node_clusters, clusters)
    if constraints:
        descriptor["constraints"] = constraints
    if rr_ip:
        descriptor["addresses"] = {"rr_ip": rr_ip}
    if expose_ports and spec.ports:
        descriptor["port"] = ";".join(f"{port.port}:{port.port}/{port.protocol.lower()}" for port in spec.ports)
    return descriptor


KNOWN_CONSTRAINTS = ("direct", "latency", "geo")
INTEGER_FIELDS = ("memory", "vcpus", "vgpus", "vtpus", "bandwidth_in", "bandwidth_out", "storage")
ENVIRONMENT_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _name_problem(field: str, value: object) -> str | None:
    if isinstance(value, str) and NAME_PATTERN.match(value):
        return None
    return f"{field} {value!r} must be 1 to 30 letters or digits"


def _microservice_problem(descriptor: Json) -> str | None:
    for field in ("microservice_name", "microservice_namespace"):
        problem = _name_problem(field, descriptor.get(field))
        if problem:
            return problem
    if descriptor.get("virtualization") not in ("container", "unikernel"):
        return f"virtualization {descriptor.get('virtualization')!r} must be container or unikernel"
    if not descriptor.get("code"):
        return "code (the image) is empty"
    for field in INTEGER_FIELDS:
        value = descriptor.get(field, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{field} must be a whole number of at least 0, not {value!r}"
    for index, constraint in enumerate(descriptor.get("constraints") or []):
        kind = constraint.get("type") if isinstance(constraint, dict) else None
        if kind not in KNOWN_CONSTRAINTS:
            return f"constraints[{index}].type {kind!r} is not one Oakestra reads ({', '.join(KNOWN_CONSTRAINTS)})"
    for entry in descriptor.get("environment") or []:
        if not isinstance(entry, str) or not ENVIRONMENT_ENTRY.match(entry):
            return f"environment entry {str(entry).split('=', 1)[0]!r} is not NAME=value"
    return None


def sla_problem(body: Json) -> str | None:
    """What the root's SLA v2.0 check would refuse, naming the field; None when the SLA is fine.

    The root answers every refusal with a bare ``400 Bad Request``, so FLOps checks first.
    """
    application = body["applications"][0]
    for field in ("application_name", "application_namespace"):
        problem = _name_problem(field, application.get(field))
        if problem:
            return problem
    for descriptor in application.get("microservices") or []:
        problem = _microservice_problem(descriptor)
        if problem:
            return problem
    return None


def sent_summary(body: Json) -> str:
    """What a service SLA asked for, in one line (no environment: it may hold secrets)."""
    application = body["applications"][0]
    descriptor = (application.get("microservices") or [{}])[0]
    resources = ", ".join(
        f"{field} {descriptor[field]}" for field in ("vcpus", "memory", "storage") if field in descriptor
    )
    constraints = json.dumps(descriptor.get("constraints") or [])
    return (
        f"application {application.get('applicationID')} ({application.get('application_name')}."
        f"{application.get('application_namespace')}), microservice {descriptor.get('microservice_name')}."
        f"{descriptor.get('microservice_namespace')}, {descriptor.get('virtualization')} image "
        f"{descriptor.get('code')}, {resources}, constraints {constraints}"
    )


def service_sla(customer: str, app_id: str, app_name: str, namespace: str, descriptor: Json) -> Json:
    return {
        "sla_version": SLA_VERSION,
        "customerID": customer,
        "applications": [
            {
                "applicationID": app_id,
                "application_name": app_name,
                "application_namespace": namespace,
                "microservices": [descriptor],
            }
        ],
    }


# -- status ------------------------------------------------------------------------
PENDING_STATUSES = frozenset({"REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "CREATING", "CREATED"})
RUNTIME_FAILURES = frozenset({"FAILED", "DEAD"})
WAITING_DETAIL = "Waiting for scheduling decision"  # stays in status_detail after a scheduling failure
# Oakestra's negative scheduling statuses, and what each means for the service.
SCHEDULING_FAILURES = {
    "TargetClusterNotFound": "its target cluster{cluster} is not known to the root orchestrator",
    "TargetClusterNotActive": "its target cluster{cluster} is not active",
    "TargetClusterNoCapacity": "its target cluster{cluster} has no room for it",
    "NoActiveClusterWithCapacity": "no active cluster{cluster} has room for it",
    "NO_WORKER_CAPACITY": "no worker of its cluster{cluster} has room for it",
    "NO_QUALIFIED_WORKER_FOUND": "no worker of its cluster{cluster} qualifies for it",
    "NO_NODE_FOUND": "its target worker{node} was not found in its cluster{cluster}",
}


def is_scheduling_failure(status: object) -> bool:
    text = str(status or "")
    return text in SCHEDULING_FAILURES or text.startswith(("NoActiveCluster", "TargetCluster", "NO_"))


def state_of(status: object) -> ServiceState:
    text = str(status or "")
    if text in PENDING_STATUSES:
        return ServiceState.PENDING
    if text == "RUNNING":
        return ServiceState.RUNNING
    if text == "COMPLETED":
        return ServiceState.SUCCEEDED
    if text == "UNDEPLOYED":
        return ServiceState.STOPPED
    if text in RUNTIME_FAILURES or is_scheduling_failure(text):
        return ServiceState.FAILED
    return ServiceState.UNKNOWN


def _detail(*parts: object) -> str:
    """The informative ``parts`` joined on one line ("" when none is)."""
    text = ": ".join(str(part) for part in parts if part and part != WAITING_DETAIL)
    return one_line(text, 500) if text.strip() else ""


def scheduling_failure(name: str, job: Json, status: str) -> str:
    """One sentence: which service, what Oakestra said, which constraint, what it asked for."""
    direct: Json = next((item for item in job.get("constraints") or [] if item.get("type") == "direct"), {})
    cluster, node = direct.get("cluster"), direct.get("node")
    meaning = SCHEDULING_FAILURES.get(status, "Oakestra found no place for it").format(
        cluster=f" {cluster}" if cluster else "", node=f" {node}" if node else ""
    )
    asked = f"{job.get('vcpus', '?')} vCPU, {job.get('memory', '?')} MB memory, {job.get('virtualization', '?')}"
    where = f"direct constraint cluster={cluster}" + (f", node={node}" if node else "") if cluster else "no constraint"
    return (
        f"Oakestra cannot schedule service {name}: {meaning} ({status}; it asked for {asked}; {where}). "
        "Redeploying cannot help: free or add capacity, or change the placement"
    )


def instance_info(instance: Json) -> InstanceInfo:
    status = instance.get("status")
    node = instance.get("cluster_location") or instance.get("cluster_id") or instance.get("publicip")
    return InstanceInfo(
        instance_id=str(instance.get("instance_number", "?")),
        node=str(node) if node else None,
        state=state_of(status),
        detail=_detail(status, instance.get("status_detail")),
    )


def service_info(name: str, job: Json, undeployed: bool, redeploy_pending: bool = False) -> ServiceInfo:
    """A job document as FLOps state.

    A scheduling failure fails the service for good (``redeployable=False``). A failed
    instance fails it unless another instance is live: then Oakestra (or FLOps) is already
    redeploying it. ``redeploy_pending``: FLOps asked for an instance moments ago, so a job
    status left over from the removed instance is not a new failure.
    """
    instances = tuple(instance_info(item) for item in job.get("instance_list") or [] if isinstance(item, dict))
    job_status = str(job.get("status") or "")
    if is_scheduling_failure(job_status) and not undeployed:
        return ServiceInfo(name, ServiceState.FAILED, instances, scheduling_failure(name, job, job_status), False)
    for item in job.get("instance_list") or []:
        status = str(item.get("status") or "") if isinstance(item, dict) else ""
        if is_scheduling_failure(status):
            return ServiceInfo(name, ServiceState.FAILED, instances, scheduling_failure(name, job, status), False)
    live = [instance for instance in instances if instance.state in (ServiceState.PENDING, ServiceState.RUNNING)]
    failed = next((instance for instance in instances if instance.state is ServiceState.FAILED), None)
    if failed is not None and not live:
        return ServiceInfo(
            name, ServiceState.FAILED, instances, _detail(f"instance {failed.instance_id}", failed.detail)
        )
    if not instances:
        if undeployed:
            return ServiceInfo(name, ServiceState.STOPPED, detail="undeployed")
        if not job_status:
            return ServiceInfo(name, ServiceState.PENDING, detail="registered, not deployed yet")
        job_state = state_of(job_status)
        if redeploy_pending and job_state is not ServiceState.SUCCEEDED:
            return ServiceInfo(name, ServiceState.PENDING, detail="redeployed, waiting for Oakestra to schedule it")
        if job_state in (ServiceState.PENDING, ServiceState.SUCCEEDED, ServiceState.FAILED):
            return ServiceInfo(name, job_state, detail=_detail(job_status, job.get("status_detail")))
        return ServiceInfo(name, ServiceState.STOPPED, detail=_detail("no instances", job_status))
    if live:
        state = ServiceState.RUNNING if any(i.state is ServiceState.RUNNING for i in live) else ServiceState.PENDING
        replaced = f"; instance {failed.instance_id} failed and was replaced ({failed.detail})" if failed else ""
        return ServiceInfo(name, state, instances, _detail(job_status) + replaced)
    states = {instance.state for instance in instances}
    if states == {ServiceState.SUCCEEDED}:
        return ServiceInfo(name, ServiceState.SUCCEEDED, instances, "completed")
    if ServiceState.UNKNOWN in states:
        return ServiceInfo(name, ServiceState.UNKNOWN, instances, _detail(job_status))
    return ServiceInfo(name, ServiceState.STOPPED, instances, _detail(job_status))
