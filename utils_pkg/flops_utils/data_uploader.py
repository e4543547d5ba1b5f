"""Device-side upload to a node's data server, with a write token from the manager.

A device (or a gateway next to it) gets three things once, from ``flops data token``
or ``POST /api/flops/data-tokens``: the data server's address, a write token for its
customer and node, and the CA that signed the data server's certificate. Then::

    from flops_utils.data_uploader import DataUploader

    uploader = DataUploader("10.0.0.7:9400", token, ca_pem)
    uploader.push("vibration", x, y)   # x: (n, d) numbers, y: (n,) integer labels

Each push is one fragment: all of it is stored or, when refused (wrong width for the
tag, too large, bad token), none of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from numpy.typing import ArrayLike

from flops_utils.data_client import DataServerClient, TagShape, from_numpy
from flops_utils.data_files import read_data_file

Progress = Callable[[int, int], None]  # rows sent, rows in all


class DataUploader:
    def __init__(self, address: str, token: str | None, ca_pem: str | None = None) -> None:
        self.client = DataServerClient(address, token, ca_pem)

    def push(self, tag: str, x: ArrayLike, y: ArrayLike, progress: Progress | None = None) -> int:
        """Store features ``x`` and labels ``y`` under ``tag``; returns the rows stored."""
        return self.push_table(tag, from_numpy(x, y), progress)

    def push_table(self, tag: str, table: pa.Table, progress: Progress | None = None) -> int:
        return self.client.put(tag, table, progress=progress)

    def push_file(self, tag: str, path: Path, label_column: str = "label", progress: Progress | None = None) -> int:
        """A CSV, Parquet or ``.npz`` file (see :mod:`flops_utils.data_files`)."""
        return self.push_table(tag, read_data_file(path, label_column), progress)

    def tags(self) -> dict[str, TagShape]:
        """This customer's tags on the node: rows and feature width."""
        return self.client.list_shapes()

    def delete(self, tag: str) -> int:
        """Remove the tag (this customer's only); returns the fragments removed."""
        return self.client.delete_tag(tag)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DataUploader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
