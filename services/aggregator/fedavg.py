"""Example-weighted FedAvg that accumulates replies as they arrive, reading Flower Arrays without copies.

Flower 1.41 keeps an ``Array``'s values as the bytes ``np.save`` wrote (``stype == "numpy.ndarray"``):
a ``.npy`` header, then the raw values. ``Array.numpy()`` goes through ``np.load`` and copies them;
here ``npy_bytes`` reads the header and the values are viewed in place with ``np.frombuffer``.

Each reply is added as ``weight * values`` into one accumulator per layer; the sum is divided by the
total weight once, in ``result()``, while casting back to the reference model's dtypes. To spare memory
bandwidth, up to ``batch`` replies are held (as views, nothing copied) and folded in together, one
cache-sized block of the accumulator at a time, so the accumulator travels through memory once per
batch rather than once per reply. ``result()`` folds the rest (fewer than ``batch`` replies), so the new
model is ready a fraction of one pass over the updates after the last reply; an aggregator that calls
``flush()`` whenever no reply is waiting folds replies as they trickle in, so ``result()`` is left with
the division and cast alone (about one update's accumulation: 9 ms for 10M float32 here, against 32 ms
with 3 replies still held). Batches of 4 and 128 KiB
blocks were the fastest of 1/2/4/8 x 32K/128K/512K here (``benchmarks/fedavg_throughput.py --clients 20
--flat 10000000``: 5.2 GB/s, 3.9x Flower's ``aggregate_arrayrecords``, load 2.6 on 2 cores).

Precision, chosen with figures (20 replies of 1M standard-normal float32 values, weights 50..1000,
max error against the exact float128 mean): a float32 sum is off by 2.5e-7 (2.1 ulp of 1.0; Flower's
``aggregate_arrayrecords``, which also sums in float32, 2.5e-7); a float64 sum by 6.9e-8, about the
final rounding to float32 alone (5.7e-8). With 200 replies: float32 1.9e-7, float64 1.9e-8. The float64
sum costs the cast of every value (about 1.5x the time here: 3.5 against 5.1 GB/s under load), so
float16 and float32 layers are summed in float32 (as Flower does, the result within a few ulp of it) and
``float64=True`` gives the correctly rounded mean for whoever needs it. float64 layers are summed in
float64; integer layers (e.g. BatchNorm's ``num_batches_tracked``) in float64 and rounded to the
nearest integer (Flower leaves them float64); complex layers in at least complex64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from services.fl_runtime.npy_bytes import NpyFormatError, read_npy
from services.fl_runtime.protocol import NUMPY_STYPE

BLOCK_BYTES = 128 * 1024  # accumulator block folded at a time: fits in L2 with the reply blocks
DEFAULT_BATCH = 4

Arrays = list[np.ndarray]
Update = ArrayRecord | Sequence[np.ndarray]


class FedAvgError(ValueError):
    """An update that cannot be averaged with the model (shape, count, weight or encoding)."""


def array_view(array: Array) -> np.ndarray:
    """The values of a Flower ``Array`` (``np.save`` bytes) as a read-only view of its ``data``; no copy."""
    if array.stype != NUMPY_STYPE:
        raise FedAvgError(f"cannot average an Array serialized as {array.stype!r} (only {NUMPY_STYPE!r})")
    try:
        return read_npy(array.data, copy=False)
    except NpyFormatError as error:
        raise FedAvgError(str(error)) from error


def arrays_of(update: Update) -> Arrays:
    """An update's layers as arrays; ArrayRecord values are viewed in place, in the record's order."""
    if isinstance(update, ArrayRecord):
        return [array_view(array) for array in update.values()]
    return [np.asarray(layer) for layer in update]


def accumulator_dtype(dtype: np.dtype, float64: bool = False) -> np.dtype:
    """The dtype a layer is summed in: see the module docstring for the choice and its figures.

    Floats at least float32 (float16 and float32 layers in float32, float64 in float64); integers and
    booleans in float64 (exact for counts up to 2**53); complex at least complex64. ``float64`` forces
    float64/complex128 for every layer.
    """
    if dtype.kind == "c":
        return np.dtype(np.complex128) if float64 else np.promote_types(dtype, np.complex64)
    if dtype.kind == "f" and not float64:
        return np.promote_types(dtype, np.float32)
    return np.dtype(np.float64)


@dataclass
class _Pending:
    layers: Arrays
    weight: float


class StreamingFedAvg:
    """Example-weighted mean of updates added one at a time: ``add`` each reply, then ``result()``.

    ``reference`` is the model the round started from: it fixes the layers' count, shapes and the
    dtypes of the result (and, for an ArrayRecord, the arrays' names and order). Its values are not
    used. Updates may come in other dtypes (cast while folding).
    Zero weights are accepted (the update counts for nothing); negative or non-finite ones are refused.
    """

    def __init__(self, reference: Update, batch: int = DEFAULT_BATCH, float64: bool = False) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        layers = arrays_of(reference)
        self._keys = list(reference.keys()) if isinstance(reference, ArrayRecord) else None
        self._shapes = [layer.shape for layer in layers]
        self._dtypes = [layer.dtype for layer in layers]
        self._batch = batch
        self._float64 = float64
        self._sums: Arrays | None = None  # allocated on the first fold: the constructor does no large work
        self._pending: list[_Pending] = []
        self._total = 0.0
        self._count = 0

    @property
    def total_weight(self) -> float:
        return self._total

    @property
    def updates(self) -> int:
        """Updates added (zero weights included)."""
        return self._count

    def add(self, update: Update, weight: float) -> None:
        """Add one reply's layers with its weight (its example count); folded in once ``batch`` are held."""
        weight = float(weight)
        if not np.isfinite(weight) or weight < 0:
            raise FedAvgError(f"weight must be a finite number >= 0, got {weight}")
        if self._keys is not None and isinstance(update, ArrayRecord) and list(update.keys()) != self._keys:
            raise FedAvgError(f"update's arrays are {list(update.keys())[:5]}, the model's {self._keys[:5]}")
        layers = arrays_of(update)
        self._check(layers)
        self._count += 1
        if weight == 0.0:
            return
        self._total += weight
        self._pending.append(_Pending(layers, weight))
        if len(self._pending) >= self._batch:
            self._fold()

    def flush(self) -> None:
        """Fold the held replies now: call it while waiting for more, so ``result()`` has only the division left."""
        self._fold()

    def result(self) -> Arrays:
        """The weighted mean, one array per layer in the reference's dtypes (integers rounded)."""
        self._fold()
        if self._sums is None or self._total == 0.0:
            raise FedAvgError("nothing to average: no update with a weight above zero")
        results: Arrays = []
        for total, dtype in zip(self._sums, self._dtypes, strict=True):
            if dtype.kind in "iub":
                mean = np.rint(total / self._total)
                results.append(mean.astype(dtype))
            else:
                out = np.empty(total.shape, dtype=dtype)
                np.divide(total, self._total, out=out, casting="unsafe")
                results.append(out)
        return results

    def _check(self, layers: Arrays) -> None:
        if len(layers) != len(self._shapes):
            raise FedAvgError(f"update has {len(layers)} arrays, the model {len(self._shapes)}")
        for index, (layer, shape) in enumerate(zip(layers, self._shapes, strict=True)):
            if layer.shape != shape:
                raise FedAvgError(f"array {index} has shape {layer.shape}, the model {shape}")
            if layer.dtype.hasobject or layer.dtype.kind not in "biufc":
                raise FedAvgError(f"array {index} has the non-numeric dtype {layer.dtype}")

    def _fold(self) -> None:
        """Add the held updates into the sums, block by block, so each sums block is loaded once."""
        if not self._pending:
            return
        if self._sums is None:
            self._sums = [
                np.zeros(shape, dtype=accumulator_dtype(dtype, self._float64))
                for shape, dtype in zip(self._shapes, self._dtypes, strict=True)
            ]
        pending, self._pending = self._pending, []
        weights = [item.weight for item in pending]
        for index, total in enumerate(self._sums):
            _fold_layer(total, [item.layers[index] for item in pending], weights)


def _fold_layer(total: np.ndarray, layers: list[np.ndarray], weights: list[float]) -> None:
    flat_total = total.reshape(-1)  # the sums are C-contiguous: a view
    flats = [layer.reshape(-1, order="C") for layer in layers]  # a view unless a layer is Fortran-ordered
    block = max(1, BLOCK_BYTES // total.itemsize)
    scratch = np.empty(min(block, flat_total.size), dtype=total.dtype)
    for start in range(0, flat_total.size, block):
        end = min(start + block, flat_total.size)
        target, work = flat_total[start:end], scratch[: end - start]
        for flat, weight in zip(flats, weights, strict=True):
            np.multiply(flat[start:end], weight, out=work, casting="unsafe")
            np.add(target, work, out=target)


def fedavg(updates: Iterable[tuple[Update, float]], reference: Update, float64: bool = False) -> Arrays:
    """The example-weighted mean of ``(update, weight)`` pairs in ``reference``'s dtypes, in one call."""
    accumulator = StreamingFedAvg(reference, float64=float64)
    for update, weight in updates:
        accumulator.add(update, weight)
    return accumulator.result()
