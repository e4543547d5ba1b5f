"""The ast-free reader of Flower's ``.npy`` array bytes gives what ``np.load`` gives, for every layout a model
can have, refuses what is not an array, and is what the ClientApp, FedAvg and SecAgg+ read arrays with."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from flwr.app import Array

from services.aggregator.fedavg import FedAvgError, array_view
from services.fl_runtime import protocol as p
from services.fl_runtime.npy_bytes import NpyFormatError, read_npy

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.array(3.5),
    np.zeros((0, 5), dtype=np.int64),
    np.array([True, False]),
    np.arange(24, dtype=">i4").reshape(2, 3, 4),
    np.array([1 + 2j], dtype=np.complex64),
    np.array(["ab", "c"]),
    np.zeros((2, 1, 1, 3), dtype=np.float16),
]


def saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_read_npy_gives_what_np_load_gives(array: np.ndarray) -> None:
    data = saved(array)
    expected = np.load(io.BytesIO(data), allow_pickle=False)
    copied, viewed = read_npy(data), read_npy(data, copy=False)
    for read in (copied, viewed):
        assert read.dtype == expected.dtype and read.shape == expected.shape
        np.testing.assert_array_equal(read, expected)
    assert copied.flags.writeable and not viewed.flags.writeable
    assert copied.flags.f_contiguous == expected.flags.f_contiguous


def test_a_structured_array_falls_back_to_numpy() -> None:
    array = np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2")])
    np.testing.assert_array_equal(read_npy(saved(array)), array)


def test_what_is_not_a_plain_array_is_refused_with_a_reason() -> None:
    with pytest.raises(NpyFormatError, match="not in .npy format"):
        read_npy(b"garbage-bytes")
    header = saved(np.zeros(2))
    with pytest.raises(NpyFormatError, match="unknown .npy version 9"):
        read_npy(header[:6] + b"\x09" + header[7:])
    with pytest.raises(FedAvgError, match="not in .npy format"):
        array_view(Array(dtype="float32", shape=(2,), stype=p.NUMPY_STYPE, data=b"garbage-bytes"))


def test_the_protocol_reads_records_from_many_threads_at_once() -> None:
    record = p.to_arrays(ARRAYS[:4])
    failures: list[BaseException] = []

    def read_many() -> None:
        try:
            for _ in range(300):
                for read, original in zip(p.from_arrays(record), ARRAYS[:4], strict=True):
                    np.testing.assert_array_equal(read, original)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=read_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
