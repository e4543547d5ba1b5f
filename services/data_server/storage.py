"""Fragments on the node's disk: ``<storage_dir>/ns/<customer-dir>/<tag>/<fragment-id>.parquet``.

Every customer has a namespace of its own (:class:`Namespaces`): customer A's ``digits``
and customer B's ``digits`` are different directories. The first fragment of a tag fixes
its feature width (kept in the Parquet metadata); later uploads must match it.

A fragment is first written to ``<storage_dir>/.incoming/`` and renamed into its tag
directory only when complete, so a crash never leaves half a fragment. Deleting a tag
renames its directory into ``.trash/`` before removing it, so a reader never sees a
partly deleted tag. Both leftovers are cleared at start.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flops_utils.data_client import FRAGMENT_SCHEMA, is_valid_tag, schema_problem

_INCOMING = ".incoming"
_TRASH = ".trash"
_DIMENSION_KEY = b"flops.dimension"
_READ_BATCH_ROWS = 65536


class RejectedUpload(ValueError):
    """An upload that breaks the fragment format or limits; the message is one line for the client."""


@dataclass(frozen=True)
class TagSummary:
    tag: str
    fragments: int
    rows: int
    bytes: int
    width: int | None = None  # features per row, fixed by the tag's first fragment


def describe_shape(width: int) -> str:
    """How a tag's schema reads in messages: ``(n, 30) float32 features, int64 labels``."""
    return f"(n, {width}) float32 features, int64 labels"


def check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise RejectedUpload(f"invalid tag {tag!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return tag


def _batch_dimension(batch: pa.RecordBatch) -> int | None:
    """The common feature-vector length of a batch; rejects nulls and ragged vectors."""
    features, labels = batch.column(0), batch.column(1)
    if features.null_count or labels.null_count or features.flatten().null_count:
        raise RejectedUpload("fragments may not contain nulls")
    if batch.num_rows == 0:
        return None
    lengths = pc.list_value_length(features)
    low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    if low != high:
        raise RejectedUpload(f"feature vectors must all have the same length; got lengths {low} to {high}")
    if low == 0:
        raise RejectedUpload("feature vectors may not be empty")
    return int(low)


class FragmentStore:
    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.root = root
        self.max_upload_bytes = max_upload_bytes
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the storage directory and clear what an earlier crash left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in (_INCOMING, _TRASH):
            shutil.rmtree(self.root / leftover, ignore_errors=True)
            (self.root / leftover).mkdir()

    def _tag_dir(self, tag: str) -> Path:
        return self.root / check_tag(tag)

    def _fragments(self, tag: str) -> list[Path]:
        directory = self._tag_dir(tag)
        with self._lock:
            if not directory.is_dir():
                return []
            return sorted(directory.glob("*.parquet"))

    def _dimension(self, tag: str) -> int | None:
        for path in self._fragments(tag):
            try:
                metadata = pq.read_schema(path).metadata or {}
            except FileNotFoundError:
                continue
            if _DIMENSION_KEY in metadata:
                return int(metadata[_DIMENSION_KEY])
        return None

    def write(self, tag: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> TagSummary:
        """Store one uploaded fragment; raises :class:`RejectedUpload` and keeps nothing on any problem."""
        check_tag(tag)
        problem = schema_problem(schema)
        if problem:
            raise RejectedUpload(f"wrong schema for tag {tag!r}: {problem}")
        fragment_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        incoming = self.root / _INCOMING / f"{tag}-{fragment_id}.parquet"
        rows = received = 0
        dimension: int | None = None
        try:
            collected: list[pa.RecordBatch] = []
            for batch in batches:
                received += batch.nbytes
                if received > self.max_upload_bytes:
                    raise RejectedUpload(f"upload to tag {tag!r} is over the limit of {self.max_upload_bytes} bytes")
                batch = batch.cast(FRAGMENT_SCHEMA)
                found = _batch_dimension(batch)
                if found is not None and dimension is not None and found != dimension:
                    raise RejectedUpload(f"feature vectors must all have the same length; got {dimension} and {found}")
                dimension = dimension or found
                rows += batch.num_rows
                collected.append(batch)
            if rows == 0 or dimension is None:
                raise RejectedUpload(f"upload to tag {tag!r} has no rows")
            existing = self._dimension(tag)
            if existing is not None and existing != dimension:
                raise RejectedUpload(
                    f"tag {tag!r} holds {describe_shape(existing)}; this upload has "
                    f"{describe_shape(dimension)}; delete the tag first or use another tag"
                )
            table = pa.Table.from_batches(collected, schema=FRAGMENT_SCHEMA).cast(FRAGMENT_SCHEMA)
            table = table.replace_schema_metadata({_DIMENSION_KEY: str(dimension).encode()})
            pq.write_table(table, incoming)
            with open(incoming, "rb") as handle:
                os.fsync(handle.fileno())
            with self._lock:
                target = self._tag_dir(tag)
                target.mkdir(exist_ok=True)
                os.replace(incoming, target / f"{fragment_id}.parquet")
        finally:
            incoming.unlink(missing_ok=True)
        return TagSummary(tag, 1, rows, received, dimension)

    def tags(self) -> list[str]:
        with self._lock:
            return sorted(
                p.name
                for p in self.root.iterdir()
                if p.is_dir() and is_valid_tag(p.name) and not p.name.startswith(".")
            )

    def summary(self, tag: str) -> TagSummary:
        fragments = rows = size = 0
        for path in self._fragments(tag):
            try:
                rows += pq.read_metadata(path).num_rows
                size += path.stat().st_size
                fragments += 1
            except FileNotFoundError:
                continue  # deleted while we looked
        return TagSummary(tag, fragments, rows, size, self._dimension(tag) if fragments else None)

    def read(self, tag: str) -> Iterator[pa.RecordBatch]:
        """Every batch of every fragment under ``tag``, oldest fragment first."""
        for path in self._fragments(tag):
            try:
                parquet = pq.ParquetFile(path)
            except FileNotFoundError:
                continue
            with parquet:
                for batch in parquet.iter_batches(batch_size=_READ_BATCH_ROWS):
                    yield pa.RecordBatch.from_arrays(batch.columns, schema=FRAGMENT_SCHEMA)

    def delete(self, tag: str) -> TagSummary:
        summary = self.summary(tag)
        trash = self.root / _TRASH / f"{tag}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            source = self._tag_dir(tag)
            if not source.is_dir():
                return TagSummary(tag, 0, 0, 0)
            trash.parent.mkdir(exist_ok=True)
            os.replace(source, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return summary


_NAMESPACES = "ns"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def namespace_dir(customer: str) -> str:
    """A directory name for ``customer``'s namespace: readable and distinct for distinct names."""
    digest = hashlib.sha256(customer.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('-', customer).strip('-')[:40] or 'x'}-{digest}"


class Namespaces:
    """One :class:`FragmentStore` per customer under ``<root>/ns/``; created on first use."""

    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.root = root
        self.max_upload_bytes = max_upload_bytes
        self._stores: dict[str, FragmentStore] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Clear what an earlier crash left in every existing namespace."""
        (self.root / _NAMESPACES).mkdir(parents=True, exist_ok=True)
        for directory in sorted((self.root / _NAMESPACES).iterdir()):
            if directory.is_dir():
                FragmentStore(directory, self.max_upload_bytes).prepare()

    def of(self, customer: str) -> FragmentStore:
        with self._lock:
            store = self._stores.get(customer)
            if store is None:
                store = FragmentStore(self.root / _NAMESPACES / namespace_dir(customer), self.max_upload_bytes)
                store.prepare()
                self._stores[customer] = store
            return store

    def count(self) -> int:
        directory = self.root / _NAMESPACES
        return sum(1 for path in directory.iterdir() if path.is_dir()) if directory.is_dir() else 0
