"""An Oakestra root orchestrator stand-in that behaves as the real one does.

It follows Oakestra's root API as ``docs/oakestra.md`` describes it, including what was seen on a real root
orchestrator (2026-12): login/refresh with expiring JWT-shaped tokens; after a key rotation
(the root restarted) old tokens get 422 ``Signature verification failed`` on the
``@jwt_required`` application endpoints and 401 on the service endpoints, a malformed token
422 ``Not enough segments``; applications and services from SLA v2.0 descriptors (violations
are recorded in :attr:`violations`), and every rejected ``POST /api/service/`` (bad SLA, unknown
application) is answered with the thin 400 ``{"code": 400, "status": "Bad Request"}``;
double-encoded answers (JSON in a JSON string, ids as ``{"$oid": ...}``); a thin 409 for a
taken application name (names are checked only against ``^[a-zA-Z0-9]{1,30}$``);
``GET /api/application/<id>`` answering ``null``; ``failed_services`` on a 200 when the network
refuses a service address; ``virtualization: container`` stored as ``docker``; "ok" for
instances of unknown services and for removing unknown instances; 500 for deleting an unknown
service; ``GET /api/clusters/active`` as plain JSON labelled ``text/html`` with plain-string ids.

Scheduling is what Oakestra's scheduler does: only constraints of type ``direct`` are read
(``cluster`` at the root, ``node`` within the cluster); ``addons``, ``clusters``,
``target_node`` and unknown types are stored and ignored. A job whose named cluster is not
active becomes ``TargetClusterNotActive``, one no active cluster has room for (virtualization,
vCPUs, memory) ``NoActiveClusterWithCapacity``, one whose named worker is missing
``NO_NODE_FOUND``; ``status_detail`` then stays "Waiting for scheduling decision", as on the
real root. A FAILED instance stays in ``instance_list`` after a new one is added; with
:meth:`redeploy_failed` the cluster orchestrator replaces failed instances by itself.
Status moves on with polling (REQUESTED -> CLUSTER_SCHEDULED -> ... -> RUNNING -> COMPLETED /
FAILED / DEAD). Tests steer outcomes with :meth:`set_fate`, or pass ``run_instances=True`` to
run each instance's ``cmd`` (with its ``environment``) as a local process whose exit decides
the status (the log tail becomes ``status_detail``).
"""

from __future__ import annotations

import base64
import ipaddress
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
CONSTRAINT = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}  # even "bogus"
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
WAITING = "Waiting for scheduling decision"
THIN_400 = {"code": 400, "status": "Bad Request"}
BIG_CLUSTER = {"vcpus": 64, "memory": 262144, "virtualization": ["docker", "unikernel"]}
STEPS = ["REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "CREATING", "CREATED", "RUNNING"]


def _oid() -> str:
    return uuid.uuid4().hex[:24]


def _b64(data: Json) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _double_encoded(value: Any) -> Response:
    """What the real root does with ``json_util.dumps``: a JSON document inside a JSON string."""
    return Response(json.dumps(json.dumps(value)), status=200, mimetype="application/json")


def _public(job: Json) -> Json:
    """A job as the root shows it (the double's own bookkeeping starts with an underscore)."""
    return {key: value for key, value in job.items() if not key.startswith("_")}


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
        self.tokens: dict[str, tuple[str, float, str, int]] = {}  # token -> (user, expiry, kind, key generation)
        self.key_generation = 0
        self.apps: dict[str, Json] = {}
        self.jobs: dict[str, Json] = {}
        self.clusters: list[Json] = (
            clusters
            if clusters is not None
            else [
                {
                    "_id": {"$oid": _oid()},
                    "cluster_name": "cluster-a",
                    "cluster_location": "munich",
                    "supported_addons": ["FLOps-learner"],
                    "active": True,
                },
            ]
        )
        self.fates: dict[str, list[Any]] = {}  # microservice name -> [final status, detail, instances left or None]
        self.self_redeploying: dict[str, int] = {}  # microservice name -> polls before its cluster replaces a failure
        self.violations: list[str] = []
        self.slas: list[Json] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every call
        self.logins = self.refreshes = self.expired_token_uses = 0
        self._lock = threading.RLock()
        self._instance_fates: dict[tuple[str, int], tuple[str, str]] = {}
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
    def set_fate(self, microservice_name: str, status: str, detail: str = "", instances: int | None = None) -> None:
        """Where the next ``instances`` instances (all: None) of a service end up after RUNNING.

        Without a fate an instance ends COMPLETED if one-shot, else stays RUNNING.
        """
        self.fates[microservice_name] = [status, detail, instances]

    def redeploy_failed(self, microservice_name: str, after_polls: int = 0) -> None:
        """The cluster orchestrator replaces this service's failed instances by itself, ``after_polls`` polls later.

        The failed instance stays listed beside its replacement.
        """
        self.self_redeploying[microservice_name] = after_polls

    def rotate_keys(self) -> None:
        """What a restart of the root does: a new signing key, so every token issued before fails verification."""
        with self._lock:
            self.key_generation += 1

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
        self.tokens[token] = (user, expiry, kind, self.key_generation)
        return token

    def _user(self, kind: str = "access", jwt_required: bool = False) -> tuple[str | None, Response | None]:
        """The caller; ``@jwt_required`` endpoints refuse bad tokens with 422, the service endpoints with 401."""
        refused = 422 if jwt_required else 401
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None, _json({"msg": "Missing Authorization Header"}, 401)
        token = header[len("Bearer ") :]
        if token.count(".") != 2:
            return None, _json({"msg": "Not enough segments"}, refused)
        found = self.tokens.get(token)
        if found is None or found[3] != self.key_generation:
            return None, _json({"msg": "Signature verification failed"}, refused)
        user, expiry, token_kind, _ = found
        if token_kind != kind:
            return None, _json(
                {"msg": f"Only {'refresh' if kind == 'refresh' else 'non-refresh'} tokens are allowed"}, refused
            )
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
    @staticmethod
    def _fits(job: Json, cluster: Json) -> bool:
        offer = {**BIG_CLUSTER, **cluster}
        return (
            job.get("virtualization") in offer["virtualization"]
            and offer["vcpus"] >= (job.get("vcpus") or 0)
            and offer["memory"] >= (job.get("memory") or 0)
        )

    def _place(self, job: Json) -> tuple[Json | None, str]:
        """Oakestra's root scheduler: only ``direct`` constraints count (``cluster``, then ``node`` in it)."""
        direct = next((item for item in job.get("constraints") or [] if item.get("type") == "direct"), {})
        candidates = [cluster for cluster in self.clusters if cluster.get("active")]
        if direct.get("cluster"):
            candidates = [cluster for cluster in candidates if cluster["cluster_name"] == direct["cluster"]]
        if not candidates:
            return None, "TargetClusterNotActive"
        fitting = [cluster for cluster in candidates if self._fits(job, cluster)]
        if not fitting:
            return None, "NoActiveClusterWithCapacity"
        chosen = fitting[0]
        workers = chosen.get("workers")
        if direct.get("node") and workers is not None and direct["node"] not in workers:
            return None, "NO_NODE_FOUND"
        return chosen, ""

    def _schedule(self, job: Json) -> None:
        cluster, failure = self._place(job)
        if cluster is None:
            job["status"], job["_scheduling_failed"] = failure, True  # status_detail stays "Waiting for ..."
            return
        number = job["next_instance_progressive_number"]
        job["next_instance_progressive_number"] = number + 1
        job["instance_list"].append(
            {
                "instance_number": number,
                "cluster_id": object_id(cluster["_id"]),
                "cluster_location": cluster["cluster_location"],
                "status": "CLUSTER_SCHEDULED",
                "publicip": "",
            }
        )
        job["status"], job["_scheduling_failed"] = "CLUSTER_SCHEDULED", False
        fate = self.fates.get(job["microservice_name"])
        if fate is not None and fate[2] != 0:
            self._instance_fates[(job["microserviceID"], number)] = (fate[0], fate[1])
            if fate[2] is not None:
                fate[2] -= 1

    def _advance(self, job: Json) -> None:
        """One polling step: schedule requested instances, move instances towards their fate."""
        for _ in range(job.pop("_requested", 0)):
            self._schedule(job)
        waiting = []
        for polls_left in job.pop("_own_redeploys", []):
            if polls_left <= 0:
                self._schedule(job)  # the cluster orchestrator's own redeploy
            else:
                waiting.append(polls_left - 1)
        job["_own_redeploys"] = waiting
        default = ("COMPLETED" if job.get("one_shot") else "RUNNING", "")
        for instance in list(job["instance_list"]):
            status = instance["status"]
            key = (job["microserviceID"], instance["instance_number"])
            final, detail = self._instance_fates.get(key, default)
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
            failed_now = instance["status"] in ("FAILED", "DEAD") and status != instance["status"]
            if failed_now and job["microservice_name"] in self.self_redeploying:
                delay = self.self_redeploying[job["microservice_name"]]
                if delay == 0:
                    self._schedule(job)  # replaced before anyone could see it alone
                else:
                    job["_own_redeploys"].append(delay - 1)
        if job["instance_list"] and not job.get("_scheduling_failed"):
            job["status"] = job["instance_list"][-1]["status"]

    def _kill(self, job_id: str, number: int | None = None) -> None:
        for key in [key for key in self._processes if key[0] == job_id and number in (None, key[1])]:
            self._processes.pop(key).kill()

    # -- routes --------------------------------------------------------------------------
    def _build_app(self) -> Flask:
        app = Flask("oakestra-contract")

        @app.after_request
        def remember(response: Response) -> Response:
            self.requests.append((request.method, request.path, response.status_code))
            return response

        @app.post("/api/auth/login")
        def login() -> Response:
            body = request.get_json(silent=True) or {}
            user = self.users.get(body.get("username", ""))
            if user is None or user["password"] != body.get("password"):
                return _json({"message": "invalid username or password"}, 401)
            with self._lock:
                self.logins += 1
                return _json(
                    {
                        "token": self._issue(body["username"], "access", self.token_lifetime_s),
                        "refresh_token": self._issue(body["username"], "refresh", 10 * self.token_lifetime_s),
                    }
                )

        @app.post("/api/auth/refresh")
        def refresh() -> Response:
            with self._lock:
                user, refused = self._user("refresh", jwt_required=True)
                if refused is not None:
                    return refused
                assert user is not None
                self.refreshes += 1
                return _json({"token": self._issue(user, "access", self.token_lifetime_s)})

        @app.post("/api/application/")
        def create_application() -> Response:
            with self._lock:
                user, refused = self._user(jwt_required=True)
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
                    return _json({"code": 409, "status": "Conflict"}, 409)
                app_id = _oid()
                self.apps[app_id] = {**application, "applicationID": app_id, "userId": user, "microservices": []}
                mine = [{**a, "_id": {"$oid": a["applicationID"]}} for a in self.apps.values() if a["userId"] == user]
                return _double_encoded(mine)

        @app.route("/api/application/<app_id>", methods=["GET", "DELETE"])
        def application(app_id: str) -> Response:
            with self._lock:
                user, refused = self._user(jwt_required=True)
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
                user, refused = self._user(jwt_required=True)
                if refused is not None:
                    return refused
                assert user is not None
                if not self.users[user]["admin"]:
                    return _json({"message": "You have not enough permissions!"}, 403)
                return _double_encoded([{**a, "_id": {"$oid": a["applicationID"]}} for a in self.apps.values()])

        @app.get("/api/applications/<user_id>")
        def user_applications(user_id: str) -> Response:
            with self._lock:
                user, refused = self._user(jwt_required=True)
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
                    self.violations.append(problem)
                    return _json(THIN_400, 400)  # the root's own 422 is caught and replaced
                assert isinstance(body, dict)
                application = body["applications"][0]
                if len(application["microservices"]) != 1:
                    self.violations.append("FLOps adds one microservice per request")
                    return _json(THIN_400, 400)
                owner = self.apps.get(application["applicationID"])
                if owner is None or owner["userId"] != user:
                    return _json(THIN_400, 400)  # the root's 404 is replaced too
                microservice = application["microservices"][0]
                rr_ip = (microservice.get("addresses") or {}).get("rr_ip")
                if rr_ip and any(job.get("RR_ip") == rr_ip for job in self.jobs.values()):
                    failure = {"message": f"failed to deploy service: address {rr_ip} is in use", "status": 500}
                    return _json({"job_id": "", "deployed_services": [], "failed_services": [failure]})
                job_id = _oid()
                virtualization = microservice["virtualization"]
                self.jobs[job_id] = {
                    **microservice,
                    "_id": {"$oid": job_id},
                    "microserviceID": job_id,
                    "virtualization": "docker" if virtualization == "container" else virtualization,
                    "applicationID": owner["applicationID"],
                    "app_name": owner["application_name"],
                    "app_ns": owner["application_namespace"],
                    "service_name": microservice["microservice_name"],
                    "job_name": ".".join(
                        [
                            owner["application_name"],
                            owner["application_namespace"],
                            microservice["microservice_name"],
                            microservice["microservice_namespace"],
                        ]
                    ),
                    "RR_ip": rr_ip,
                    "instance_list": [],
                    "next_instance_progressive_number": 0,
                }
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
                if job is None and request.method == "DELETE":
                    return _json({"code": 500, "status": "Internal Server Error"}, 500)
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
                    job["status"], job["status_detail"], job["_scheduling_failed"] = "REQUESTED", WAITING, False
                return _json({"message": "ok"})

        @app.delete("/api/service/<job_id>/instance/<int:number>")
        def remove_instance(job_id: str, number: int) -> Response:
            with self._lock:
                _, refused = self._user()
                if refused is not None:
                    return refused
                job = self.jobs.get(job_id)
                if job is not None:  # unknown services and instance numbers are "ok" too
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
                active = [
                    {**cluster, "_id": object_id(cluster["_id"])} for cluster in self.clusters if cluster.get("active")
                ]
                return Response(json.dumps(active), status=200, mimetype="text/html")  # plain JSON, labelled HTML

        @app.errorhandler(404)
        def unknown(_: Exception) -> Response:
            return _json({"code": 404, "status": "Not Found"}, 404)

        @app.errorhandler(405)
        def not_allowed(_: Exception) -> Response:
            return _json({"code": 405, "status": "Method Not Allowed"}, 405)

        return app


def object_id(value: object) -> str:
    return str(value["$oid"]) if isinstance(value, dict) else str(value)
