"""A node's data server: tagged fragments on local disk, served over Apache Arrow Flight.

Why Arrow Flight + Parquet: columnar batches travel without per-row encoding (the
learner gets an Arrow table it turns into numpy without copies), Parquet is compact
and self-describing on disk, and both come from one well-supported library (pyarrow).

Flight calls:
- ``do_put`` with descriptor path ``[tag]``: store one fragment (schema
  ``features: list<float32>, label: int64``; bad schemas, nulls, ragged vectors and
  uploads over ``max_upload_bytes`` are refused with a one-line error);
- ``list_flights`` with criteria ``"tag1,tag2"`` (empty: all): one FlightInfo per tag
  with its total rows; ``get_flight_info`` for one tag;
- ``do_get`` with ticket ``tag``: stream every fragment of the tag;
- actions ``delete_tag`` (body: tag; answers JSON), ``revoke_project`` (body: project id;
  the manager's admin token) and ``ping`` (the only call that needs no token).

Every call but ``ping`` carries ``authorization: Bearer <token>``, a data token the
manager signed (:mod:`flops_utils.data_tokens`); the token's customer is the namespace the
call works in, so a tag name alone never reaches another customer's data. With
``tls`` set the server speaks TLS (``grpc+tls``) with a certificate from the manager's CA.
Without ``token_public_key_pem`` (development only) every caller shares one namespace.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight

from flops_utils.data_client import (
    DELETE_TAG_ACTION,
    FRAGMENT_SCHEMA,
    PING_ACTION,
    REVOKE_PROJECT_ACTION,
    WIDTH_METADATA_KEY,
)
from flops_utils.data_tokens import DataClaims, TokenRejected, TokenVerifier
from flops_utils.service_config import DataServerConfig, load_config
from services.data_server.revocations import Revocations
from services.data_server.storage import FragmentStore, Namespaces, RejectedUpload, TagSummary, check_tag

log = logging.getLogger("flops.data_server")


def _peer(context: flight.ServerCallContext) -> str:
    try:
        return str(context.peer())
    except Exception:  # noqa: BLE001 - only for the log line
        return "?"


def _refuse(message: str, request: str = "request") -> flight.FlightServerError:
    log.warning("%s refused: %s", request, message)
    return flight.FlightServerError(message)


OPEN_NAMESPACE = "open"  # development mode (no token key): everyone's namespace
_AUTH_MIDDLEWARE = "auth"


class _BearerToken(flight.ServerMiddleware):
    def __init__(self, token: str | None) -> None:
        self.token = token


class _BearerTokenFactory(flight.ServerMiddlewareFactory):
    """Hands each call's ``authorization: Bearer`` token to the handlers (checked there: ping needs none)."""

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> _BearerToken:
        values = headers.get("authorization") or []
        scheme, _, token = (values[0] if values else "").strip().partition(" ")
        return _BearerToken(token.strip() if scheme.lower() == "bearer" and token.strip() else None)


class DataFlightServer(flight.FlightServerBase):
    """Binds and serves as soon as it is constructed (that is how pyarrow's server works)."""

    def __init__(self, config: DataServerConfig, namespaces: Namespaces, revocations: Revocations) -> None:
        scheme = "grpc+tls" if config.tls else "grpc"
        tls = [flight.CertKeyPair(config.tls.cert_pem.encode(), config.tls.key_pem.encode())] if config.tls else None
        super().__init__(
            f"{scheme}://{config.host}:{config.port}",
            tls_certificates=tls,
            middleware={_AUTH_MIDDLEWARE: _BearerTokenFactory()},
        )
        self.config = config
        self.namespaces = namespaces
        self.revocations = revocations
        self.verifier = TokenVerifier(config.token_public_key_pem) if config.token_public_key_pem else None

    def _claims(self, context: flight.ServerCallContext, wanted: str, doing: str) -> DataClaims:
        """The caller's verified claims, if their scope allows ``wanted`` on this node; refuses otherwise."""
        if self.verifier is None:
            return DataClaims(customer=OPEN_NAMESPACE, scope="admin")
        middleware = context.get_middleware(_AUTH_MIDDLEWARE)
        token = middleware.token if isinstance(middleware, _BearerToken) else None
        where = f"{doing} peer={_peer(context)}"
        if not token:
            log.warning("%s refused: no token", where)
            raise flight.FlightUnauthenticatedError(
                f"the data server of node {self.config.node} needs a data token to {doing} "
                "(send 'authorization: Bearer <token>'; get one with 'flops data token' or from the manager)"
            )
        try:
            claims = self.verifier.verify(token)
        except TokenRejected as error:
            log.warning("%s refused: %s", where, error)
            raise flight.FlightUnauthenticatedError(str(error)) from None
        allowed = {"write": ("put", "delete", "list"), "read": ("list", "get"), "admin": ("revoke",)}[claims.scope]
        problem = None
        if wanted not in allowed:
            problem = f"a {claims.scope} token may not {wanted} data (it may {', '.join(allowed)})"
        elif not claims.allows_node(self.config.node):
            problem = f"this token is for node {claims.node}, not {self.config.node}"
        elif claims.project_id and self.revocations.revoked(claims.project_id):
            problem = f"this token was revoked: project {claims.project_id} has ended"
        if problem:
            log.warning("%s refused for customer %s: %s", where, claims.customer, problem)
            raise flight.FlightUnauthorizedError(problem)
        return claims

    def _store(self, claims: DataClaims) -> FragmentStore:
        return self.namespaces.of(claims.customer)

    @staticmethod
    def _readable(claims: DataClaims, tag: str) -> None:
        if not claims.allows_tag(tag):
            raise flight.FlightUnauthorizedError(
                f"this token may read only tags {', '.join(claims.tags or ())}, not {tag!r}"
            )

    def _info(self, summary: TagSummary) -> flight.FlightInfo:
        endpoint = flight.FlightEndpoint(summary.tag.encode(), [])
        descriptor = flight.FlightDescriptor.for_path(summary.tag)
        schema = FRAGMENT_SCHEMA.with_metadata({WIDTH_METADATA_KEY: str(summary.width or 0).encode()})
        return flight.FlightInfo(schema, descriptor, [endpoint], summary.rows, summary.bytes)

    def _tag_of(self, descriptor: flight.FlightDescriptor) -> str:
        if descriptor.descriptor_type != flight.DescriptorType.PATH or len(descriptor.path or []) != 1:
            raise RejectedUpload("the descriptor must be a path of one element: the tag")
        return check_tag(bytes(descriptor.path[0]).decode("utf-8", errors="replace"))

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        started = time.monotonic()
        tag = "?"
        claims = self._claims(context, "put", "store data")
        try:
            tag = self._tag_of(descriptor)
            summary = self._store(claims).write(tag, reader.schema, (chunk.data for chunk in reader))
        except RejectedUpload as error:
            raise _refuse(f"{error} (node {self.config.node})", f"put tag={tag} peer={_peer(context)}") from None
        log.info(
            "put customer=%s tag=%s rows=%d width=%s bytes=%d peer=%s in %.3fs",
            claims.customer,
            tag,
            summary.rows,
            summary.width,
            summary.bytes,
            _peer(context),
            time.monotonic() - started,
        )

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        claims = self._claims(context, "list", "list tags")
        store = self._store(claims)
        wanted = [tag.strip() for tag in (criteria or b"").decode("utf-8", errors="replace").split(",") if tag.strip()]
        try:
            tags = [check_tag(tag) for tag in dict.fromkeys(wanted)] if wanted else store.tags()
        except RejectedUpload as error:
            raise _refuse(str(error), f"list criteria={criteria!r}") from None
        tags = [tag for tag in tags if claims.allows_tag(tag)]
        summaries = [summary for summary in map(store.summary, tags) if summary.fragments]
        log.info(
            "list customer=%s criteria=%s tags=%d peer=%s",
            claims.customer,
            ",".join(wanted) or "*",
            len(summaries),
            _peer(context),
        )
        return iter([self._info(summary) for summary in summaries])

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        claims = self._claims(context, "list", "describe a tag")
        try:
            tag = self._tag_of(descriptor)
        except RejectedUpload as error:
            raise _refuse(str(error), "info") from None
        self._readable(claims, tag)
        summary = self._store(claims).summary(tag)
        log.info("info tag=%s rows=%d peer=%s", tag, summary.rows, _peer(context))
        if not summary.fragments:
            raise flight.FlightServerError(f"no data under tag {tag!r}")
        return self._info(summary)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        claims = self._claims(context, "get", "send data")
        try:
            tag = check_tag(bytes(ticket.ticket).decode("utf-8", errors="replace"))
        except RejectedUpload as error:
            raise _refuse(str(error), "get") from None
        self._readable(claims, tag)
        store = self._store(claims)
        summary = store.summary(tag)
        log.info(
            "get customer=%s project=%s tag=%s fragments=%d rows=%d peer=%s",
            claims.customer,
            claims.project_id or "-",
            tag,
            summary.fragments,
            summary.rows,
            _peer(context),
        )
        return flight.GeneratorStream(FRAGMENT_SCHEMA, store.read(tag))

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return [
            (DELETE_TAG_ACTION, "remove every fragment under the tag in the body"),
            (REVOKE_PROJECT_ACTION, "refuse the read tokens of the project id in the body from now on"),
            (PING_ACTION, "answer 'ok' when the server is up"),
        ]

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == PING_ACTION:
            log.debug("ping peer=%s", _peer(context))
            return iter([b"ok"])
        if action.type == DELETE_TAG_ACTION:
            claims = self._claims(context, "delete", "delete data")
            try:
                summary = self._store(claims).delete(check_tag(body.decode("utf-8", errors="replace")))
            except RejectedUpload as error:
                raise _refuse(str(error), "delete_tag") from None
            log.info(
                "delete customer=%s tag=%s fragments=%d rows=%d peer=%s",
                claims.customer,
                summary.tag,
                summary.fragments,
                summary.rows,
                _peer(context),
            )
            return iter(
                [json.dumps({"tag": summary.tag, "fragments": summary.fragments, "rows": summary.rows}).encode()]
            )
        if action.type == REVOKE_PROJECT_ACTION:
            self._claims(context, "revoke", "revoke tokens")
            try:
                project_id = self.revocations.revoke(body.decode("utf-8", errors="replace"))
            except ValueError as error:
                raise _refuse(str(error), "revoke_project") from None
            log.info("revoked the read tokens of project %s", project_id)
            return iter([b"ok"])
        raise _refuse(
            f"unknown action {action.type!r}; known: {DELETE_TAG_ACTION}, {REVOKE_PROJECT_ACTION}, {PING_ACTION}",
            "action",
        )


def main() -> None:
    config = load_config(DataServerConfig)
    if config.node_from_env and os.environ.get(config.node_from_env):
        config = config.model_copy(update={"node": os.environ[config.node_from_env]})
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s data-server[{config.node}] %(levelname)s %(message)s",
    )
    namespaces = Namespaces(Path(config.storage_dir), config.max_upload_bytes)
    namespaces.prepare()
    server = DataFlightServer(config, namespaces, Revocations(Path(config.storage_dir) / ".revoked"))
    if server.verifier is None:
        log.warning("no token_public_key_pem: every caller may read, write and delete every tag (development only)")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info(
        "serving node %s on %s:%d (%s), storage %s, namespaces %d",
        config.node,
        config.host,
        server.port,
        "TLS" if config.tls else "plain gRPC",
        config.storage_dir,
        namespaces.count(),
    )
    while not stop.wait(1.0):
        pass
    log.info("shutting down")
    server.shutdown()


if __name__ == "__main__":
    main()
