"""Reading the ``.npy`` bytes Flower keeps in an ``Array`` without ``np.load``, so without ``ast``.

Flower 1.41 stores an ``Array``'s values as the bytes ``np.save`` wrote: a magic string, a header (a Python
dict literal: ``{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }``), then the raw values.
``np.load`` parses that header with ``ast.literal_eval``, and CPython 3.11 before 3.11.8 (this machine's and
CI's 3.11.7) can fail concurrent ``ast`` calls in one process with "SystemError: AST constructor recursion
depth mismatch" (CPython gh-106905). Every FLOps reader of arrays (the learner's ClientApp, FedAvg, the
SecAgg+ bridge) therefore reads the header here with a strict pattern: faster than ``np.load`` and safe in
any thread. Headers that pattern does not know (structured dtypes) go to ``np.load`` under
``NUMPY_PARSING``, the lock every other in-process ``np.load`` of arrays from several threads takes too.
"""

from __future__ import annotations

import io
import re
import threading

import numpy as np

MAGIC = b"\x93NUMPY"
# numpy's writer (np.lib.format._write_array_header) always emits the keys in this order.
_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[^']+)', 'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<shape>[0-9, ]*)\), \}\s*$"
)
NUMPY_PARSING = threading.RLock()  # np.load (ast.literal_eval) is not thread-safe on CPython < 3.11.8


class NpyFormatError(ValueError):
    """Bytes that are not an ``np.save`` of a plain (non-object) array."""


def read_npy(data: bytes, *, copy: bool = True) -> np.ndarray:
    """The array ``np.save`` wrote into ``data``; ``copy=False`` gives a read-only view of ``data`` itself."""
    start, header = _split_header(data)
    match = _HEADER.match(header)
    if match is None:
        return _load_with_numpy(data)
    dtype = np.dtype(match["descr"])
    if dtype.hasobject:
        raise NpyFormatError("an Array holds Python objects")
    shape = tuple(int(size) for size in match["shape"].replace(" ", "").split(",") if size)
    count = int(np.prod(shape, dtype=np.int64))
    values = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    array = values.reshape(shape, order="F" if match["fortran"] == "True" else "C")
    return array.copy(order="K") if copy else array


def _split_header(data: bytes) -> tuple[int, str]:
    """Where the values start, and the header text."""
    if bytes(data[:6]) != MAGIC:
        raise NpyFormatError("an Array's data is not in .npy format")
    major = data[6]
    if major == 1:
        length, offset = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        length, offset = int.from_bytes(data[8:12], "little"), 12
    else:
        raise NpyFormatError(f"an Array's data has an unknown .npy version {major}")
    text = bytes(data[offset : offset + length]).decode("utf-8" if major == 3 else "latin1")
    return offset + length, text


def _load_with_numpy(data: bytes) -> np.ndarray:
    with NUMPY_PARSING:
        array = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise NpyFormatError("an Array's data is not a single array")
    return array
