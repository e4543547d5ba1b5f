"""Routes for users' own data: the node inventory and node-scoped write tokens for the data servers."""

from __future__ import annotations

from flask import Response, g
from flask_openapi3 import APIBlueprint, Tag

from flops_utils.service_config import DataServerSecurity
from manager.api.auth import Caller
from manager.api.errors import error_response
from manager.api.models import ErrorResponse
from manager.control import ControlError, ProjectControl
from manager.data_models import DataToken, DataTokenRequest, NodeList, NodesQuery

_data_tag = Tag(name="data", description="nodes, their data servers and your data on them")


def _customer(requested: str | None) -> str:
    """The caller's own namespace; the admin may name a customer."""
    caller: Caller = g.caller
    if requested is None or requested == caller.customer:
        return caller.customer
    if not caller.is_admin:
        raise ControlError(f"customerID {requested!r} does not match your identity {caller.customer!r}", 403)
    return requested


def register_data_routes(api: APIBlueprint, control: ProjectControl) -> None:
    @api.get(
        "/nodes",
        tags=[_data_tag],
        summary="nodes, clusters, learner flag, data-server address and reachability, and your tags on each "
        "(rows, feature width)",
        responses={200: NodeList, 403: ErrorResponse},
    )
    def list_nodes(query: NodesQuery) -> Response:
        document = control.list_nodes(_customer(query.customer_id))
        return Response(document.model_dump_json(), status=200, mimetype="application/json")

    @api.get(
        "/data-server-security",
        tags=[_data_tag],
        summary="admin only: certificate, key, CA and token key for data servers run outside FLOps (Oakestra "
        "nodes, annotated Kubernetes nodes)",
        responses={200: DataServerSecurity, 403: ErrorResponse, 404: ErrorResponse},
    )
    def data_server_security() -> Response:
        caller: Caller = g.caller
        if not caller.is_admin:
            return error_response(403, "only the admin may fetch the data servers' key material")
        security = control.data_server_security()
        if security is None:
            return error_response(404, "data_auth is off: data servers run without TLS and tokens")
        return Response(security.model_dump_json(), status=200, mimetype="application/json")

    @api.post(
        "/data-tokens",
        tags=[_data_tag],
        summary="a write token for your namespace on one node's data server (devices, 'flops data push')",
        responses={201: DataToken, 403: ErrorResponse, 404: ErrorResponse},
    )
    def data_token(body: DataTokenRequest) -> Response:
        document = control.data_write_token(_customer(body.customer_id), body.node)
        return Response(document.model_dump_json(), status=201, mimetype="application/json")
