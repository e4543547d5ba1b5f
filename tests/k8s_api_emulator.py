"""A small in-memory Kubernetes API server for adapter tests (no cluster can run on CI machines).

It speaks the real REST paths and JSON the official client uses, for the few resources the
Kubernetes adapter touches: namespaces, secrets, services, pods, nodes, jobs, deployments and
daemon sets. It keeps objects, answers 404/409 with ``Status`` bodies, filters lists by label
selector, cascades deletes through owner references and namespaces, converts a Secret's
``stringData`` into ``data`` and requires the bearer token from the kubeconfig it writes.
By default there are no controllers: tests create pods for a workload with
:meth:`spawn_pods` and set pod/workload status with :meth:`set_status`. With
``run_pods=True`` a tiny controller + kubelet runs instead: workloads get pods on matching
nodes, each pod's command runs as a local process (image ignored) with its env resolved
(Secret keys, field refs), and exits become container/Job/Deployment status the way a
kubelet reports them (terminated reason and log tail, CrashLoopBackOff, Job conditions).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.process_runtime import LocalProcess

Obj = dict[str, Any]
Key = tuple[str, str | None, str]  # (plural, namespace or None, name)


@dataclass(frozen=True)
class _Resource:
    kind: str
    api_version: str
    namespaced: bool


RESOURCES = {
    "namespaces": _Resource("Namespace", "v1", False),
    "nodes": _Resource("Node", "v1", False),
    "secrets": _Resource("Secret", "v1", True),
    "services": _Resource("Service", "v1", True),
    "pods": _Resource("Pod", "v1", True),
    "jobs": _Resource("Job", "batch/v1", True),
    "deployments": _Resource("Deployment", "apps/v1", True),
    "daemonsets": _Resource("DaemonSet", "apps/v1", True),
}
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[a-z0-9.]+)/(?P<version>v[0-9a-z]+))"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?/?$"
)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _status_body(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _merge(target: Obj, patch: Obj) -> Obj:
    """JSON merge patch (RFC 7386); enough for the metadata and status patches the adapter sends."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based selectors: ``k=v``, ``k==v``, ``k!=v``, ``k`` and ``!k``, comma-separated."""
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class KubernetesApiEmulator:
    def __init__(self, token: str = "test-token", run_pods: bool = False) -> None:
        self.token = token
        self.run_pods = run_pods
        self._processes: dict[Key, LocalProcess] = {}
        self._restart_at: dict[Key, float] = {}
        self._stopping = threading.Event()
        self._kubelet = threading.Thread(target=self._kubelet_loop, name="k8s-kubelet", daemon=True)
        self._objects: dict[Key, Obj] = {}
        self._lock = threading.RLock()
        self._versions = itertools.count(1)
        self._ips = itertools.count(10)
        self.requests: list[tuple[str, str]] = []
        self.created: list[Key] = []
        self.deleted: list[Key] = []  # deleted by a DELETE request naming them
        self.cascaded: list[Key] = []  # deleted with their owner or namespace
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="k8s-emulator", daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> KubernetesApiEmulator:
        self._thread.start()
        if self.run_pods:
            self._kubelet.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._stopping.set()
        if self._kubelet.is_alive():
            self._kubelet.join(timeout=10)
        with self._lock:
            for process in self._processes.values():
                process.kill()
            self._processes.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
            "current-context": "emulator",
        }
        path.write_text(json.dumps(kubeconfig))  # JSON is YAML
        return path

    # -- test helpers ----------------------------------------------------------------
    def put(self, plural: str, obj: Obj) -> Obj:
        """Store an object as if someone else had created it."""
        with self._lock:
            return self._create(plural, obj["metadata"].get("namespace"), copy.deepcopy(obj), record=False)

    def add_node(
        self, name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
    ) -> Obj:
        address = f"192.0.2.{next(self._ips)}"
        return self.put(
            "nodes",
            {
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                    "annotations": annotations or {},
                },
                "spec": {},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": address}],
                },
            },
        )

    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        with self._lock:
            found = self._objects.get((plural, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def keys(self) -> set[Key]:
        with self._lock:
            return set(self._objects)

    def items(self, plural: str, namespace: str | None = None) -> list[Obj]:
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (kind, ns, _), obj in sorted(self._objects.items())
                if kind == plural and (namespace is None or ns == namespace)
            ]

    def set_status(self, plural: str, namespace: str | None, name: str, status: Obj) -> None:
        with self._lock:
            self._objects[(plural, namespace, name)]["status"] = copy.deepcopy(status)

    def spawn_pods(self, plural: str, namespace: str, name: str, nodes: list[str]) -> list[str]:
        """What a controller would do: one pod per node from the workload's template, owned by it."""
        with self._lock:
            return [self._new_pod(plural, namespace, name, node)[2] for node in nodes]

    def _new_pod(self, plural: str, namespace: str, name: str, node: str | None) -> Key:
        owner = self._objects[(plural, namespace, name)]
        template = owner["spec"]["template"]
        labels = dict(template["metadata"].get("labels") or {})
        if plural == "jobs":
            labels["job-name"] = name
        reference = {
            "apiVersion": RESOURCES[plural].api_version,
            "kind": RESOURCES[plural].kind,
            "name": name,
            "uid": owner["metadata"]["uid"],
            "controller": True,
        }
        spec = copy.deepcopy(template["spec"])
        if node is not None:
            spec["nodeName"] = node
        pod = {
            "metadata": {
                "name": f"{name}-{uuid.uuid4().hex[:5]}",
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [reference],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        }
        self._create("pods", namespace, pod, record=False)
        return ("pods", namespace, pod["metadata"]["name"])

    # -- storage -------------------------------------------------------------------------
    def _create(self, plural: str, namespace: str | None, obj: Obj, record: bool) -> Obj:
        resource = RESOURCES[plural]
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{resource.kind} has no metadata.name")
        if resource.namespaced:
            if namespace is None or ("namespaces", None, namespace) not in self._objects:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
            if metadata.get("namespace", namespace) != namespace:
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
            metadata["namespace"] = namespace
        key: Key = (plural, namespace if resource.namespaced else None, name)
        if key in self._objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp="2026-01-01T00:00:00Z")
        self._normalise(plural, obj)
        self._objects[key] = obj
        if record:
            self.created.append(key)
        return obj

    def _normalise(self, plural: str, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        if plural == "secrets" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(value.encode()).decode()
        if plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        if plural == "services":
            obj["spec"].setdefault("clusterIP", f"10.96.0.{next(self._ips)}")

    def _delete(self, key: Key, propagation: str, explicit: bool) -> None:
        obj = self._objects.pop(key)
        process = self._processes.pop(key, None)
        if process is not None:
            process.kill()
        self._restart_at.pop(key, None)
        (self.deleted if explicit else self.cascaded).append(key)
        if key[0] == "namespaces":
            for child in [child for child in self._objects if child[1] == key[2]]:
                self._delete(child, "Background", explicit=False)
            return
        if propagation == "Orphan":
            return
        uid = obj["metadata"]["uid"]
        for child, value in list(self._objects.items()):
            owners = value.get("metadata", {}).get("ownerReferences") or []
            if child in self._objects and any(owner.get("uid") == uid for owner in owners):
                self._delete(child, propagation, explicit=False)

    # -- HTTP ----------------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append((request.method, request.full_path))
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            code, body = self._route(request)
        except ApiError as error:
            code, body = error.code, _status_body(error.code, error.reason, error.message)
        response = Response(json.dumps(body), status=code, content_type="application/json")
        return response(environ, start_response)

    def _route(self, request: Request) -> tuple[int, Obj]:
        if request.path == "/version":
            return 200, {"major": "1", "minor": "37", "gitVersion": "v1.37.0-emulator"}
        match = _PATH.match(request.path)
        if not match or match["plural"] not in RESOURCES:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        plural, namespace, name = match["plural"], match["ns"], match["name"]
        resource = RESOURCES[plural]
        group_version = f"{match['group']}/{match['version']}" if match["group"] else "v1"
        if group_version != resource.api_version:
            raise ApiError(404, "NotFound", f"{plural} is not served by {group_version}")
        if plural == "namespaces" and namespace is not None:
            raise ApiError(404, "NotFound", "namespaces are not namespaced")
        raw = request.get_data()
        body = json.loads(raw) if raw else None
        with self._lock:
            if name is None:
                if request.method == "GET":
                    return 200, self._list(plural, namespace, request.args.get("labelSelector", ""))
                if request.method == "POST":
                    if not isinstance(body, dict):
                        raise ApiError(400, "BadRequest", "the body must be a JSON object")
                    created = self._create(plural, namespace, body, record=True)
                    if self.run_pods and plural in ("jobs", "deployments", "daemonsets"):
                        self._reconcile((plural, namespace, created["metadata"]["name"]))
                    return 201, created
                raise ApiError(405, "MethodNotAllowed", request.method)
            key: Key = (plural, namespace if resource.namespaced else None, name)
            if key not in self._objects:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            if request.method == "GET":
                return 200, self._objects[key]
            if request.method == "PUT":
                if not isinstance(body, dict) or body.get("metadata", {}).get("name") != name:
                    raise ApiError(400, "BadRequest", "the body must be the object with the same name")
                body["metadata"]["uid"] = self._objects[key]["metadata"]["uid"]
                body["metadata"]["namespace"] = key[1]
                body["apiVersion"], body["kind"] = resource.api_version, resource.kind
                self._normalise(plural, body)
                self._objects[key] = body
                if self.run_pods and plural in ("deployments", "daemonsets"):
                    for pod in self._owned_pods(body["metadata"]["uid"]):
                        self._delete(pod, "Background", explicit=False)
                    self._reconcile(key)
                return 200, body
            if request.method == "PATCH":
                if not isinstance(body, dict) or "json-patch" in (request.content_type or ""):
                    raise ApiError(415, "UnsupportedMediaType", "only merge patches are supported")
                merged = _merge(copy.deepcopy(self._objects[key]), body)
                self._normalise(plural, merged)
                self._objects[key] = merged
                return 200, merged
            if request.method == "DELETE":
                propagation = request.args.get("propagationPolicy") or (body or {}).get("propagationPolicy")
                self._delete(key, propagation or "Background", explicit=True)
                return 200, _status_body(200, "", f'{plural} "{name}" deleted')
            raise ApiError(405, "MethodNotAllowed", request.method)

    def _list(self, plural: str, namespace: str | None, selector: str) -> Obj:
        resource = RESOURCES[plural]
        items = [
            obj
            for (kind, ns, _), obj in sorted(self._objects.items(), key=lambda item: str(item[0]))
            if kind == plural
            and (namespace is None or ns == namespace)
            and label_selector_matches(selector, obj["metadata"].get("labels") or {})
        ]
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    # -- controller + kubelet (run_pods=True) ----------------------------------------------
    def _owned_pods(self, uid: str) -> list[Key]:
        return [
            key
            for key, obj in self._objects.items()
            if key[0] == "pods" and any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]

    def _eligible_nodes(self, pod_spec: Obj) -> list[str]:
        selector = pod_spec.get("nodeSelector") or {}
        allowed: set[str] | None = None
        affinity = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or {}
        for term in affinity.get("nodeSelectorTerms") or []:
            for field in term.get("matchFields") or []:
                if field.get("key") == "metadata.name" and field.get("operator") == "In":
                    allowed = set(field.get("values") or [])
        nodes = []
        for (kind, _, name), node in sorted(self._objects.items()):
            labels = node["metadata"].get("labels") or {}
            matches = kind == "nodes" and all(labels.get(k) == v for k, v in selector.items())
            if matches and (allowed is None or name in allowed):
                nodes.append(name)
        return nodes

    def _reconcile(self, key: Key) -> None:
        plural, namespace, name = key
        assert namespace is not None
        workload = self._objects[key]
        spec = workload["spec"]
        nodes = self._eligible_nodes(spec["template"]["spec"])
        if plural == "daemonsets":
            placements: list[str | None] = list(nodes)
        else:
            count = spec.get("parallelism", 1) if plural == "jobs" else spec.get("replicas", 1)
            placements = [nodes[index % len(nodes)] if nodes else None for index in range(count)]
        for node in placements:
            pod_key = self._new_pod(plural, namespace, name, node)
            if node is None:
                unschedulable = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0 nodes are available: none matches the node selector or affinity",
                }
                self._objects[pod_key]["status"] = {"phase": "Pending", "conditions": [unschedulable]}
            else:
                self._start(pod_key)
        self._update_owner(key)

    def _environment(self, pod: Obj, container: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        for entry in container.get("env") or []:
            source = entry.get("valueFrom") or {}
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self._objects.get(("secrets", pod["metadata"]["namespace"], ref["name"])) or {}
                encoded = (secret.get("data") or {}).get(ref["key"])
                if encoded is not None:
                    env[entry["name"]] = base64.b64decode(encoded).decode()
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[entry["name"]] = (
                    pod["spec"].get("nodeName", "") if path == "spec.nodeName" else pod["metadata"]["name"]
                )
        return env

    @staticmethod
    def _container_status(container: Obj, state: Obj, restarts: int = 0, last: Obj | None = None) -> Obj:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "state": state,
            "ready": "running" in state,
            "restartCount": restarts,
            "lastState": last or {},
        }

    def _start(self, pod_key: Key) -> None:
        pod = self._objects[pod_key]
        container = pod["spec"]["containers"][0]
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        previous = (pod.get("status") or {}).get("containerStatuses") or [{}]
        restarts = previous[0].get("restartCount", 0)
        node = self._objects.get(("nodes", None, pod["spec"]["nodeName"])) or {}
        addresses = (node.get("status") or {}).get("addresses") or [{"address": "127.0.0.1"}]
        if not argv:
            state = {"waiting": {"reason": "CreateContainerError", "message": "the emulator runs commands only"}}
            pod["status"] = {"phase": "Pending", "containerStatuses": [self._container_status(container, state)]}
            return
        self._processes[pod_key] = LocalProcess(argv, self._environment(pod, container))
        state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        last = previous[0].get("lastState")
        pod["status"] = {
            "phase": "Running",
            "hostIP": addresses[0]["address"],
            "podIP": "10.244.0.10",
            "containerStatuses": [self._container_status(container, state, restarts, last)],
        }

    def _kubelet_loop(self) -> None:
        while not self._stopping.wait(0.05):
            with self._lock:
                for pod_key, process in list(self._processes.items()):
                    code = process.poll()
                    if code is not None:
                        self._exited(pod_key, process, code)
                now = time.monotonic()
                for pod_key, due in list(self._restart_at.items()):
                    if due <= now and pod_key in self._objects:
                        del self._restart_at[pod_key]
                        self._start(pod_key)
                        self._update_owner_of(pod_key)

    def _exited(self, pod_key: Key, process: LocalProcess, code: int) -> None:
        del self._processes[pod_key]
        message = process.tail() if code != 0 else ""
        process.kill()
        pod = self._objects.get(pod_key)
        if pod is None:
            return
        container = pod["spec"]["containers"][0]
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": "2026-01-01T00:00:01Z",
        }
        restarts = pod["status"]["containerStatuses"][0].get("restartCount", 0)
        if pod["spec"].get("restartPolicy") == "Never":
            phase = "Succeeded" if code == 0 else "Failed"
            status = self._container_status(container, {"terminated": terminated}, restarts)
            pod["status"] = {**pod["status"], "phase": phase, "containerStatuses": [status]}
        else:
            waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}}
            status = self._container_status(container, waiting, restarts + 1, {"terminated": terminated})
            pod["status"] = {**pod["status"], "phase": "Running", "containerStatuses": [status]}
            self._restart_at[pod_key] = time.monotonic() + 0.5
        self._update_owner_of(pod_key)

    def _update_owner_of(self, pod_key: Key) -> None:
        references = self._objects[pod_key]["metadata"].get("ownerReferences") or []
        for key, obj in list(self._objects.items()):
            if any(ref.get("uid") == obj["metadata"].get("uid") for ref in references):
                self._update_owner(key)

    def _update_owner(self, key: Key) -> None:
        workload = self._objects[key]
        pods = [self._objects[pod] for pod in self._owned_pods(workload["metadata"]["uid"])]
        running = sum(
            1
            for pod in pods
            if any("running" in c.get("state", {}) for c in pod["status"].get("containerStatuses") or [])
        )
        if key[0] == "jobs":
            succeeded = sum(1 for pod in pods if pod["status"].get("phase") == "Succeeded")
            failed = sum(1 for pod in pods if pod["status"].get("phase") == "Failed")
            status: Obj = {"active": running, "succeeded": succeeded, "failed": failed}
            if failed > workload["spec"].get("backoffLimit", 6):
                status["conditions"] = [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ]
            elif succeeded >= workload["spec"].get("completions", 1):
                status["conditions"] = [{"type": "Complete", "status": "True"}]
            workload["status"] = status
        elif key[0] == "deployments":
            workload["status"] = {"replicas": len(pods), "readyReplicas": running}
        else:
            workload["status"] = {"desiredNumberScheduled": len(pods), "numberReady": running}
