"""The manager's REST API (flask-openapi3): projects, events, predictions, tracking, mock data, health."""

from __future__ import annotations

import csv
import io
import logging
import socket
from pathlib import Path
from typing import Any, TypeVar

import requests
from flask import Response, g, request
from flask_openapi3 import APIBlueprint, Info, OpenAPI, Tag
from pydantic import BaseModel

from flops_utils.repo_access import RepoAccessPolicy, RepoUnreachable, RepoUrlRefused, check_repo_reach
from manager.api.auth import Caller, TokenAuth, bearer_token
from manager.api.body_guard import MAX_JSON_DEPTH, drain, json_depth_exceeds
from manager.api.data_routes import register_data_routes
from manager.api.errors import VALIDATION_STATUS, error_response, install_error_handlers, validation_error_response
from manager.api.health import CachedCheck
from manager.api.models import (
    ErrorDetail,
    ErrorResponse,
    EventsQuery,
    EventsResponse,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    ProjectList,
    ProjectPath,
    ProjectView,
    ResetResponse,
    RoundsResponse,
    ServiceConfigPath,
    TrackingResponse,
)
from manager.control import CachePruneRequest, CachePruneResult, ControlError, MockRequest, MockResult, ProjectControl
from manager.learning_curve import render_png
from manager.records import ProjectRecord, ProjectStatus, RoundRecord, ServingState, project_timing
from manager.repo_policy import repo_access_rules
from manager.security.config_vault import CONFIG_PATH
from manager.settings import ManagerSettings
from manager.sla import ProjectSLA
from manager.storage.base import ProjectNotFound, ProjectStore

log = logging.getLogger("flops.api")

API_PREFIX = "/api/flops"
SECURITY_SCHEME = "bearerAuth"
PREDICT_TIMEOUT_S = 60.0
BROKER_PROBE_TIMEOUT_S = 2.0

_projects_tag = Tag(name="projects", description="start, list, watch and stop federated-learning projects")
_platform_tag = Tag(name="platform", description="tracking server, mock data, database")

# Answers every authenticated operation may give, besides its own.
_COMMON: dict[Any, Any] = {401: ErrorResponse, VALIDATION_STATUS: ErrorResponse, 503: ErrorResponse}


def create_api(control: ProjectControl, store: ProjectStore, auth: TokenAuth, settings: ManagerSettings) -> OpenAPI:
    """The WSGI app; serve it with waitress (see ``manager.app``)."""
    app = OpenAPI(
        __name__,
        info=Info(title="FLOps manager", version="0.1.0", description="Federated-learning projects from an ML repo"),
        security_schemes={SECURITY_SCHEME: {"type": "http", "scheme": "bearer"}},
        validation_error_status=VALIDATION_STATUS,
        validation_error_model=ErrorResponse,
        validation_error_callback=validation_error_response,
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    repo_rules, repo_base_dir = repo_access_rules(settings), Path(settings.repo_base_dir or Path.cwd())
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install_error_handlers(app)

    @app.before_request
    def _refuse_large_body() -> Response | None:
        length = request.content_length
        if length is None or length <= settings.max_request_bytes:
            return None
        drain(request.environ, length)
        return error_response(413, f"the request body is larger than {settings.max_request_bytes} bytes")

    @app.before_request
    def _identify() -> None:
        if request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/"):
            g.caller = auth.identify(request.headers.get("Authorization"))

    @app.before_request
    def _refuse_deep_json() -> Response | None:
        if request.method in ("POST", "PUT", "PATCH") and json_depth_exceeds(request.get_data(cache=True)):
            message = f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"
            return error_response(VALIDATION_STATUS, message, [ErrorDetail(field="body", message=message)])
        return None

    # Checked in the background: a slow database never makes /health (or the threads serving it) wait.
    stale_after_s = max(3.0, settings.db_timeout_s + 1.0)
    database_check = CachedCheck("database", store.ping, stale_after_s=stale_after_s)
    broker_check = CachedCheck("broker", lambda: _broker_ok(control, settings), stale_after_s=stale_after_s)

    @app.get(
        "/health",
        summary="database and broker reachability (no token needed)",
        responses={200: HealthResponse, 503: HealthResponse, VALIDATION_STATUS: ErrorResponse},
    )
    def health() -> Response:
        report = HealthResponse(status="ok", database=database_check.ok(), broker=broker_check.ok())
        if not (report.database and report.broker):
            report.status = "degraded"
        return _json(report, 200 if report.status == "ok" else 503)

    @app.get(
        CONFIG_PATH + "/<config_id>",
        security=[{SECURITY_SCHEME: []}],
        summary="a service's configuration, fetched by reference with that service's own token",
        responses={
            200: None,
            401: ErrorResponse,
            404: ErrorResponse,
            VALIDATION_STATUS: ErrorResponse,
            503: ErrorResponse,
        },
    )
    def service_config(path: ServiceConfigPath) -> Response:
        document = control.service_config(path.config_id, bearer_token(request.headers.get("Authorization")))
        return Response(document, status=200, mimetype="application/json")

    api = APIBlueprint(
        "flops", __name__, url_prefix=API_PREFIX, abp_security=[{SECURITY_SCHEME: []}], abp_responses=_COMMON
    )

    def visible_project(project_id: str) -> ProjectRecord:
        """The project if the caller may see it; other customers' projects are 'not found' too."""
        record = store.get_project(project_id)
        if record is None or not _caller().may_see(record.customer):
            raise ProjectNotFound(project_id)
        return record

    @api.post(
        "/projects",
        tags=[_projects_tag],
        summary="start a project from an SLA (answers at once)",
        responses={
            201: ProjectRecord,
            400: ErrorResponse,
            403: ErrorResponse,
            409: ErrorResponse,
            413: ErrorResponse,
            429: ErrorResponse,
        },
    )
    def start_project(body: ProjectSLA) -> Response:
        sla = _owned_by_caller(body)
        refused = _repo_refusal(sla, repo_rules.for_owner(sla.customer_id), repo_base_dir)
        if refused is not None:
            return refused
        record = control.start_project(sla, sla.customer_id)
        response = _json(record, 201)
        response.headers["Location"] = f"{API_PREFIX}/projects/{record.project_id}"
        return response

    @api.get(
        "/projects",
        tags=[_projects_tag],
        summary="your projects, newest first (admin: everyone's)",
        responses={200: ProjectList},
    )
    def list_projects() -> Response:
        caller = _caller()
        records = store.list_projects(None if caller.is_admin else caller.customer)
        return _json(ProjectList(projects=records))

    @api.get(
        "/projects/<project_id>",
        tags=[_projects_tag],
        summary="status, phase, progress (round k of n, cycle c of m), timestamps, last error",
        responses={200: ProjectView, 404: ErrorResponse},
    )
    def get_project(path: ProjectPath) -> Response:
        return _json(ProjectView.of(visible_project(path.project_id)))

    @api.get(
        "/projects/<project_id>/events",
        tags=[_projects_tag],
        summary="the project's event log after sequence number 'after'",
        responses={200: EventsResponse, 404: ErrorResponse},
    )
    def project_events(path: ProjectPath, query: EventsQuery) -> Response:
        record = visible_project(path.project_id)
        events = store.list_events(record.project_id, after_seq=query.after, limit=query.limit)
        timing = project_timing(record)
        return _json(
            EventsResponse(
                project_id=record.project_id,
                status=record.status,
                phase=record.phase,
                finished=record.status.finished,
                progress=record.progress,
                elapsed_s=timing.elapsed_s,
                eta_s=timing.eta_s,
                mlflow_run_url=record.mlflow_run_url,
                error=record.error,
                events=events,
            )
        )

    @api.get(
        "/projects/<project_id>/rounds",
        tags=[_projects_tag],
        summary="per-round history: JSON, or CSV with 'Accept: text/csv'",
        responses={200: RoundsResponse, 404: ErrorResponse},
    )
    def project_rounds(path: ProjectPath) -> Response:
        record = visible_project(path.project_id)
        rounds = store.list_rounds(record.project_id)
        if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
            filename = f"flops-{record.project_id[:8]}-rounds.csv"
            return Response(
                rounds_csv(rounds),
                mimetype="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        plot = f"{API_PREFIX}/projects/{record.project_id}/rounds/plot.png"
        return _json(RoundsResponse(project_id=record.project_id, rounds=rounds, plot_url=plot))

    @api.get(
        "/projects/<project_id>/rounds/plot.png",
        tags=[_projects_tag],
        summary="the learning curve: accuracy and loss per round, one line per cluster (PNG)",
        responses={200: None, 404: ErrorResponse},
    )
    def project_rounds_plot(path: ProjectPath) -> Response:
        record = visible_project(path.project_id)
        png = render_png(store.list_rounds(record.project_id), f"project {record.project_id}")
        return Response(png, mimetype="image/png")

    @api.delete(
        "/projects/<project_id>",
        tags=[_projects_tag],
        summary="stop the project and undeploy its services: 202 with status STOPPING at once while it "
        "stops in the background (it ends STOPPED); 200 for a finished project",
        responses={200: ProjectRecord, 202: ProjectRecord, 404: ErrorResponse, 409: ErrorResponse},
    )
    def stop_project(path: ProjectPath) -> Response:
        record = visible_project(path.project_id)
        answer = control.stop_project(record.project_id)
        return _json(answer, 202 if answer.status is ProjectStatus.STOPPING else 200)

    @api.post(
        "/projects/<project_id>/predict",
        tags=[_projects_tag],
        summary="predict with the project's deployed trained model",
        responses={
            200: PredictResponse,
            400: ErrorResponse,
            404: ErrorResponse,
            409: ErrorResponse,
            413: ErrorResponse,
            502: ErrorResponse,
            503: ErrorResponse,
        },
    )
    def predict(path: ProjectPath, body: PredictRequest) -> Response:
        record = visible_project(path.project_id)
        if not record.serving_url:
            raise ControlError(f"project {record.project_id} has no serving endpoint (deploy_trained_model_image)", 409)
        serving = record.serving
        if serving is not None and serving.state is ServingState.FAILED:
            raise ControlError(
                f"the serving endpoint of project {record.project_id} is down: lost ({serving.detail}) "
                f"after {serving.restarts} restarts",
                503,
            )
        token = bearer_token(request.headers.get("Authorization"))  # the serving endpoint wants it too
        return _json(_forward_prediction(record.project_id, record.serving_url, body, token))

    @api.get(
        "/tracking",
        tags=[_platform_tag],
        summary="your MLflow tracking/GUI URL (created on demand)",
        responses={200: TrackingResponse, 409: ErrorResponse},
    )
    def tracking() -> Response:
        customer = _caller().customer
        return _json(
            TrackingResponse(
                customer=customer, tracking_url=control.tracking_url(customer), ca_pem=control.tracking_ca_pem()
            )
        )

    @api.post(
        "/mocks",
        tags=[_platform_tag],
        summary="push mock dataset partitions into learner nodes' data servers",
        responses={200: MockResult, 400: ErrorResponse, 403: ErrorResponse, 413: ErrorResponse},
    )
    def push_mocks(body: MockRequest) -> Response:
        return _json(control.push_mock_data(_owned_by_caller(body)))

    @api.post(
        "/cache/prune",
        tags=[_platform_tag],
        summary="admin only: remove build-cache entries unused for a while that no live project needs",
        responses={200: CachePruneResult, 403: ErrorResponse, 413: ErrorResponse},
    )
    def prune_cache(body: CachePruneRequest) -> Response:
        if not _caller().is_admin:
            return error_response(403, "only the admin may prune the build cache")
        return _json(control.prune_cache(body))

    @api.delete(
        "/database",
        tags=[_platform_tag],
        summary="admin only: stop everything and reset the database",
        responses={200: ResetResponse, 403: ErrorResponse},
    )
    def reset_database() -> Response:
        if not _caller().is_admin:
            return error_response(403, "only the admin may reset the database")
        control.reset()
        return _json(ResetResponse())

    register_data_routes(api, control)
    app.register_api(api)
    return app


OwnedT = TypeVar("OwnedT", ProjectSLA, MockRequest)


def _owned_by_caller(body: OwnedT) -> OwnedT:
    """``customerID`` defaults to the caller; naming another customer is refused (admin may)."""
    caller = _caller()
    if "customer_id" not in body.model_fields_set:
        return body.model_copy(update={"customer_id": caller.customer})
    if not caller.may_see(body.customer_id):
        raise ControlError(f"customerID {body.customer_id!r} does not match your identity {caller.customer!r}", 403)
    return body


ROUND_COLUMNS = ("step", "cycle", "round", "cluster", "participants", "num_examples", "duration_s")


def rounds_csv(rounds: list[RoundRecord]) -> str:
    """One row per round; a column per metric any round reported (accuracy and loss first)."""
    names = sorted(
        {name for record in rounds for name in record.metrics},
        key=lambda name: (name not in ("accuracy", "loss"), name),
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*ROUND_COLUMNS, *names, "at"])
    for record in rounds:
        writer.writerow(
            [
                record.step,
                record.cycle,
                record.round,
                record.cluster or "",
                record.participants,
                record.num_examples,
                record.duration_s,
                *(record.metrics.get(name, "") for name in names),
                record.at,
            ]
        )
    return buffer.getvalue()


def _repo_refusal(sla: ProjectSLA, policy: RepoAccessPolicy, base_dir: Path) -> Response | None:
    """A 403 naming ml_repo_url when the owner's policy forbids what it names (no DNS here: the builder
    resolves and checks again before git runs). Customers read one generic line; the log keeps the reason."""
    try:
        check_repo_reach(sla.ml_repo_url, policy, base_dir, resolve=False)
    except (RepoUnreachable, RepoUrlRefused) as refused:
        log.warning("refused the ml_repo_url %r of customer %s: %s", sla.ml_repo_url, sla.customer_id, refused)
        reason = policy.public_reason(str(refused))
        return error_response(403, f"ml_repo_url: {reason}", [ErrorDetail(field="ml_repo_url", message=reason)])
    return None


def _caller() -> Caller:
    caller: Caller = g.caller
    return caller


def _json(document: BaseModel, status: int = 200) -> Response:
    return Response(document.model_dump_json(), status=status, mimetype="application/json")


def _broker_ok(control: ProjectControl, settings: ManagerSettings) -> bool:
    """The core's own MQTT link state when it reports one, else whether the broker accepts TCP."""
    connected = getattr(control, "broker_connected", None)
    if isinstance(connected, bool):
        return connected
    return _broker_reachable(settings)


def _broker_reachable(settings: ManagerSettings) -> bool:
    try:
        with socket.create_connection((settings.mqtt.host, settings.mqtt.port), timeout=BROKER_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _forward_prediction(project_id: str, serving_url: str, body: PredictRequest, token: str) -> PredictResponse:
    """POST the rows to the MLflow scoring server's ``/invocations``; its 4xx become 400, the rest 502."""
    url = serving_url if serving_url.rstrip("/").endswith("/invocations") else serving_url.rstrip("/") + "/invocations"
    try:
        answer = requests.post(
            url, json={"inputs": body.inputs}, headers={"Authorization": f"Bearer {token}"}, timeout=PREDICT_TIMEOUT_S
        )
    except requests.RequestException as error:
        raise ControlError(f"the serving endpoint of project {project_id} did not answer: {error}", 502) from error
    if 400 <= answer.status_code < 500:
        raise ControlError(f"the model refused the inputs: {_serving_message(answer)}", 400)
    if answer.status_code >= 300:
        raise ControlError(f"the serving endpoint answered {answer.status_code}: {_serving_message(answer)}", 502)
    try:
        payload = answer.json()
    except ValueError as error:
        raise ControlError("the serving endpoint answered with something other than JSON", 502) from error
    predictions = payload.get("predictions") if isinstance(payload, dict) else payload
    if not isinstance(predictions, list):
        predictions = [predictions]
    return PredictResponse(project_id=project_id, predictions=predictions)


def _serving_message(answer: requests.Response) -> str:
    try:
        payload = answer.json()
    except ValueError:
        return answer.text[:300] or answer.reason
    if isinstance(payload, dict) and payload.get("message"):
        return str(payload["message"])[:300]
    return str(payload)[:300]
