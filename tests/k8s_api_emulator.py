"""A small in-memory Kubernetes API server for adapter tests (no cluster can run on CI machines).

It speaks the real REST paths and JSON the official client uses, for the few resources the
Kubernetes adapter touches: namespaces, secrets, services, pods, nodes, jobs, deployments and
daemon sets. It keeps objects, answers 404/409 with ``Status`` bodies, filters lists by label
selector, cascades deletes through owner references and namespaces, converts a Secret's
``stringData`` into ``data`` and requires the bearer token from the kubeconfig it writes.
There are no controllers: tests create pods for a workload with :meth:`spawn_pods` and set
pod/workload status with :meth:`set_status`.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

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
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
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
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

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
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                             "annotations": annotations or {}},
                "spec": {},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": address}],
                },
            },
        )  # fmt: skip

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
            owner = self._objects[(plural, namespace, name)]
            template = owner["spec"]["template"]
            created = []
            for node in nodes:
                pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
                labels = dict(template["metadata"].get("labels") or {})
                if plural == "jobs":
                    labels["job-name"] = name
                pod = {
                    "metadata": {
                        "name": pod_name,
                        "namespace": namespace,
                        "labels": labels,
                        "ownerReferences": [
                            {
                                "apiVersion": RESOURCES[plural].api_version,
                                "kind": RESOURCES[plural].kind,
                                "name": name,
                                "uid": owner["metadata"]["uid"],
                                "controller": True,
                            }
                        ],
                    },
                    "spec": {**copy.deepcopy(template["spec"]), "nodeName": node},
                    "status": {"phase": "Pending"},
                }
                self._create("pods", namespace, pod, record=False)
                created.append(pod_name)
            return created

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
                    return 201, self._create(plural, namespace, body, record=True)
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
