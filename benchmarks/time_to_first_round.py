"""Time from POST /api/flops/projects to the first finished training round, cold and warm cache.

Runs the classic scikit-learn example twice on one fresh manager: the first project
builds its environment into an empty cache (cold), the second uses the same repo and
commit (warm: the builder reuses the cached environment). The first round is the
first ``TrainingProgress`` heard on the broker. The customer's MLflow tracking server
is started before the cold project (``GET /api/flops/tracking``, timed separately),
so cold and warm differ by the cache only; ``--cold-observatory`` leaves it to the
cold project instead.

Each project is stopped (DELETE) after its first round, which keeps the run short;
``--complete`` lets it finish instead (and checks it COMPLETED).

Beside FLOps's warm figure it prints two Flower anchors on the same model and data
(``benchmarks/flower_anchors.py``), timed from starting their processes to round 1 done:
the legacy ``flwr.compat`` streaming (server and clients started as from a shell) and Flower's
deployment engine with defaults (SuperLink, SuperNodes, ``flwr run``). ``--anchors`` picks them.

    .venv/bin/python benchmarks/time_to_first_round.py [--learners 2] [--complete] [--anchors legacy deployment]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    Bench,
    BenchmarkError,
    classic_sklearn_sla,
    note,
    print_json,
    print_table,
    running_stack,
)
from benchmarks.flower_anchors import run_deployment, run_legacy  # noqa: E402
from flops_utils.mqtt_catalogue import (  # noqa: E402
    BuildResult,
    EventLine,
    ReportedState,
    ServiceStatus,
    TrainingProgress,
)

PHASES = ("observatory", "project_app", "observer", "build", "training")
MILESTONES = ("aggregator started", "learners started", "learners connected")
TAG = "bench-ttfr"
ROUNDS = 1  # the project is stopped after it (during final evaluation and model logging) unless --complete


def phase_starts(bench: Bench, project_id: str, posted_wall: float) -> dict[str, float | None]:
    """Seconds from the POST to each lifecycle phase's start (from the project's event log)."""
    answer = bench.stack.api("GET", f"/api/flops/projects/{project_id}/events")
    answer.raise_for_status()
    starts: dict[str, float | None] = dict.fromkeys(PHASES)
    for event in answer.json()["events"]:
        for phase in PHASES:
            if event["text"] == f"phase {phase}" and starts[phase] is None:
                starts[phase] = round(float(event["at"]) - posted_wall, 3)
    return starts


def training_milestones(bench: Bench, project_id: str, posted: float, learners: int) -> dict[str, float | None]:
    """Seconds from the POST to the training services' reports (MQTT arrival times)."""
    started = [h for h in bench.recorder.all_of(project_id, ServiceStatus) if h.message.state is ReportedState.STARTED]
    aggregator = [h.at for h in started if h.message.service == "aggregator"]
    learner = sorted(h.at for h in started if h.message.service == "learner")
    connected = [h.at for h in bench.recorder.all_of(project_id, EventLine) if "learners connected" in h.message.text]

    def since_post(at: list[float]) -> float | None:
        return round(at[0] - posted, 3) if at else None

    return {
        "aggregator_started": since_post(aggregator),
        "learners_started": since_post(learner[learners - 1 : learners]),
        "learners_connected": since_post(connected),
    }


def one_project(bench: Bench, label: str, learners: int, timeout: float, complete: bool) -> dict[str, Any]:
    note(f"{label}: submitting the sklearn example ...")
    posted_wall, posted = time.time(), time.monotonic()
    project_id = bench.stack.submit(classic_sklearn_sla(TAG, ROUNDS, learners))
    built = bench.await_message(project_id, BuildResult, timeout)
    first = bench.await_message(project_id, TrainingProgress, timeout, lambda m: m.cluster is None and m.round >= 1)
    if complete:
        note(f"{label}: first round after {first.at - posted:.1f} s; waiting for the project to finish ...")
        project = bench.complete(project_id)
    else:
        note(f"{label}: first round after {first.at - posted:.1f} s; stopping the project ...")
        project = bench.stop(project_id)
    note(f"{label}: {project['status']} {time.monotonic() - first.at:.1f} s after the first round")
    build = project["build"]
    return {
        "project_id": project_id,
        "cached": bool(build.get("cached")),
        "build_seconds": round(float(build.get("total_seconds", 0.0)), 3),
        "post_to_build_result_s": round(built.at - posted, 3),
        "build_result_to_first_round_s": round(first.at - built.at, 3),
        "post_to_first_round_s": round(first.at - posted, 3),
        "first_round_seconds": first.message.round_seconds,
        "phase_starts_s": phase_starts(bench, project_id, posted_wall),
        "training_milestones_s": training_milestones(bench, project_id, posted, learners),
    }


def anchor_first_round(runtime: str, learners: int) -> float:
    """Seconds from starting the anchor's processes to its first aggregated model."""
    note(f"{runtime} anchor: starting it for one round ...")
    runner = run_legacy if runtime == "legacy" else run_deployment
    with tempfile.TemporaryDirectory(prefix=f"flops-bench-ttfr-{runtime}-") as work:
        started = time.time()
        try:
            rounds = runner(1, learners, Path(work))
        except RuntimeError as error:
            raise BenchmarkError(f"{runtime} anchor: {error}") from None
    return round(float(rounds[0]["done_at"]) - started, 3)


def print_anchors(figures: dict[str, Any]) -> None:
    rows = [["flops (warm cache)", figures["warm"]["post_to_first_round_s"], 1.0]]
    rows += [
        [f"flower {name}", seconds, round(figures["warm"]["post_to_first_round_s"] / seconds, 2)]
        for name, seconds in figures.get("anchors_first_round_s", {}).items()
    ]
    print_table(["runtime", "start -> round 1 s", "flops warm / this"], rows, "start to round 1 beside the anchors")


def print_report(figures: dict[str, Any], learners: int) -> None:
    labels = ("cold", "warm")
    rows = [
        [
            label,
            figures[label]["cached"],
            figures[label]["build_seconds"],
            figures[label]["post_to_build_result_s"],
            figures[label]["build_result_to_first_round_s"],
            figures[label]["first_round_seconds"],
            figures[label]["post_to_first_round_s"],
        ]
        for label in labels
    ]
    headers = ["cache", "cached", "build s", "POST->built s", "built->round1 s", "round1 s", "POST->round1 s"]
    print_table(headers, rows, f"time from POST to the first round (sklearn example, classic, {learners} learners)")
    if "observatory_start_s" in figures:
        print(f"MLflow tracking server started beforehand in {figures['observatory_start_s']:.3f} s")
    phase_rows = [
        [label, *figures[label]["phase_starts_s"].values(), figures[label]["post_to_first_round_s"]] for label in labels
    ]
    print_table(["cache", *PHASES, "round 1 done"], phase_rows, "seconds from POST to each lifecycle phase's start")
    milestone_rows = [
        [label, *figures[label]["training_milestones_s"].values(), figures[label]["post_to_first_round_s"]]
        for label in labels
    ]
    print_table(["cache", *MILESTONES, "round 1 done"], milestone_rows, "seconds from POST to the training reports")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=2, help="learner nodes (data partitions)")
    parser.add_argument(
        "--cold-observatory",
        action="store_true",
        help="do not start the MLflow tracking server before the cold project",
    )
    parser.add_argument(
        "--complete",
        action="store_true",
        help="let each project finish (final evaluation, model logging); default: stop it",
    )
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds to wait for each message")
    parser.add_argument("--work-dir", type=Path, help="keep state, logs and cache here (default: a temporary dir)")
    parser.add_argument(
        "--anchors",
        nargs="*",
        choices=("legacy", "deployment"),
        default=["legacy", "deployment"],
        help="Flower anchors to time beside FLOps (none: --anchors)",
    )
    args = parser.parse_args()

    figures: dict[str, Any] = {}
    try:
        with running_stack(args.work_dir) as bench:
            bench.push_digits(TAG, args.learners)
            if not args.cold_observatory:
                note("starting the customer's MLflow tracking server ...")
                started = time.monotonic()
                bench.stack.api("GET", "/api/flops/tracking").raise_for_status()
                figures["observatory_start_s"] = round(time.monotonic() - started, 3)
            for label in ("cold", "warm"):
                figures[label] = one_project(bench, label, args.learners, args.timeout, args.complete)
        figures["anchors_first_round_s"] = {name: anchor_first_round(name, args.learners) for name in args.anchors}
    except BenchmarkError as error:
        print(f"time_to_first_round: {error}", file=sys.stderr)
        return 1

    print_report(figures, args.learners)
    print_anchors(figures)
    print_json("time_to_first_round", {"learners": args.learners, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
