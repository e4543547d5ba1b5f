"""Every error the API answers is ``{"error": "one line", "details": [{field, message}]}``; never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from flops_utils.message_text import one_line
from manager.api.auth import AuthError
from manager.api.models import ErrorDetail, ErrorResponse
from manager.control import ControlError
from manager.sla import describe_validation_error
from manager.storage.base import ProjectNotFound, StorageUnavailable

log = logging.getLogger("flops.api")

VALIDATION_STATUS = 422
_KEPT_HEADERS = {"allow", "www-authenticate", "retry-after"}


def error_response(status: int, message: str, details: list[ErrorDetail] | None = None) -> Response:
    body = ErrorResponse(error=one_line(message, 500), details=details or [])
    response = Response(body.model_dump_json(), status=status, mimetype="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="flops"'
    return response


def validation_error_response(error: ValidationError) -> Response:
    """flask-openapi3's validation_error_callback: our error shape, naming each field path."""
    details = [ErrorDetail(**item) for item in describe_validation_error(error)]
    if request and any(detail.field == "body" for detail in details) and request.get_json(silent=True) is None:
        details = [
            ErrorDetail(field="body", message="expected a JSON object (Content-Type: application/json)")
            if detail.field == "body"
            else detail
            for detail in details
        ]
    summary = "; ".join(f"{detail.field}: {detail.message}" for detail in details)
    return error_response(VALIDATION_STATUS, f"invalid request: {summary}", details)


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(AuthError)
    def _unauthorised(error: AuthError) -> Response:
        return error_response(401, str(error))

    @app.errorhandler(ControlError)
    def _refused(error: ControlError) -> Response:
        status = error.status if 400 <= error.status <= 599 else 400
        return error_response(status, error.message)

    @app.errorhandler(ProjectNotFound)
    def _not_found(error: ProjectNotFound) -> Response:
        return error_response(404, str(error))

    @app.errorhandler(ValidationError)
    def _invalid(error: ValidationError) -> Response:
        return validation_error_response(error)

    @app.errorhandler(StorageUnavailable)
    def _storage_down(error: StorageUnavailable) -> Response:
        log.warning("database unavailable during %s %s: %s", request.method, request.path, error)
        return error_response(503, f"the database is unavailable: {error}")

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response | WerkzeugResponse:
        if error.code is None:  # an abort(Response): already a complete answer
            return error.get_response()
        response = error_response(error.code, error.description or error.name)
        for name, value in error.get_headers():
            if name.lower() in _KEPT_HEADERS:
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, f"internal error ({type(error).__name__}); see the manager log")
