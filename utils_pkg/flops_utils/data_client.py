"""Client of a node's data server (Apache Arrow Flight) and the fragment format.

A fragment is a table with exactly two columns, ``features: list<float32>`` (one
fixed-length vector per row) and ``label: int64``, stored on the node under a tag.
Learners call :func:`load_dataset`, which reads the data server address and the
project's data tags from the environment the learner sets up::

    from flops_utils.data_client import load_dataset, to_numpy

    x, y = to_numpy(load_dataset())  # x: float32 (n, d), y: int64 (n,)

Data servers speak TLS and want a data token (see :mod:`flops_utils.data_tokens`):
``FLOPS_DATA_TOKEN`` and ``FLOPS_DATA_CA`` (the CA as PEM text) come with the learner's
environment too; a token opens only its customer's namespace.

Every error this module raises is a :class:`DataServerError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
from numpy.typing import ArrayLike

from flops_utils.message_text import one_line

DATA_SERVER_ENV = "FLOPS_DATA_SERVER"
DATA_TAGS_ENV = "FLOPS_DATA_TAGS"
DATA_TOKEN_ENV = "FLOPS_DATA_TOKEN"
# Every data server certificate carries this DNS name, and clients check it (not the address): the CA is the
# manager's own and signs it only for data servers, so one name works on every node, whatever its address.
DATA_SERVER_TLS_NAME = "flops-data-server"
DATA_CA_ENV = "FLOPS_DATA_CA"

FRAGMENT_SCHEMA = pa.schema([pa.field("features", pa.list_(pa.float32())), pa.field("label", pa.int64())])
TAG_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

DELETE_TAG_ACTION = "delete_tag"
PING_ACTION = "ping"
REVOKE_PROJECT_ACTION = "revoke_project"
WIDTH_METADATA_KEY = b"flops.width"  # in a listed tag's schema: its feature width

_LIST_TIMEOUT_S = 30.0
_PING_TIMEOUT_S = 2.0
_PUT_BATCH_ROWS = 16384


class DataServerError(RuntimeError):
    """A data server refused a request or could not be used; the message is one line."""


class DataServerUnavailable(DataServerError):
    """The data server did not answer (not running, wrong address)."""


class DataAccessDenied(DataServerError):
    """The data server refused the token (none, invalid, expired, revoked, wrong scope or node)."""


class NoDataError(DataServerError):
    """No fragment matches the requested tags."""

    def __init__(self, message: str, tags: list[str]) -> None:
        super().__init__(message)
        self.tags = tags


@dataclass(frozen=True)
class TagShape:
    rows: int
    width: int | None  # features per row (None: unknown, e.g. an older data server)


def is_valid_tag(tag: str) -> bool:
    return bool(TAG_PATTERN.fullmatch(tag))


def _type_name(data_type: pa.DataType) -> str:
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return f"list<{_type_name(data_type.value_type)}>"
    return {"float": "float32", "double": "float64", "halffloat": "float16"}.get(str(data_type), str(data_type))


def describe_schema(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {_type_name(field.type)}" for field in schema)


def schema_problem(schema: pa.Schema) -> str | None:
    """Why ``schema`` is not the fragment schema, or None when it is (list item names may differ)."""
    expected = f"expected columns ({describe_schema(FRAGMENT_SCHEMA)}), got ({describe_schema(schema)})"
    if schema.names != FRAGMENT_SCHEMA.names:
        return expected
    features, label = schema.field("features").type, schema.field("label").type
    if not (pa.types.is_list(features) and features.value_type == pa.float32()) or label != pa.int64():
        return expected
    return None


def _integer_labels(y: np.ndarray) -> np.ndarray:
    """``y`` as int64 class labels; fractions and text are refused instead of being cut to integers."""
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(np.mod(y, 1) == 0):
            raise ValueError("y holds fractions; labels are integer classes (FLOps trains classifiers, not regression)")
        return y.astype(np.int64)
    what = "text" if y.dtype.kind in "USO" else f"{y.dtype}"
    raise ValueError(f"y holds {what} values, not integer class labels; map the classes to 0..k-1 first")


def from_numpy(x: ArrayLike, y: ArrayLike) -> pa.Table:
    """A fragment table from features ``x`` (n, d) and labels ``y`` (n,)."""
    features = np.asarray(x, dtype=np.float32)
    labels = _integer_labels(np.asarray(y).reshape(-1))
    if features.ndim != 2:
        features = features.reshape(len(features), -1)
    if len(features) != len(labels):
        raise ValueError(f"x has {len(features)} rows but y has {len(labels)}")
    width = features.shape[1]
    offsets = np.arange(0, (len(features) + 1) * width, width, dtype=np.int32)
    values = pa.array(features.reshape(-1), type=pa.float32())
    column = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)
    return pa.Table.from_arrays([column, pa.array(labels)], schema=FRAGMENT_SCHEMA)


def to_numpy(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 (n, d) and labels as int64 (n,) from a fragment table."""
    problem = schema_problem(table.schema)
    if problem:
        raise ValueError(f"not a fragment table: {problem}")
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.float32), labels
    features = table.column("features").combine_chunks()
    flat = features.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(flat) % table.num_rows:
        raise ValueError("feature vectors differ in length")
    return flat.reshape(table.num_rows, -1), labels


def _reason(error: BaseException) -> str:
    """Flight errors carry gRPC debug context after the message; keep the message only, on one line."""
    text = str(error).split(". Detail:")[0].split(". gRPC client debug context")[0]
    return one_line(text.removeprefix("Flight returned unavailable error, with message: "))


def _location(address: str) -> str:
    return address if "://" in address else f"grpc://{address}"


class DataServerClient:
    """Talks to one data server; connects lazily on the first call.

    ``token``: a data token (sent as ``authorization: Bearer``); ``ca_pem``: the CA of the
    server's certificate, which makes the connection TLS.
    """

    def __init__(self, address: str, token: str | None = None, ca_pem: str | None = None) -> None:
        self.address = address.removeprefix("grpc://").removeprefix("grpc+tcp://").removeprefix("grpc+tls://")
        self.token = token
        self.ca_pem = ca_pem
        self._client: flight.FlightClient | None = None

    def _flight(self) -> flight.FlightClient:
        if self._client is None:
            try:
                if self.ca_pem:
                    self._client = flight.FlightClient(
                        f"grpc+tls://{self.address}",
                        tls_root_certs=self.ca_pem.encode(),
                        override_hostname=DATA_SERVER_TLS_NAME,
                    )
                else:
                    self._client = flight.FlightClient(_location(self.address))
            except (pa.ArrowException, ValueError) as error:
                raise DataServerUnavailable(f"bad data server address {self.address!r}: {_reason(error)}") from error
        return self._client

    def _options(self, timeout: float | None = None) -> flight.FlightCallOptions:
        headers = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else []
        return flight.FlightCallOptions(timeout=timeout, headers=headers)

    def _fail(self, doing: str, error: BaseException) -> DataServerError:
        if isinstance(error, flight.FlightUnavailableError | flight.FlightTimedOutError):
            return DataServerUnavailable(f"data server {self.address} is unreachable ({doing}): {_reason(error)}")
        if isinstance(error, flight.FlightUnauthenticatedError | flight.FlightUnauthorizedError):
            return DataAccessDenied(f"data server {self.address} refused to {doing}: {_reason(error)}")
        return DataServerError(f"data server {self.address} refused to {doing}: {_reason(error)}")

    def ping(self, timeout: float = _PING_TIMEOUT_S) -> None:
        options = flight.FlightCallOptions(timeout=timeout)
        try:
            list(self._flight().do_action(flight.Action(PING_ACTION, b""), options=options))
        except (pa.ArrowException, OSError) as error:
            raise self._fail("answer a ping", error) from error

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server answers; raise :class:`DataServerUnavailable` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ping(timeout=min(_PING_TIMEOUT_S, max(0.1, deadline - time.monotonic())))
                return
            except DataServerUnavailable as error:
                if time.monotonic() >= deadline:
                    raise DataServerUnavailable(f"data server {self.address} not ready after {timeout:g} s") from error
                time.sleep(0.1)

    def put(self, tag: str, table: pa.Table, progress: Callable[[int, int], None] | None = None) -> int:
        """Store ``table`` as one fragment under ``tag``; returns the rows stored.

        ``progress(rows_sent, rows_total)`` is called after each batch of a large table.
        """
        if not is_valid_tag(tag):
            raise DataServerError(f"invalid tag {tag!r}: use 1-64 letters, digits, '.', '_' or '-'")
        problem = schema_problem(table.schema)
        if problem:
            raise DataServerError(f"cannot upload to tag {tag!r}: {problem}")
        table = table.cast(FRAGMENT_SCHEMA)
        try:
            writer, _ = self._flight().do_put(
                flight.FlightDescriptor.for_path(tag), FRAGMENT_SCHEMA, options=self._options()
            )
            sent = 0
            for batch in table.to_batches(max_chunksize=_PUT_BATCH_ROWS):
                writer.write_batch(batch)
                sent += batch.num_rows
                if progress is not None:
                    progress(sent, table.num_rows)
            writer.close()
        except (pa.ArrowException, OSError) as error:
            raise self._fail(f"store tag {tag!r}", error) from error
        return table.num_rows

    def list_tags(self, tags: list[str] | None = None) -> dict[str, int]:
        """Tag -> rows stored, for ``tags`` (all tags when None or empty)."""
        return {tag: shape.rows for tag, shape in self.list_shapes(tags).items()}

    def list_shapes(self, tags: list[str] | None = None) -> dict[str, TagShape]:
        """Tag -> rows and feature width, for ``tags`` (all of the token's namespace when None or empty)."""
        criteria = ",".join(tags or []).encode()
        try:
            infos = list(self._flight().list_flights(criteria, options=self._options(_LIST_TIMEOUT_S)))
        except (pa.ArrowException, OSError) as error:
            raise self._fail("list tags", error) from error
        shapes = {}
        for info in infos:
            width = (info.schema.metadata or {}).get(WIDTH_METADATA_KEY, b"0")
            shapes[bytes(info.descriptor.path[0]).decode()] = TagShape(info.total_records, int(width) or None)
        return shapes

    def get(self, tags: list[str]) -> pa.Table:
        """Every fragment under any of ``tags`` as one table; :class:`NoDataError` when none matches."""
        wanted = [tag for tag in dict.fromkeys(tags) if tag]
        if not wanted:
            raise NoDataError("no data tags were given", [])
        invalid = [tag for tag in wanted if not is_valid_tag(tag)]
        if invalid:
            raise DataServerError(f"invalid tags: {', '.join(invalid)}")
        present = [tag for tag, rows in self.list_tags(wanted).items() if rows > 0]
        tables = []
        for tag in present:
            try:
                tables.append(self._flight().do_get(flight.Ticket(tag.encode()), options=self._options()).read_all())
            except (pa.ArrowException, OSError) as error:
                raise self._fail(f"send tag {tag!r}", error) from error
        rows = [table for table in tables if table.num_rows]
        if not rows:
            raise NoDataError(f"no data for tags {', '.join(wanted)} on data server {self.address}", wanted)
        return pa.concat_tables([table.cast(FRAGMENT_SCHEMA) for table in rows])

    def delete_tag(self, tag: str) -> int:
        """Remove every fragment under ``tag``; returns how many were removed (0 if none)."""
        try:
            results = list(
                self._flight().do_action(flight.Action(DELETE_TAG_ACTION, tag.encode()), options=self._options())
            )
        except (pa.ArrowException, OSError) as error:
            raise self._fail(f"delete tag {tag!r}", error) from error
        if not results:
            return 0
        return int(json.loads(results[0].body.to_pybytes()).get("fragments", 0))

    def revoke_project(self, project_id: str, timeout: float = _PING_TIMEOUT_S * 5) -> None:
        """Make the server refuse ``project_id``'s read tokens from now on (needs an admin token)."""
        try:
            list(
                self._flight().do_action(
                    flight.Action(REVOKE_PROJECT_ACTION, project_id.encode()), options=self._options(timeout)
                )
            )
        except (pa.ArrowException, OSError) as error:
            raise self._fail(f"revoke the tokens of project {project_id}", error) from error

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> DataServerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def load_dataset(tags: list[str] | None = None, address: str | None = None) -> pa.Table:
    """This node's fragments for the project's tags, as one table.

    Defaults: ``address`` from ``FLOPS_DATA_SERVER`` (host:port) and ``tags`` from
    ``FLOPS_DATA_TAGS`` (comma-separated); the learner sets both, and the project's read
    token and the data server's CA in ``FLOPS_DATA_TOKEN`` and ``FLOPS_DATA_CA``.
    Raises :class:`NoDataError` when nothing matches.
    """
    address = address or os.environ.get(DATA_SERVER_ENV, "")
    if not address:
        raise DataServerUnavailable(f"no data server: set {DATA_SERVER_ENV} to host:port")
    if tags is None:
        tags = [tag.strip() for tag in os.environ.get(DATA_TAGS_ENV, "").split(",") if tag.strip()]
    token, ca_pem = os.environ.get(DATA_TOKEN_ENV) or None, os.environ.get(DATA_CA_ENV) or None
    with DataServerClient(address, token, ca_pem) as client:
        return client.get(tags)
