"""Example-weighted FedAvg throughput: FLOps's round aggregation against Flower's own, same arrays.

In process, no services. For each model size, every client's parameters are random
float32 arrays and its weight a random example count. Contenders:

- ``flops``: ``services.aggregator.fedavg.StreamingFedAvg`` fed the learners' reply Messages
  one by one (each reply's ArrayRecord viewed in place, weighted by its example count), then
  ``result()`` in the model's dtypes: what the aggregator does as replies arrive;
- ``flwr-fedavg``: Flower's Message-API strategy ``FedAvg.aggregate_train`` (reply checks,
  ArrayRecord and MetricRecord averaging), then the result decoded and cast back to the
  model's dtypes (``protocol.from_arrays`` + ``protocol.like``): FLOps's aggregation before
  ``StreamingFedAvg``;
- ``flwr-arrayrecords``: the bare Message-API averaging, ``aggregate_arrayrecords`` on the
  replies' RecordDicts (no checks, no metrics, result left as an ArrayRecord);
- ``flwr-inplace``: legacy ``aggregate_inplace`` on ``FitRes`` (decodes ``Parameters`` bytes;
  the legacy FedAvg's default);
- ``flwr-aggregate+decode``: the legacy FedAvg with ``inplace=False``: ``parameters_to_ndarrays``
  per client, then ``flwr.server.strategy.aggregate.aggregate``;
- ``flwr-aggregate``: ``aggregate`` alone on already decoded NDArrays;
- ``numpy``: a weighted sum into one accumulator per layer on decoded arrays (a floor).

MB/s counts the client parameters read: clients x model bytes / time (MB = 10^6 bytes).
The contenders are called in turn; "best" (the fastest call) is the steadiest figure on a
shared machine, the median shows what load does to it.

    .venv/bin/python benchmarks/fedavg_throughput.py [--clients 10] [--min-seconds 2]
    .venv/bin/python benchmarks/fedavg_throughput.py --clients 20 --flat 10000000

``--flat N`` replaces the models by one flat float32 array of N values per client (model key
``flat-N``); ``--contenders`` picks some (``flops`` is always timed: the ratios are against it).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server.strategy.aggregate import aggregate, aggregate_inplace  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords  # noqa: E402

from benchmarks.common import print_json, print_table  # noqa: E402
from services.aggregator.fedavg import StreamingFedAvg  # noqa: E402
from services.fl_runtime import protocol as p  # noqa: E402

MODELS: dict[str, list[tuple[int, ...]]] = {
    # the sklearn example: LogisticRegression on 8x8 digits (coef_, intercept_), 650 parameters
    "digits-logreg": [(10, 64), (10,)],
    # an MLP 784-1024-192-10: 1,002,570 parameters (4.0 MB in float32)
    "mlp-1M": [(784, 1024), (1024,), (1024, 192), (192,), (192, 10), (10,)],
}
Arrays = list[np.ndarray]
Result = Arrays | ArrayRecord  # the bare Message-API average stays an ArrayRecord


@dataclass
class Inputs:
    reference: Arrays  # the global model the round started from (dtypes to keep)
    clients: list[Arrays]
    examples: list[int]
    replies: list[Message]  # as the ServerApp receives them from learners
    fit_results: list[tuple[Any, FitRes]]  # as a legacy strategy receives them

    @property
    def bytes_read(self) -> int:
        return sum(array.nbytes for arrays in self.clients for array in arrays)


def reply(arrays: Arrays, examples: int, node: int) -> Message:
    """A learner's train reply with the records services.learner.client_app puts in it."""
    metrics = MetricRecord(
        {p.NUM_EXAMPLES: examples, p.LOSS: 0.5, p.ACCURACY: 0.9, p.EVAL_EXAMPLES: 100, p.FIT_SECONDS: 0.01}
    )
    info = ConfigRecord({p.NODE: f"node-{node}", p.CLUSTER: ""})
    content = RecordDict({p.ARRAYS: p.to_arrays(arrays), p.METRICS: metrics, p.INFO: info})
    # The metadata a reply has after the SuperLink delivered it (set directly: no Flower run here).
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"train-{node}",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return Message(content=content, metadata=metadata)  # type: ignore[call-overload]  # how Flower rebuilds replies


LEGACY = {"flwr-inplace", "flwr-aggregate+decode"}  # contenders that need FitRes (another copy of the updates)


def make_inputs(shapes: list[tuple[int, ...]], clients: int, rng: np.random.Generator, legacy: bool = True) -> Inputs:
    reference = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
    arrays = [[rng.standard_normal(shape, dtype=np.float32) for shape in shapes] for _ in range(clients)]
    examples = [int(n) for n in rng.integers(50, 1000, size=clients)]
    ok = Status(code=Code.OK, message="")
    pairs = list(zip(arrays, examples, strict=True))
    return Inputs(
        reference=reference,
        clients=arrays,
        examples=examples,
        replies=[reply(a, n, node) for node, (a, n) in enumerate(pairs, start=1)],
        fit_results=[(None, FitRes(ok, ndarrays_to_parameters(a), n, {})) for a, n in pairs] if legacy else [],
    )


def flops_streaming(inputs: Inputs) -> Arrays:
    """Each reply folded in as it would arrive; the model is read back in the reference's dtypes."""
    accumulator = StreamingFedAvg(inputs.reference)
    for message in inputs.replies:
        metrics = cast(MetricRecord, message.content[p.METRICS])
        accumulator.add(cast(ArrayRecord, message.content[p.ARRAYS]), float(cast(int, metrics[p.NUM_EXAMPLES])))
    return accumulator.result()


def flwr_fedavg(inputs: Inputs) -> Arrays:
    strategy = FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    aggregated, _ = strategy.aggregate_train(1, inputs.replies)
    assert aggregated is not None
    return p.like(p.from_arrays(aggregated), inputs.reference)


def flwr_arrayrecords(inputs: Inputs) -> ArrayRecord:
    return aggregate_arrayrecords([message.content for message in inputs.replies], p.NUM_EXAMPLES)


def flwr_aggregate_decoding(inputs: Inputs) -> Arrays:
    """The legacy FedAvg with ``inplace=False``: decode every client's Parameters, then average."""
    return aggregate([(parameters_to_ndarrays(fit.parameters), fit.num_examples) for _, fit in inputs.fit_results])


def flwr_aggregate(inputs: Inputs) -> Arrays:
    return aggregate(list(zip(inputs.clients, inputs.examples, strict=True)))


def flwr_inplace(inputs: Inputs) -> Arrays:
    return aggregate_inplace(inputs.fit_results)


def numpy_floor(inputs: Inputs) -> Arrays:
    total = float(sum(inputs.examples))
    result = [layer * np.float32(inputs.examples[0] / total) for layer in inputs.clients[0]]
    for arrays, examples in zip(inputs.clients[1:], inputs.examples[1:], strict=True):
        factor = np.float32(examples / total)
        for accumulator, layer in zip(result, arrays, strict=True):
            accumulator += layer * factor
    return result


CONTENDERS: dict[str, Callable[[Inputs], Result]] = {
    "flops": flops_streaming,
    "flwr-fedavg": flwr_fedavg,
    "flwr-arrayrecords": flwr_arrayrecords,
    "flwr-inplace": flwr_inplace,
    "flwr-aggregate+decode": flwr_aggregate_decoding,
    "flwr-aggregate": flwr_aggregate,
    "numpy": numpy_floor,
}


def expected(inputs: Inputs) -> Arrays:
    weights = np.asarray(inputs.examples, dtype=np.float64) / sum(inputs.examples)
    means = [np.zeros(layer.shape, dtype=np.float64) for layer in inputs.reference]
    for weight, client in zip(weights, inputs.clients, strict=True):
        for mean, layer in zip(means, client, strict=True):
            mean += weight * layer
    return means


def check(name: str, result: Result, wanted: Arrays) -> None:
    """Every contender must compute the same example-weighted mean (float32 tolerance)."""
    arrays = p.from_arrays(result) if isinstance(result, ArrayRecord) else result
    for got, want in zip(arrays, wanted, strict=True):
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"{name} computed a different average")


def timed_in_turn(
    inputs: Inputs, contenders: dict[str, Callable[[Inputs], Result]], min_seconds: float, min_runs: int
) -> dict[str, list[float]]:
    """Seconds per call of every contender, calling them in turn so load swings hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for function in contenders.values():
        function(inputs)  # warm-up
    started = time.perf_counter()
    budget = min_seconds * len(contenders)
    while len(times["flops"]) < min_runs or time.perf_counter() - started < budget:
        for name, function in contenders.items():
            begin = time.perf_counter()
            function(inputs)
            times[name].append(time.perf_counter() - begin)
    return times


def figures_for(times: list[float], bytes_read: int) -> dict[str, float]:
    best, median = min(times), statistics.median(times)
    return {
        "ms_min": round(best * 1000, 4),
        "ms_median": round(median * 1000, 4),
        "mb_per_s_best": round(bytes_read / best / 1e6, 1),
        "mb_per_s_median": round(bytes_read / median / 1e6, 1),
        "runs": len(times),
    }


def benchmark_model(
    model: str, inputs: Inputs, contenders: dict[str, Callable[[Inputs], Result]], min_seconds: float, min_runs: int
) -> dict[str, Any]:
    """Check every contender's result, time them, print the model's table; its figures."""
    wanted = expected(inputs)
    for name, function in contenders.items():
        check(name, function(inputs), wanted)
    del wanted
    timings = {
        name: figures_for(times, inputs.bytes_read)
        for name, times in timed_in_turn(inputs, contenders, min_seconds, min_runs).items()
    }
    flops_best = timings["flops"]["ms_min"]
    rows = [
        [
            name,
            f["ms_min"],
            f["ms_median"],
            f["mb_per_s_best"],
            f["mb_per_s_median"],
            int(f["runs"]),
            f"{flops_best / f['ms_min']:.2f}x",
        ]
        for name, f in timings.items()
    ]
    parameters = sum(array.size for array in inputs.reference)
    clients = len(inputs.clients)
    title = (
        f"FedAvg, {model}: {parameters:,} float32 parameters x {clients} clients "
        f"({inputs.bytes_read / 1e6:.2f} MB read per aggregation)"
    )
    headers = ["contender", "ms best", "ms median", "MB/s best", "MB/s median", "runs", "flops best / this best"]
    print_table(headers, rows, title)
    ratios = {
        f"flops_over_{name}": round(f["ms_min"] / flops_best, 2) for name, f in timings.items() if name != "flops"
    }
    if "flwr-arrayrecords" in timings:
        print(f"flops / flwr-arrayrecords (MB/s best): {ratios['flops_over_flwr-arrayrecords']:.2f}x")
    return {"parameters": parameters, "bytes_read": inputs.bytes_read, **timings, "ratios_best": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timing budget per contender and model")
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat", type=int, metavar="N", help="one flat float32 array of N values per client instead")
    parser.add_argument("--contenders", nargs="+", choices=sorted(CONTENDERS), help="time only these (and flops)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)  # aggregate_train logs every call at INFO
    if args.flat is not None and args.flat < 1:
        parser.error("--flat must be at least 1")
    models: dict[str, list[tuple[int, ...]]] = (
        {f"flat-{args.flat}": [(args.flat,)]} if args.flat else {name: MODELS[name] for name in args.models}
    )
    chosen = {"flops", *(args.contenders or CONTENDERS)}
    contenders = {name: function for name, function in CONTENDERS.items() if name in chosen}

    rng = np.random.default_rng(args.seed)
    figures = {}
    for model, shapes in models.items():
        inputs = make_inputs(shapes, args.clients, rng, legacy=bool(chosen & LEGACY))
        figures[model] = benchmark_model(model, inputs, contenders, args.min_seconds, args.min_runs)
        del inputs
    print_json("fedavg_throughput", {"clients": args.clients, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
