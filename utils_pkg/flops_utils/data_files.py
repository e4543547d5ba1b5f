"""Reading a user's data file into the fragment format: CSV, Parquet and NumPy ``.npz``.

- CSV and Parquet: every column but the label column is a feature (numbers only); the
  label column (``label_column``, default ``label``) holds integer class labels. A
  Parquet file that already has the fragment schema (``features: list<float32>``,
  ``label: int64``) is taken as it is.
- ``.npz``: arrays ``x`` (n, d) and ``y`` (n,).

Every problem is a :class:`DataFileError` with one line naming the file and the column.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from flops_utils.data_client import FRAGMENT_SCHEMA, from_numpy, schema_problem
from flops_utils.message_text import one_line

UNNAMED_COLUMN = re.compile(r"^Unnamed: \d+$")  # pandas' name for a nameless column it read
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


class DataFileError(ValueError):
    """The file cannot be turned into fragments; the message is one line."""


def _text_labels(column: pa.ChunkedArray, name: str, source: str) -> str:
    classes = sorted({str(value) for value in column.unique().to_pylist() if value is not None})
    shown = ", ".join(repr(value) for value in classes[:5]) + (", ..." if len(classes) > 5 else "")
    return (
        f"{source}: label column {name!r} holds text ({shown}); labels are integer classes: "
        f"map the {len(classes)} classes to 0..{len(classes) - 1} the same way on every node before pushing"
    )


def _columns_to_fragment(table: pa.Table, label_column: str, source: str) -> pa.Table:
    if label_column not in table.column_names:
        raise DataFileError(
            f"{source} has no label column {label_column!r} (columns: "
            f"{', '.join(table.column_names[:20])}); name it with --label-column"
        )
    features = [name for name in table.column_names if name != label_column]
    unnamed = [name for name in features if not name.strip() or UNNAMED_COLUMN.match(name)]
    if unnamed:
        raise DataFileError(
            f"{source}: a column has no name ({unnamed[0]!r}), most likely a row index pandas wrote; "
            "it would be trained on as a feature: save with to_csv(..., index=False) or drop it"
        )
    if not features:
        raise DataFileError(f"{source} has no feature columns besides {label_column!r}")
    for name in [*features, label_column]:
        column_type = table.schema.field(name).type
        if name == label_column and (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise DataFileError(_text_labels(table.column(name), name, source))
        if not (pa.types.is_integer(column_type) or pa.types.is_floating(column_type)):
            what = "label" if name == label_column else "feature"
            raise DataFileError(f"{source}: {what} column {name!r} holds {column_type}, not numbers")
        if table.column(name).null_count:
            raise DataFileError(f"{source}: column {name!r} has empty values")
    labels = table.column(label_column).to_numpy()
    if not pa.types.is_integer(table.schema.field(label_column).type) and not np.all(np.mod(labels, 1) == 0):
        raise DataFileError(
            f"{source}: label column {label_column!r} holds fractions; labels are integer classes "
            "(FLOps trains classifiers, not regression)"
        )
    x = np.column_stack([table.column(name).to_numpy().astype(np.float32) for name in features])
    return from_numpy(x, labels.astype(np.int64))


def read_data_file(path: Path, label_column: str = "label") -> pa.Table:
    """The file as one fragment table (``features``, ``label``)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataFileError(f"{path}: unknown file type {path.suffix!r}; use .csv, .parquet or .npz")
    try:
        if kind == "npz":
            with np.load(path) as arrays:
                if "x" not in arrays or "y" not in arrays:
                    raise DataFileError(
                        f"{path} must hold arrays 'x' (n, d) and 'y' (n,); it has {', '.join(arrays.files) or 'none'}"
                    )
                return from_numpy(arrays["x"], arrays["y"])
        if kind == "csv":
            from pyarrow import csv

            return _columns_to_fragment(csv.read_csv(path), label_column, str(path))
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if schema_problem(table.schema) is None:
            return table.cast(FRAGMENT_SCHEMA)
        return _columns_to_fragment(table, label_column, str(path))
    except DataFileError:
        raise
    except (OSError, pa.ArrowException, ValueError) as error:
        first = one_line(error, 200)
        raise DataFileError(f"cannot read {path}: {first}") from None
