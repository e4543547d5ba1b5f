"""The streaming FedAvg computes what Flower's FedAvg computes, on the same ArrayRecords.

Tolerances: float32 layers within 1e-6 absolute (both sum in float32: measured differences are ~2 ulp
of 1.0 for standard-normal values), float64 layers within 1e-12, float16 layers within float16's
rounding of the result (Flower sums float16 in float16, we in float32), integer layers equal to
Flower's float64 mean rounded to the nearest integer.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from services.aggregator.fedavg import FedAvgError, StreamingFedAvg, array_view, fedavg

WEIGHT = "num-examples"


def flower_mean(records: list[ArrayRecord], weights: list[float]) -> list[np.ndarray]:
    contents = [
        RecordDict({"arrays": r, "metrics": MetricRecord({WEIGHT: w})}) for r, w in zip(records, weights, strict=True)
    ]
    return [array.numpy() for array in aggregate_arrayrecords(contents, WEIGHT).values()]


def streamed(
    reference: ArrayRecord, records: list[ArrayRecord], weights: list[float], batch: int = 4, float64: bool = False
) -> list[np.ndarray]:
    accumulator = StreamingFedAvg(reference, batch=batch, float64=float64)
    for record, weight in zip(records, weights, strict=True):
        accumulator.add(record, weight)
    return accumulator.result()


def float_records(rng: np.random.Generator, clients: int, shapes: list[tuple[int, ...]]) -> list[ArrayRecord]:
    return [ArrayRecord([rng.standard_normal(s, dtype=np.float32) for s in shapes]) for _ in range(clients)]


def test_float32_model_equals_flowers_aggregate_arrayrecords_for_any_batch() -> None:
    rng = np.random.default_rng(0)
    shapes = [(10, 64), (10,), (300_001,)]
    records = float_records(rng, 7, shapes)
    weights = [float(w) for w in rng.integers(1, 1000, 7)]
    want = flower_mean(records, weights)
    for batch in (1, 3, 7, 20):
        got = streamed(records[0], records, weights, batch=batch)
        assert [a.dtype for a in got] == [np.float32] * 3
        assert [a.shape for a in got] == shapes
        for g, w in zip(got, want, strict=True):
            assert np.max(np.abs(g - w)) < 1e-6


def test_equals_flowers_fedavg_aggregate_train_on_reply_messages() -> None:
    rng = np.random.default_rng(1)
    records = float_records(rng, 4, [(5, 3), (3,)])
    weights = [10, 0, 250, 40]
    replies = []
    for node, (record, weight) in enumerate(zip(records, weights, strict=True), start=1):
        content = RecordDict({"arrays": record, "metrics": MetricRecord({WEIGHT: weight}), "info": ConfigRecord({})})
        metadata = Metadata(
            run_id=1,
            message_id=f"reply-{node}",
            src_node_id=node,
            dst_node_id=0,
            reply_to_message_id=f"train-{node}",
            group_id="1",
            created_at=time.time(),
            ttl=60.0,
            message_type=MessageType.TRAIN,
        )
        replies.append(Message(content=content, metadata=metadata))  # type: ignore[call-overload]
    aggregated, _ = FedAvg(weighted_by_key=WEIGHT).aggregate_train(1, replies)
    assert aggregated is not None
    want = [array.numpy() for array in aggregated.values()]
    got = fedavg(zip(records, weights, strict=True), records[0])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32
        assert np.max(np.abs(g - w)) < 1e-6


def test_flush_folds_held_replies_without_changing_the_result() -> None:
    rng = np.random.default_rng(5)
    records = float_records(rng, 5, [(1000,)])
    weights = [3.0, 1.0, 4.0, 1.0, 5.0]
    flushed = StreamingFedAvg(records[0], batch=4)
    for record, weight in zip(records, weights, strict=True):
        flushed.add(record, weight)
        flushed.flush()
    assert np.max(np.abs(flushed.result()[0] - flower_mean(records, weights)[0])) < 1e-6


def test_mixed_dtypes_are_averaged_and_returned_in_the_reference_dtypes() -> None:
    rng = np.random.default_rng(2)
    clients = 5

    def record() -> ArrayRecord:
        return ArrayRecord(
            {
                "weight": Array(rng.standard_normal((20, 30), dtype=np.float32)),
                "precise": Array(rng.standard_normal(50)),
                "half": Array(rng.standard_normal(40).astype(np.float16)),
                "batches_tracked": Array(rng.integers(0, 10_000, (), dtype=np.int64)),
                "fortran": Array(np.asfortranarray(rng.standard_normal((6, 4), dtype=np.float32))),
            }
        )

    records = [record() for _ in range(clients)]
    weights = [100.0, 3.0, 0.0, 57.5, 900.0]
    got = dict(zip(records[0].keys(), streamed(records[0], records, weights), strict=True))
    want = dict(zip(records[0].keys(), flower_mean(records, weights), strict=True))
    assert {k: str(v.dtype) for k, v in got.items()} == {
        "weight": "float32",
        "precise": "float64",
        "half": "float16",
        "batches_tracked": "int64",
        "fortran": "float32",
    }
    assert np.max(np.abs(got["weight"] - want["weight"])) < 1e-6
    assert np.max(np.abs(got["fortran"] - want["fortran"])) < 1e-6
    assert np.max(np.abs(got["precise"] - want["precise"])) < 1e-12
    assert np.allclose(got["half"], want["half"], rtol=2e-3, atol=2e-3)
    assert want["batches_tracked"].dtype == np.float64  # Flower leaves integer means as floats
    assert got["batches_tracked"] == np.rint(want["batches_tracked"])


def test_zero_weight_updates_count_for_nothing() -> None:
    rng = np.random.default_rng(3)
    records = float_records(rng, 3, [(1000,)])
    huge = ArrayRecord([np.full(1000, 1e30, dtype=np.float32)])
    with_zero = streamed(records[0], [records[0], huge, records[1], records[2]], [5.0, 0.0, 7.0, 1.0])
    flower = flower_mean([records[0], huge, records[1], records[2]], [5.0, 0.0, 7.0, 1.0])
    without = streamed(records[0], records, [5.0, 7.0, 1.0])
    assert np.array_equal(with_zero[0], without[0])
    assert np.max(np.abs(with_zero[0] - flower[0])) < 1e-6
    accumulator = StreamingFedAvg(records[0])
    accumulator.add(records[0], 0)
    assert accumulator.updates == 1 and accumulator.total_weight == 0.0
    with pytest.raises(FedAvgError, match="no update with a weight above zero"):
        accumulator.result()


def test_float64_option_is_closer_to_the_exact_mean() -> None:
    rng = np.random.default_rng(4)
    records = float_records(rng, 20, [(200_000,)])
    weights = [float(w) for w in rng.integers(50, 1000, 20)]
    exact = np.zeros(200_000, dtype=np.longdouble)
    for record, weight in zip(records, weights, strict=True):
        exact += np.longdouble(weight) * record["0"].numpy().astype(np.longdouble)
    exact /= np.longdouble(sum(weights))
    single = streamed(records[0], records, weights)[0]
    double = streamed(records[0], records, weights, float64=True)[0]
    error_single = float(np.max(np.abs(single - exact)))
    error_double = float(np.max(np.abs(double - exact)))
    assert double.dtype == np.float32
    assert error_double <= float(np.max(np.abs(exact.astype(np.float32) - exact))) * 1.5  # the final rounding
    assert error_double < error_single < 5e-7


def test_array_values_are_viewed_in_place_not_copied() -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    array = Array(values)
    view = array_view(array)
    assert np.array_equal(view, values)
    assert np.shares_memory(view, np.frombuffer(array.data, dtype=np.uint8))
    assert not view.flags.writeable


def test_lists_of_ndarrays_are_accepted_like_records() -> None:
    a, b = [np.ones((2, 2), np.float32)], [np.full((2, 2), 4.0, np.float32)]
    assert np.array_equal(fedavg([(a, 1), (b, 2)], a)[0], np.full((2, 2), 3.0, np.float32))


@pytest.mark.parametrize(
    ("update", "weight", "error"),
    [
        ([np.ones((2, 3), np.float32)], 1.0, r"array 0 has shape \(2, 3\), the model \(2, 2\)"),
        ([np.ones((2, 2), np.float32)] * 2, 1.0, "update has 2 arrays, the model 1"),
        ([np.ones((2, 2), np.float32)], -1.0, "weight must be a finite number >= 0, got -1.0"),
        ([np.ones((2, 2), np.float32)], float("nan"), "weight must be a finite number >= 0, got nan"),
        ([np.array([["a", "b"], ["c", "d"]])], 1.0, "array 0 has the non-numeric dtype <U1"),
        (
            ArrayRecord({"x": Array(dtype="float32", shape=(2, 2), stype="torch.raw", data=b"")}),
            1.0,
            "cannot average an Array serialized as 'torch.raw'",
        ),
    ],
)
def test_bad_updates_are_refused_with_a_reason(update: object, weight: float, error: str) -> None:
    accumulator = StreamingFedAvg([np.zeros((2, 2), np.float32)])
    with pytest.raises(FedAvgError, match=error):
        accumulator.add(update, weight)  # type: ignore[arg-type]
    assert accumulator.updates == 0


def test_records_with_other_array_names_are_refused() -> None:
    model = ArrayRecord({"weight": Array(np.zeros(3, np.float32)), "bias": Array(np.zeros(1, np.float32))})
    swapped = ArrayRecord({"bias": Array(np.ones(1, np.float32)), "weight": Array(np.ones(3, np.float32))})
    accumulator = StreamingFedAvg(model)
    with pytest.raises(
        FedAvgError, match=r"update's arrays are \['bias', 'weight'\], the model's \['weight', 'bias'\]"
    ):
        accumulator.add(swapped, 1.0)
