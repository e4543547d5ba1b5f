"""Service state from Pod and Job conditions, so a crash is seen even when no MQTT report came.

Pure functions over objects in their JSON (camelCase) form.
"""

from __future__ import annotations

from typing import Any

from orchestrator_adapters.base import InstanceInfo, ServiceInfo, ServiceState

Manifest = dict[str, Any]

# Waiting reasons that will not resolve by themselves.
FATAL_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
_PHASES = {
    "Pending": ServiceState.PENDING,
    "Running": ServiceState.RUNNING,
    "Succeeded": ServiceState.SUCCEEDED,
    "Failed": ServiceState.FAILED,
}
_DETAIL_LIMIT = 500


def _short(text: str) -> str:
    """The last meaningful line(s) of a message, bounded (log tails can be long)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    return message if len(message) <= _DETAIL_LIMIT else message[-_DETAIL_LIMIT:]


def _terminated_detail(terminated: Manifest) -> str:
    reason = terminated.get("reason") or "Terminated"
    code = terminated.get("exitCode")
    message = _short(terminated.get("message") or "")
    head = f"{reason} (exit code {code})" if code is not None else reason
    return f"{head}: {message}" if message else head


def pod_instance(pod: Manifest) -> InstanceInfo:
    """One pod as an instance: phase, refined by its container's waiting/terminated state."""
    metadata, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    name, node = metadata.get("name", "?"), spec.get("nodeName")
    state = _PHASES.get(status.get("phase", ""), ServiceState.UNKNOWN)
    exit_code: int | None = None
    detail = status.get("message") or status.get("reason") or ""
    if metadata.get("deletionTimestamp"):
        return InstanceInfo(name, node, ServiceState.STOPPED, detail="terminating")
    for container in status.get("containerStatuses") or []:
        current, last = container.get("state") or {}, container.get("lastState") or {}
        waiting, terminated = current.get("waiting"), current.get("terminated")
        if terminated:
            exit_code = terminated.get("exitCode")
            if exit_code not in (None, 0):
                return InstanceInfo(name, node, ServiceState.FAILED, exit_code, _terminated_detail(terminated))
            detail = _terminated_detail(terminated)
        elif waiting and waiting.get("reason") in FATAL_WAITING_REASONS:
            previous = last.get("terminated")
            detail = waiting["reason"]
            if previous:
                exit_code = previous.get("exitCode")
                detail = f"{detail}; last run: {_terminated_detail(previous)}"
            elif waiting.get("message"):
                detail = f"{detail}: {_short(waiting['message'])}"
            return InstanceInfo(name, node, ServiceState.FAILED, exit_code, detail)
    if state is ServiceState.FAILED and not detail:
        detail = "pod failed"
    return InstanceInfo(name, node, state, exit_code, detail)


def _condition(obj: Manifest, kind: str) -> Manifest | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _first_failure(instances: tuple[InstanceInfo, ...]) -> InstanceInfo | None:
    return next((instance for instance in instances if instance.state is ServiceState.FAILED), None)


def _failure_detail(failed: InstanceInfo) -> str:
    return f"{failed.instance_id}: {failed.detail}" if failed.detail else f"{failed.instance_id} failed"


def job_info(name: str, job: Manifest, pods: list[Manifest]) -> ServiceInfo:
    instances = tuple(pod_instance(pod) for pod in pods)
    failed_pod = _first_failure(instances)
    failed = _condition(job, "Failed")
    if failed is not None or failed_pod is not None:
        if failed_pod is not None:
            detail = _failure_detail(failed_pod)
        else:
            assert failed is not None
            detail = f"{failed.get('reason') or 'Failed'}: {failed.get('message') or 'the job failed'}"
        return ServiceInfo(name, ServiceState.FAILED, instances, detail)
    if _condition(job, "Complete") is not None:
        return ServiceInfo(name, ServiceState.SUCCEEDED, instances, "completed")
    if any(instance.state is ServiceState.RUNNING for instance in instances):
        return ServiceInfo(name, ServiceState.RUNNING, instances)
    return ServiceInfo(name, ServiceState.PENDING, instances, "waiting for pods")


def long_lived_info(name: str, desired: int, ready: int, pods: list[Manifest]) -> ServiceInfo:
    """Deployments and DaemonSets: RUNNING once every wanted pod is ready; a crash looping pod is FAILED."""
    instances = tuple(pod_instance(pod) for pod in pods)
    failed = _first_failure(instances)
    if failed is not None:
        return ServiceInfo(name, ServiceState.FAILED, instances, _failure_detail(failed))
    if desired > 0 and ready >= desired:
        return ServiceInfo(name, ServiceState.RUNNING, instances)
    return ServiceInfo(name, ServiceState.PENDING, instances, f"{ready}/{desired} ready")


def deployment_info(name: str, deployment: Manifest, pods: list[Manifest]) -> ServiceInfo:
    desired = (deployment.get("spec") or {}).get("replicas", 1)
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    return long_lived_info(name, desired, ready, pods)


def daemonset_info(name: str, daemonset: Manifest, pods: list[Manifest]) -> ServiceInfo:
    status = daemonset.get("status") or {}
    return long_lived_info(name, status.get("desiredNumberScheduled") or 0, status.get("numberReady") or 0, pods)
