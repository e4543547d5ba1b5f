"""Per-round control overhead: round wall time minus the slowest fit; FLOps beside two Flower anchors.

One invocation runs the same model and data (LogisticRegression on sklearn's digits, the
sklearn example's ModelManager, 2 learners, N rounds) on three runtimes, one after the other:

- ``flops``: the real stack (suite + flops-manager, local orchestrator; ``benchmarks.common``);
- ``legacy``: Flower's deprecated gRPC streaming (``flwr.compat`` ``start_server``/``start_client``,
  local processes; an anchor only, see ``benchmarks/flower_anchors.py``);
- ``deployment``: Flower's deployment engine with its defaults (``flower-superlink``, two
  ``flower-supernode``, ``flwr run``).

It prints each runtime's rounds, the medians of rounds 2 on (round 1 pays first connections and
loads) and FLOps's median overhead over each anchor's, and ends with one JSON line.

FLOps: runs the classic scikit-learn example for N rounds. The round wall time is
``TrainingProgress.round_seconds`` (heard on the broker: the aggregator's time from
sending the round's ``train`` messages until the new global model is aggregated).
The slowest fit is the aggregator's per-round MLflow metric ``slowest_fit_seconds``,
the largest ``fit-seconds`` a learner reported for its ``fit_model`` call. What is
left is FLOps + Flower: message delivery, (de)serialisation, the learners' local
evaluation, reply polling and FedAvg. Round 1 also pays the ClientApps' first
data load, so the figures are given with and without it.

    .venv/bin/python benchmarks/round_overhead.py [--rounds 10] [--learners 2] [--runtimes flops legacy deployment]
    .venv/bin/python benchmarks/round_overhead.py --parameters 1000000   # the model padded to 1M parameters

``--parameters N`` pads the example's model with float32 values riding along (the same padded
``ModelManager`` in FLOps's copy of the repo and in the anchors) to see what moving a bigger model costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    Bench,
    BenchmarkError,
    classic_sklearn_sla,
    describe,
    note,
    print_json,
    print_table,
    running_stack,
)
from benchmarks.flower_anchors import padded_example, run_deployment, run_legacy  # noqa: E402
from flops_utils.mqtt_catalogue import TrainingProgress  # noqa: E402

TAG = "bench-rounds"
FIT_METRIC = "slowest_fit_seconds"


RUNTIMES = ("flops", "legacy", "deployment")


def slowest_fits(bench: Bench, tracking_url: str, run_id: str) -> dict[int, float]:
    """Round -> the slowest learner's fit seconds, from the aggregator's MLflow run.

    The tracking server speaks HTTPS with a certificate from the manager's CA and lets in API
    tokens only: the stack's client is given both (a bare MlflowClient fails certificate checks).
    """
    history = bench.stack.mlflow_client(tracking_url).get_metric_history(run_id, FIT_METRIC)
    return {int(metric.step): float(metric.value) for metric in history}


def measure(bench: Bench, rounds: int, learners: int, timeout: float, parameters: int = 0) -> list[dict[str, Any]]:
    request = classic_sklearn_sla(TAG, rounds, learners)
    if parameters:
        repo = padded_example(parameters, Path(tempfile.mkdtemp(prefix="flops-bench-repo-", dir=bench.work_dir)))
        request["ml_repo_url"] = str(repo)
    note(f"submitting the sklearn example for {rounds} rounds with {learners} learners ...")
    project_id = bench.stack.submit(request)
    bench.await_message(project_id, TrainingProgress, timeout, lambda m: m.cluster is None and m.round == rounds)
    project = bench.complete(project_id)
    note(f"project {project['status']}; reading the learners' fit times from MLflow")
    walls = {
        heard.message.round: heard.message.round_seconds
        for heard in bench.recorder.all_of(project_id, TrainingProgress)
        if heard.message.cluster is None
    }
    fits = slowest_fits(bench, str(project["tracking_url"]), str(project["mlflow_run_id"]))
    if sorted(walls) != list(range(1, rounds + 1)) or sorted(fits) != sorted(walls):
        raise BenchmarkError(f"rounds heard {sorted(walls)}, fit times logged for {sorted(fits)}")
    return with_overhead([{"round": rnd, "wall_s": walls[rnd], "slowest_fit_s": fits[rnd]} for rnd in sorted(walls)])


def with_overhead(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def one(r: dict[str, Any]) -> dict[str, Any]:
        wall, fit = float(r["wall_s"]), float(r["slowest_fit_s"])
        return {
            "round": int(r["round"]),
            "wall_s": round(wall, 4),
            "slowest_fit_s": round(fit, 4),
            "overhead_s": round(wall - fit, 4),
        }

    return [one(r) for r in rounds]


def run_flops(
    rounds: int, learners: int, timeout: float, work_dir: Path | None, parameters: int = 0
) -> list[dict[str, Any]]:
    with running_stack(work_dir) as bench:
        bench.push_digits(TAG, learners)
        note(f"mock data pushed to {learners} learner nodes")
        return measure(bench, rounds, learners, timeout, parameters)


def run_anchor(runtime: str, rounds: int, learners: int, timeout: float, parameters: int = 0) -> list[dict[str, Any]]:
    note(f"running the {runtime} Flower anchor for {rounds} rounds with {learners} learners ...")
    runner = run_legacy if runtime == "legacy" else run_deployment
    with tempfile.TemporaryDirectory(prefix=f"flops-bench-{runtime}-") as work:
        try:
            return with_overhead(runner(rounds, learners, Path(work), timeout, parameters))
        except RuntimeError as error:
            logs = {p.name: p.read_text(errors="replace")[-1500:] for p in Path(work).glob("*.log")}
            raise BenchmarkError(f"{error}; logs: {logs}") from None


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {key: describe([r[key] for r in rounds]) for key in ("wall_s", "slowest_fit_s", "overhead_s")}


def print_rounds(runtime: str, rounds: list[dict[str, Any]], learners: int) -> None:
    rows = [
        [
            r["round"],
            r["wall_s"],
            r["slowest_fit_s"],
            r["overhead_s"],
            f"{100 * r['overhead_s'] / r['wall_s']:.0f}%" if r["wall_s"] else "-",
        ]
        for r in rounds
    ]
    title = f"{runtime}: per-round control overhead (sklearn digits, {learners} learners)"
    print_table(["round", "wall s", "slowest fit s", "overhead s", "overhead share"], rows, title)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="training rounds (at least 2)")
    parser.add_argument("--learners", type=int, default=2, help="learner nodes (data partitions)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument(
        "--parameters", type=int, default=0, help="pad the model with float32 values to this many parameters (0: 650)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each runtime's last round")
    parser.add_argument(
        "--work-dir", type=Path, help="keep FLOps's state, logs and cache here (default: a temporary dir)"
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    results: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for runtime in args.runtimes:  # one failing runtime does not lose the others' figures
        try:
            if runtime == "flops":
                results[runtime] = run_flops(args.rounds, args.learners, args.timeout, args.work_dir, args.parameters)
            else:
                results[runtime] = run_anchor(runtime, args.rounds, args.learners, args.timeout, args.parameters)
        except BenchmarkError as error:
            failed[runtime] = str(error)[:2000]
            print(f"round_overhead: {runtime}: {error}", file=sys.stderr)
            continue
        note(f"{runtime}: done")
        print_rounds(runtime, results[runtime], args.learners)
    if not results:
        return 1

    summary: dict[str, Any] = {}
    for runtime, rounds in results.items():
        summary[runtime] = {"all_rounds": summarise(rounds), "rounds_2_on": summarise(rounds[1:])}
    rows = [
        [
            runtime,
            *figures["rounds_2_on"]["overhead_s"].values(),
            figures["rounds_2_on"]["wall_s"]["median"],
            figures["rounds_2_on"]["slowest_fit_s"]["median"],
        ]
        for runtime, figures in summary.items()
    ]
    print_table(
        ["runtime", "overhead mean s", "overhead median s", "overhead max s", "wall median s", "slowest fit median s"],
        rows,
        "rounds 2 on",
    )
    medians = {runtime: statistics.median(r["overhead_s"] for r in rounds[1:]) for runtime, rounds in results.items()}
    ratios = {
        f"flops_over_{name}": round(medians["flops"] / median, 4)
        for name, median in medians.items()
        if name != "flops" and "flops" in medians and median > 0
    }
    for name, ratio in ratios.items():
        anchor, inverse = name.removeprefix("flops_over_"), 1 / ratio if ratio else float("inf")
        print(f"median overhead, rounds 2 on: flops / {anchor} = {ratio:.3g}x ({anchor} is {inverse:.3g}x flops)")
    print_json(
        "round_overhead",
        {
            "learners": args.learners,
            "rounds": args.rounds,
            "parameters": args.parameters or 650,
            "per_round": results,
            "failed": failed,
            "summary": summary,
            "overhead_median_s": medians,
            "ratios": ratios,
        },
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
