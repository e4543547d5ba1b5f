"""An Oakestra root orchestrator stand-in that implements the documented REST contract.

It follows ``shared/reference/oakestra-api.md``: login/refresh with expiring JWT-shaped
tokens, applications and services from SLA v2.0 descriptors (every SLA is validated against
the v2.0 rules; violations are answered 422 and recorded in :attr:`violations`), the
double-encoded answers (JSON in a JSON string, ids as ``{"$oid": ...}``), 409 for a taken
application name, ``GET /api/application/<id>`` answering ``null``, ``failed_services`` on a
200 when the network refuses a service address, "ok" for instances of unknown services, and
service status transitions driven by polling (REQUESTED -> CLUSTER_SCHEDULED -> ... ->
RUNNING -> COMPLETED / FAILED / DEAD). Scheduling honours the ``clusters`` and ``addons``
constraints against the active clusters. Tests steer outcomes with :meth:`set_fate`, or pass
``run_instances=True`` to run each instance's ``cmd`` (with its ``environment``) as a local
process whose exit decides the status (the log tail becomes ``status_detail``).
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import threading
import time
import uuid
from typing import Any

import jsonschema
from flask import Flask, Response, request
from werkzeug.serving import make_server

from tests.process_runtime import LocalProcess

Json = dict[str, Any]
NAME = {"type": "string", "pattern": "^[a-zA-Z0-9]{1,30}$"}
INT = {"type": "integer"}
STRINGS = {"type": "array", "items": {"type": "string"}}
CONSTRAINT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["latency", "geo", "addons", "clusters"]},
        "needs": {**STRINGS, "minItems": 1},
        "allowed": {**STRINGS, "minItems": 1},
        "area": {"type": "string"},
        "location": {"type": "string"},
        "threshold": {"type": "number"},
        "rigidness": {"type": "number"},
        "convergence_time": INT,
    },
    "additionalProperties": False,
    "allOf": [
        {"if": {"properties": {"type": {"const": "addons"}}}, "then": {"required": ["needs"]}},
        {"if": {"properties": {"type": {"const": "clusters"}}}, "then": {"required": ["allowed"]}},
    ],
}
MICROSERVICE = {
    "type": "object",
    "required": ["microservice_name", "microservice_namespace", "virtualization", "code"],
    "properties": {
        "microserviceID": {"type": "string", "maxLength": 0},
        "microservice_name": NAME,
        "microservice_namespace": NAME,
        "virtualization": {"enum": ["container", "unikernel"]},
        "code": {"type": "string", "minLength": 1},
        **{key: INT for key in ("memory", "vcpus", "vgpus", "vtpus", "bandwidth_in", "bandwidth_out", "storage")},
        "port": {"type": "string", "pattern": r"^\d+(:\d+)?(/(tcp|udp))?(;\d+(:\d+)?(/(tcp|udp))?)*$"},
        "one_shot": {"type": "boolean"},
        "privileged": {"type": "boolean"},
        "cmd": STRINGS,
        "environment": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*=.*$"}},
        "args": STRINGS,
        "addresses": {
            "type": "object",
            "properties": {
                "rr_ip": {"type": "string"},
                "rr_ip_v6": {"type": "string"},
                "closest_ip": {"type": "string"},
                "instances": {"type": "array"},
            },
            "additionalProperties": False,
        },
        "constraints": {"type": "array", "items": CONSTRAINT},
        "target_node": {"type": "string"},
        "connectivity": {"type": "array"},
    },
    "additionalProperties": False,
}
SLA_SCHEMA = {
    "type": "object",
    "required": ["sla_version", "customerID", "applications"],
    "properties": {
        "sla_version": {"const": "v2.0"},
        "customerID": {"type": "string"},
        "applications": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["applicationID", "application_name", "application_namespace", "microservices"],
                "properties": {
                    "applicationID": {"type": "string"},
                    "application_name": NAME,
                    "application_namespace": NAME,
                    "application_desc": {"type": "string"},
                    "microservices": {"type": "array", "items": MICROSERVICE},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
SERVICE_NETWORK = ipaddress.ip_network("10.30.0.0/16")
STEPS = ["REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "CREATING", "CREATED", "RUNNING"]


def _oid() -> str:
    return uuid.uuid4().hex[:24]


def _b64(data: Json) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _double_encoded(value: Any) -> Response:
    """What the real root does with ``json_util.dumps``: a JSON document inside a JSON string."""
    return Response(json.dumps(json.dumps(value)), status=200, mimetype="application/json")


def _public(job: Json) -> Json:
    return {key: value for key, value in job.items() if key != "_requested"}


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, mimetype="application/json")


class OakestraContractServer:
    def __init__(
        self, token_lifetime_s: float = 600.0, clusters: list[Json] | None = None, run_instances: bool = False
    ) -> None:
        self.token_lifetime_s = token_lifetime_s
        self.run_instances = run_instances
        self._processes: dict[tuple[str, int], LocalProcess] = {}
        self.users = {"Admin": {"password": "Admin", "id": _oid(), "admin": True}}
        self.tokens: dict[str, tuple[str, float, str]] = {}  # token -> (user, expiry, kind)
        self.apps: dict[str, Json] = {}
        self.jobs: dict[str, Json] = {}
        self.clusters: list[Json] = clusters if clusters is not None else [
            {"_id": {"$oid": _oid()}, "cluster_name": "cluster-a", "cluster_location": "munich",
             "supported_addons": ["FLOps-learner"], "active": True},
        ]  # fmt: skip
        self.fates: dict[str, tuple[str, str]] = {}  # microservice name -> (final status, detail)
        self.violations: list[str] = []
        self.slas: list[Json] = []
        self.logins = self.refreshes = self.expired_token_uses = 0
        self._lock = threading.RLock()
        self._instance_numbers = itertools.count(0)
        self.app = self._build_app()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="oakestra", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OakestraContractServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        with self._lock:
            for process in self._processes.values():
                process.kill()
            self._processes.clear()

    # -- test controls --------------------------------------------------------------
    def set_fate(self, microservice_name: str, status: str, detail: str = "") -> None:
        """Where a service's instances end up after RUNNING (default: COMPLETED if one-shot, else RUNNING)."""
        self.fates[microservice_name] = (status, detail)

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def add_user(self, name: str, password: str, admin: bool = False) -> str:
        self.users[name] = {"password": password, "id": _oid(), "admin": admin}
        return str(self.users[name]["id"])

    def jobs_of(self, app_id: str) -> list[Json]:
        with self._lock:
            return [job for job in self.jobs.values() if job["applicationID"] == app_id]

    # -- auth --------------------------------------------------------------------------
    def _issue(self, user: str, kind: str, lifetime: float) -> str:
        expiry = time.time() + lifetime
        token = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64({'sub': user, 'exp': expiry, 'type': kind})}.{_oid()}"
        self.tokens[token] = (user, expiry, kind)
        return token

    def _user(self, kind: str = "access") -> tuple[str | None, Response | None]:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None, _json({"msg": "Missing Authorization Header"}, 401)
        found = self.tokens.get(header[len("Bearer ") :])
        if found is None or found[2] != kind:
            return None, _json({"msg": "Invalid token"}, 401)
        user, expiry, _ = found
        if time.time() >= expiry:
            self.expired_token_uses += 1
            return None, _json({"msg": "Token has expired"}, 401)
        return user, None

    # -- SLA checks ------------------------------------------------------------------
    def _validate(self, body: Any) -> str | None:
        self.slas.append(body)
        try:
            jsonschema.validate(body, SLA_SCHEMA)
        except jsonschema.ValidationError as error:
            path = "/".join(str(part) for part in error.absolute_path)
            return f"{path}: {error.message}"
        for microservice in body["applications"][0]["microservices"]:
            address = (microservice.get("addresses") or {}).get("rr_ip")
            if address is not None:
                try:
                    if ipaddress.ip_address(address) not in SERVICE_NETWORK:
                        return f"rr_ip {address} is outside {SERVICE_NETWORK}"
                except ValueError:
                    return f"rr_ip {address!r} is not an IP address"
        return None

    def _reject(self, message: str) -> Response:
        self.violations.append(message)
        return _json({"message": message}, 422)

    # -- scheduling --------------------------------------------------------------------
    def _place(self, job: Json) -> tuple[Json | None, str]:
        allowed: set[str] | None = None
        needs: set[str] = set()
        for constraint in job.get("constraints") or []:
            if constraint["type"] == "clusters":
                allowed = set(constraint["allowed"])
            if constraint["type"] == "addons":
                needs |= set(constraint["needs"])
        active = [cluster for cluster in self.clusters if cluster.get("active")]
        if allowed is not None:
            active = [cluster for cluster in active if cluster["cluster_name"] in allowed]
            if not active:
                return None, "TargetClusterNotActive"
        fitting = [cluster for cluster in active if needs <= set(cluster.get("supported_addons") or [])]
        if not fitting:
            return None, "NoActiveClusterWithCapacity"
        return fitting[0], ""

    def _advance(self, job: Json) -> None:
        """One polling step: schedule requested instances, move instances towards their fate."""
        for _ in range(job.pop("_requested", 0)):
            cluster, failure = self._place(job)
            if cluster is None:
                job["status"], job["status_detail"] = failure, "no cluster satisfies the constraints"
                continue
            job["instance_list"].append({
                "instance_number": next(self._instance_numbers), "cluster_id": cluster["_id"]["$oid"],
                "cluster_location": cluster["cluster_location"], "status": "CLUSTER_SCHEDULED", "publicip": "",
            })  # fmt: skip
        default = "COMPLETED" if job.get("one_shot") else "RUNNING"
        final, detail = self.fates.get(job["microservice_name"], (default, ""))
        for instance in job["instance_list"]:
            status = instance["status"]
            key = (job["microserviceID"], instance["instance_number"])
            if status in STEPS[:-1]:
                instance["status"] = STEPS[STEPS.index(status) + 1]
                if instance["status"] == "RUNNING" and self.run_instances:
                    environment = dict(entry.split("=", 1) for entry in job.get("environment") or [])
                    self._processes[key] = LocalProcess(list(job.get("cmd") or []), environment)
            elif status == "RUNNING" and self.run_instances and key in self._processes:
                code = self._processes[key].poll()
                if code is not None:
                    process = self._processes.pop(key)
                    if code == 0:
                        instance["status"] = "COMPLETED" if job.get("one_shot") else "DEAD"
                    else:
                        instance["status"], instance["status_detail"] = "FAILED", f"exit code {code}: {process.tail(1)}"
                    process.kill()
            elif status == "RUNNING" and not self.run_instances and final != "RUNNING":
                instance["status"], instance["status_detail"] = final, detail
        if job["instance_list"]:
            job["status"] = job["instance_list"][-1]["status"]

    def _kill(self, job_id: str, number: int | None = None) -> None:
        for key in [key for key in self._processes if key[0] == job_id and number in (None, key[1])]:
            self._processes.pop(key).kill()

    # -- routes --------------------------------------------------------------------------
    def _build_app(self) -> Flask:
        app = Flask("oakestra-contract")

        @app.post("/api/auth/login")
        def login() -> Response:
            body = request.get_json(silent=True) or {}
            user = self.users.get(body.get("username", ""))
            if user is None or user["password"] != body.get("password"):
                return _json({"message": "invalid username or password"}, 401)
            with self._lock:
                self.logins += 1
                return _json({
                    "token": self._issue(body["username"], "access", self.token_lifetime_s),
                    "refresh_token": self._issue(body["username"], "refresh", 10 * self.token_lifetime_s),
                })  # fmt: skip

        @app.post("/api/auth/refresh")
        def refresh() -> Response:
            with self._lock:
                user, refused = self._user("refresh")
                if refused is not None:
                    return refused
                assert user is not None
                self.refreshes += 1
                return _json({"token": self._issue(user, "access", self.token_lifetime_s)})

        @app.post("/api/application/")
        def create_application() -> Response:
            with self._lock:
                user, refused = self._user()
                if refused is not None:
                    return refused
                body = request.get_json(silent=True)
                problem = self._validate(body)
                if problem:
                    return self._reject(problem)
                assert isinstance(body, dict)
                application = body["applications"][0]
                if application["applicationID"] or application["microservices"]:
                    return self._reject("an application is created with an empty applicationID and no microservices")
                name, namespace = application["application_name"], application["application_namespace"]
                if any(
                    a["userId"] == user and a["application_name"] == name and a["application_namespace"] == namespace
                    for a in self.apps.values()
                ):
                    return _json({"message": "An application with the same name and namespace exists already"}, 409)
                if len(name) > 10 or len(namespace) > 10:
                    return self._reject("Application name or namespace are not in the valid format")
                app_id = _oid()
                self.apps[app_id] = {**application, "applicationID": app_id, "userId": user, "microservices": []}
                mine = [{**a, "_id": {"$oid": a["applicationID"]}} for a in self.apps.values() if a["userId"] == user]
                return _double_encoded(mine)

        @app.route("/api/application/<app_id>", methods=["GET", "DELETE"])
        def application(app_id: str) -> Response:
            with self._lock:
                user, refused = self._user()
                if refused is not None:
                    return refused
                if request.method == "GET":
                    return _json(None)  # the upstream bug: 200 with null
                found = self.apps.get(app_id)
                if found is None or found["userId"] != user:
                    return _json({"message": "User could not be deleted"}, 501)
                for job_id in found["microservices"]:
                    self._kill(job_id)
                    self.jobs.pop(job_id, None)
                del self.apps[app_id]
                return _json({"message": "Application Deleted"})

        @app.get("/api/applications/")
        def all_applications() -> Response:
            with self._lock:
                user, refused = self._user()
                if refused is not None:
                    return refused
                assert user is not None
                if not self.users[user]["admin"]:
                    return _json({"message": "You have not enough permissions!"}, 403)
                return _double_encoded([{**a, "_id": {"$oid": a["applicationID"]}} for a in self.apps.values()])

        @app.get("/api/applications/<user_id>")
        def user_applications(user_id: str) -> Response:
            with self._lock:
                user, refused = self._user()
                if refused is not None:
                    return refused
                assert user is not None
                if self.users[user]["id"] != user_id:
                    return _json({"message": "Unauthorized"}, 401)
                mine = [{**a, "_id": {"$oid": a["applicationID"]}} for a in self.apps.values() if a["userId"] == user]
                return _double_encoded(mine)

        @app.post("/api/service/")
        def create_service() -> Response:
            with self._lock:
                user, refused = self._user()
                if refused is not None:
                    return refused
                body = request.get_json(silent=True)
                problem = self._validate(body)
                if problem:
                    return self._reject(problem)
                assert isinstance(body, dict)
                application = body["applications"][0]
                if len(application["microservices"]) != 1:
                    return self._reject("FLOps adds one microservice per request")
                owner = self.apps.get(application["applicationID"])
                if owner is None or owner["userId"] != user:
                    return _json({"message": "application not found"}, 404)
                microservice = application["microservices"][0]
                rr_ip = (microservice.get("addresses") or {}).get("rr_ip")
                if rr_ip and any(job.get("RR_ip") == rr_ip for job in self.jobs.values()):
                    failure = {"message": f"failed to deploy service: address {rr_ip} is in use", "status": 500}
                    return _json({"job_id": "", "deployed_services": [], "failed_services": [failure]})
                job_id = _oid()
                self.jobs[job_id] = {
                    **microservice, "_id": {"$oid": job_id}, "microserviceID": job_id,
                    "applicationID": owner["applicationID"], "app_name": owner["application_name"],
                    "app_ns": owner["application_namespace"], "service_name": microservice["microservice_name"],
                    "job_name": ".".join([owner["application_name"], owner["application_namespace"],
                                          microservice["microservice_name"], microservice["microservice_namespace"]]),
                    "RR_ip": rr_ip, "instance_list": [], "next_instance_progressive_number": 0,
                }  # fmt: skip
                owner["microservices"].append(job_id)
                deployed = {"service_name": microservice["microservice_name"], "status": 200}
                return _json({"job_id": job_id, "deployed_services": [deployed], "failed_services": []})

        @app.route("/api/service/<job_id>", methods=["GET", "DELETE"])
        def service(job_id: str) -> Response:
            with self._lock:
                _, refused = self._user()
                if refused is not None:
                    return refused
                job = self.jobs.get(job_id)
                if job is None:
                    return _json({"message": "service not found"}, 404)
                if request.method == "DELETE":
                    self._kill(job_id)
                    del self.jobs[job_id]
                    self.apps[job["applicationID"]]["microservices"].remove(job_id)
                    return _json({"message": "Job deleted"})
                self._advance(job)
                return _double_encoded(_public(job))

        @app.post("/api/service/<job_id>/instance")
        def add_instance(job_id: str) -> Response:
            with self._lock:
                _, refused = self._user()
                if refused is not None:
                    return refused
                job = self.jobs.get(job_id)
                if job is not None:  # unknown ids are "ok" too, as upstream
                    job["_requested"] = job.get("_requested", 0) + 1
                    job["status"], job["status_detail"] = "REQUESTED", ""
                return _json({"message": "ok"})

        @app.delete("/api/service/<job_id>/instance/<int:number>")
        def remove_instance(job_id: str, number: int) -> Response:
            with self._lock:
                _, refused = self._user()
                if refused is not None:
                    return refused
                job = self.jobs.get(job_id)
                if job is None:
                    return _json({"message": "service not found"}, 404)
                job["instance_list"] = [i for i in job["instance_list"] if i["instance_number"] != number]
                self._kill(job_id, number)
                return _json({"message": "ok"})

        @app.get("/api/services/<app_id>")
        def services(app_id: str) -> Response:
            with self._lock:
                user, refused = self._user()
                if refused is not None:
                    return refused
                owner = self.apps.get(app_id)
                if owner is None or owner["userId"] != user:
                    return _json({"message": "app not found"}, 404)
                return _double_encoded([_public(self.jobs[job_id]) for job_id in owner["microservices"]])

        @app.get("/api/clusters/active")
        def active_clusters() -> Response:
            with self._lock:
                return _double_encoded([cluster for cluster in self.clusters if cluster.get("active")])

        @app.errorhandler(404)
        def unknown(_: Exception) -> Response:
            return _json({"code": 404, "status": "Not Found"}, 404)

        @app.errorhandler(405)
        def not_allowed(_: Exception) -> Response:
            return _json({"code": 405, "status": "Method Not Allowed"}, 405)

        return app
