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
- actions ``delete_tag`` (body: tag; answers JSON) and ``ping``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight

from flops_utils.data_client import DELETE_TAG_ACTION, FRAGMENT_SCHEMA, PING_ACTION
from flops_utils.service_config import DataServerConfig, load_config
from services.data_server.storage import FragmentStore, RejectedUpload, TagSummary, check_tag

log = logging.getLogger("flops.data_server")


def _peer(context: flight.ServerCallContext) -> str:
    try:
        return str(context.peer())
    except Exception:  # noqa: BLE001 - only for the log line
        return "?"


def _refuse(message: str, request: str = "request") -> flight.FlightServerError:
    log.warning("%s refused: %s", request, message)
    return flight.FlightServerError(message)


class DataFlightServer(flight.FlightServerBase):
    """Binds and serves as soon as it is constructed (that is how pyarrow's server works)."""

    def __init__(self, config: DataServerConfig, store: FragmentStore) -> None:
        super().__init__(f"grpc://{config.host}:{config.port}")
        self.config = config
        self.store = store

    def _info(self, summary: TagSummary) -> flight.FlightInfo:
        endpoint = flight.FlightEndpoint(summary.tag.encode(), [])
        descriptor = flight.FlightDescriptor.for_path(summary.tag)
        return flight.FlightInfo(FRAGMENT_SCHEMA, descriptor, [endpoint], summary.rows, summary.bytes)

    def _tag_of(self, descriptor: flight.FlightDescriptor) -> str:
        if descriptor.descriptor_type != flight.DescriptorType.PATH or len(descriptor.path or []) != 1:
            raise RejectedUpload("the descriptor must be a path of one element: the tag")
        return check_tag(bytes(descriptor.path[0]).decode("utf-8", errors="replace"))

    def do_put(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
               reader: flight.MetadataRecordBatchReader, writer: flight.FlightMetadataWriter) -> None:
        started = time.monotonic()
        tag = "?"
        try:
            tag = self._tag_of(descriptor)
            summary = self.store.write(tag, reader.schema, (chunk.data for chunk in reader))
        except RejectedUpload as error:
            raise _refuse(str(error), f"put tag={tag} peer={_peer(context)}") from None
        log.info("put tag=%s rows=%d bytes=%d peer=%s in %.3fs", tag, summary.rows, summary.bytes,
                 _peer(context), time.monotonic() - started)

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        wanted = [tag.strip() for tag in (criteria or b"").decode("utf-8", errors="replace").split(",") if tag.strip()]
        try:
            tags = [check_tag(tag) for tag in dict.fromkeys(wanted)] if wanted else self.store.tags()
        except RejectedUpload as error:
            raise _refuse(str(error), f"list criteria={criteria!r}") from None
        summaries = [summary for summary in map(self.store.summary, tags) if summary.fragments]
        log.info("list criteria=%s tags=%d peer=%s", ",".join(wanted) or "*", len(summaries), _peer(context))
        return iter([self._info(summary) for summary in summaries])

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        try:
            tag = self._tag_of(descriptor)
        except RejectedUpload as error:
            raise _refuse(str(error), "info") from None
        summary = self.store.summary(tag)
        log.info("info tag=%s rows=%d peer=%s", tag, summary.rows, _peer(context))
        if not summary.fragments:
            raise flight.FlightServerError(f"no data under tag {tag!r}")
        return self._info(summary)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        try:
            tag = check_tag(bytes(ticket.ticket).decode("utf-8", errors="replace"))
        except RejectedUpload as error:
            raise _refuse(str(error), "get") from None
        summary = self.store.summary(tag)
        log.info("get tag=%s fragments=%d rows=%d peer=%s", tag, summary.fragments, summary.rows, _peer(context))
        return flight.GeneratorStream(FRAGMENT_SCHEMA, self.store.read(tag))

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return [(DELETE_TAG_ACTION, "remove every fragment under the tag in the body"),
                (PING_ACTION, "answer 'ok' when the server is up")]

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == PING_ACTION:
            log.debug("ping peer=%s", _peer(context))
            return iter([b"ok"])
        if action.type == DELETE_TAG_ACTION:
            try:
                summary = self.store.delete(check_tag(body.decode("utf-8", errors="replace")))
            except RejectedUpload as error:
                raise _refuse(str(error), "delete_tag") from None
            log.info("delete tag=%s fragments=%d rows=%d peer=%s", summary.tag, summary.fragments, summary.rows,
                     _peer(context))
            return iter([json.dumps({"tag": summary.tag, "fragments": summary.fragments,
                                     "rows": summary.rows}).encode()])
        raise _refuse(f"unknown action {action.type!r}; known: {DELETE_TAG_ACTION}, {PING_ACTION}", "action")


def main() -> None:
    config = load_config(DataServerConfig)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s data-server[{config.node}] %(levelname)s %(message)s")
    store = FragmentStore(Path(config.storage_dir), config.max_upload_bytes)
    store.prepare()
    server = DataFlightServer(config, store)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("serving node %s on %s:%d, storage %s, tags %s", config.node, config.host, server.port,
             config.storage_dir, ",".join(store.tags()) or "-")
    while not stop.wait(1.0):
        pass
    log.info("shutting down")
    server.shutdown()


if __name__ == "__main__":
    main()
