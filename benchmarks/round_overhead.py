"""Per-round control-plane overhead: round wall time minus the slowest learner's fit time.

Runs the classic scikit-learn example for N rounds. The round wall time is
``TrainingProgress.round_seconds`` (heard on the broker: the aggregator's time from
sending the round's ``train`` messages until the new global model is aggregated).
The slowest fit is the aggregator's per-round MLflow metric ``slowest_fit_seconds``,
the largest ``fit-seconds`` a learner reported for its ``fit_model`` call. What is
left is FLOps + Flower: message delivery, (de)serialisation, the learners' local
evaluation, reply polling and FedAvg. Round 1 also pays the ClientApps' first
data load, so the figures are given with and without it.

    .venv/bin/python benchmarks/round_overhead.py [--rounds 5] [--learners 2]
"""

from __future__ import annotations

import argparse
import sys
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
from flops_utils.mqtt_catalogue import TrainingProgress  # noqa: E402

TAG = "bench-rounds"
FIT_METRIC = "slowest_fit_seconds"


def slowest_fits(tracking_url: str, run_id: str) -> dict[int, float]:
    """Round -> the slowest learner's fit seconds, from the aggregator's MLflow run."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=tracking_url).get_metric_history(run_id, FIT_METRIC)
    return {int(metric.step): float(metric.value) for metric in history}


def measure(bench: Bench, rounds: int, learners: int, timeout: float) -> list[dict[str, Any]]:
    note(f"submitting the sklearn example for {rounds} rounds with {learners} learners ...")
    project_id = bench.stack.submit(classic_sklearn_sla(TAG, rounds, learners))
    bench.await_message(project_id, TrainingProgress, timeout, lambda m: m.cluster is None and m.round == rounds)
    project = bench.complete(project_id)
    note(f"project {project['status']}; reading the learners' fit times from MLflow")
    walls = {
        heard.message.round: heard.message.round_seconds
        for heard in bench.recorder.all_of(project_id, TrainingProgress)
        if heard.message.cluster is None
    }
    fits = slowest_fits(str(project["tracking_url"]), str(project["mlflow_run_id"]))
    if sorted(walls) != list(range(1, rounds + 1)) or sorted(fits) != sorted(walls):
        raise BenchmarkError(f"rounds heard {sorted(walls)}, fit times logged for {sorted(fits)}")
    return [
        {"round": rnd, "wall_s": walls[rnd], "slowest_fit_s": round(fits[rnd], 4),
         "overhead_s": round(walls[rnd] - fits[rnd], 3)}
        for rnd in sorted(walls)
    ]  # fmt: skip


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {key: describe([r[key] for r in rounds]) for key in ("wall_s", "slowest_fit_s", "overhead_s")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="training rounds (at least 2)")
    parser.add_argument("--learners", type=int, default=2, help="learner nodes (data partitions)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the last round")
    parser.add_argument("--work-dir", type=Path, help="keep state, logs and cache here (default: a temporary dir)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    try:
        with running_stack(args.work_dir) as bench:
            bench.push_digits(TAG, args.learners)
            note(f"mock data pushed to {args.learners} learner nodes")
            rounds = measure(bench, args.rounds, args.learners, args.timeout)
    except BenchmarkError as error:
        print(f"round_overhead: {error}", file=sys.stderr)
        return 1

    rows = [[r["round"], r["wall_s"], r["slowest_fit_s"], r["overhead_s"],
             f"{100 * r['overhead_s'] / r['wall_s']:.0f}%" if r["wall_s"] else "-"] for r in rounds]  # fmt: skip
    title = f"per-round control-plane overhead (sklearn example, classic, {args.learners} learners)"
    print_table(["round", "wall s", "slowest fit s", "overhead s", "overhead share"], rows, title)
    summary = {"all_rounds": summarise(rounds), "rounds_2_on": summarise(rounds[1:])}
    summary_rows = [[scope, key, *stats.values()] for scope, figs in summary.items() for key, stats in figs.items()]
    print_table(["rounds", "figure", "mean s", "median s", "max s"], summary_rows, "summary")
    print_json("round_overhead", {"learners": args.learners, "rounds": rounds, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
