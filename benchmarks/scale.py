"""Learners x clusters on one machine: processes and memory per learner, time per cycle.

Starts the real stack (``benchmarks.common``) with the local orchestrator given ``--learners``
nodes in ``--clusters`` clusters (a nodes file: ``node-<cluster>-<k>``), pushes one mock digits
partition to every learner node and runs the sklearn example in hierarchical mode
(``--cycles`` x ``--rounds``, every cluster waiting for all its learners).

While it trains, every ``--sample-s`` seconds it reads the local adapter's state (the learner
instances' and the nodes' data servers' pids), walks each one's process tree in ``/proc`` and sums
PSS from ``/proc/<pid>/smaps_rollup``. A learner's processes are its instance's tree (the learner
and whatever it starts) plus its node's data server tree; the figures per learner are the peaks
over the samples, and
``process_kinds_of_a_learner`` names them (command name -> count). Time per cycle comes from the root aggregator's
``TrainingProgress`` messages (their arrival on the broker).

    .venv/bin/python benchmarks/scale.py [--learners 4] [--clusters 2] [--cycles 2] [--rounds 2]
    .venv/bin/python benchmarks/scale.py --learners 100 --clusters 10   # the issue's size: ~all the machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    Bench,
    BenchmarkError,
    note,
    print_json,
    print_table,
    running_stack,
)
from flops_utils.mqtt_catalogue import EventLine, ReportedState, ServiceStatus, TrainingProgress  # noqa: E402
from tests.fixtures_stack import sla  # noqa: E402

TAG = "bench-scale"
REPO = "examples/sklearn_digits"


# -- /proc ------------------------------------------------------------------------------
def parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    links: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        links[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return links


def tree(root: int, links: dict[int, int]) -> list[int]:
    """``root`` and its descendants (those alive now)."""
    children: dict[int, list[int]] = {}
    for pid, parent in links.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root] if root in links else []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- sampling -----------------------------------------------------------------------------
@dataclass
class LearnerPeak:
    processes: int = 0
    pss_mib: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)  # command name -> count, at the most processes


@dataclass
class Sampler:
    """Samples the learners' process trees and PSS from the local adapter's state while training runs."""

    state_file: Path
    interval_s: float
    peaks: dict[str, LearnerPeak] = field(default_factory=dict)
    total_pss_peak_mib: float = 0.0
    total_processes_peak: int = 0
    lowest_available_mib: float = float("inf")  # MemAvailable: what the machine had left at worst
    load_peak: float = 0.0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="scale-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except (OSError, ValueError, KeyError) as error:  # state.json mid-rename, a process gone
                note(f"sample skipped: {error}")

    def roots(self) -> tuple[dict[str, int], dict[str, int]]:
        """node -> learner instance pid, node -> data server pid (from the adapter's state)."""
        state = json.loads(self.state_file.read_text())
        learners: dict[str, int] = {}
        for app in state.get("apps", {}).values():
            for service in app.get("services", {}).values():
                if service.get("spec", {}).get("kind") != "learner":
                    continue
                for instance in service.get("instances", []):
                    learners[str(instance.get("node") or f"{service['service_id']}-{instance['index']}")] = instance[
                        "pid"
                    ]
        servers = {str(record["node"]): int(record["pid"]) for record in state.get("data_servers", {}).values()}
        return learners, servers

    def sample(self) -> None:
        learners, servers = self.roots()
        if not learners:
            return
        links = parents()
        total_pss, total_processes = 0.0, 0
        for node, pid in learners.items():
            pids = tree(pid, links) + (tree(servers[node], links) if node in servers else [])
            pss = sum(pss_kib(p) for p in pids) / 1024
            peak = self.peaks.setdefault(node, LearnerPeak())
            if len(pids) > peak.processes:
                peak.kinds = {}
                for name in map(command_name, pids):
                    peak.kinds[name] = peak.kinds.get(name, 0) + 1
            peak.processes, peak.pss_mib = max(peak.processes, len(pids)), max(peak.pss_mib, pss)
            total_pss += pss
            total_processes += len(pids)
        self.total_pss_peak_mib = max(self.total_pss_peak_mib, total_pss)
        self.total_processes_peak = max(self.total_processes_peak, total_processes)
        self.lowest_available_mib = min(self.lowest_available_mib, mem_available_mib())
        self.load_peak = max(self.load_peak, os.getloadavg()[0])
        self.samples += 1


# -- the run -------------------------------------------------------------------------------
def nodes_file(path: Path, learners: int, clusters: int) -> dict[str, int]:
    """Write the local adapter's nodes (learners dealt round-robin to clusters); cluster -> learners."""
    nodes = [
        {"name": f"node-c{i % clusters}-{i // clusters}", "cluster": f"cluster-{i % clusters}", "learner": True}
        for i in range(learners)
    ]
    path.write_text(json.dumps({"nodes": nodes}))
    sizes: dict[str, int] = {}
    for node in nodes:
        sizes[str(node["cluster"])] = sizes.get(str(node["cluster"]), 0) + 1
    return sizes


def run(bench: Bench, args: argparse.Namespace, per_cluster: int) -> dict[str, Any]:
    pushed = bench.stack.push_mocks(TAG, args.learners)
    if len(pushed["partitions"]) != args.learners:
        raise BenchmarkError(f"mock data reached {len(pushed['partitions'])} nodes, not {args.learners}")
    clients = {
        "min_available_clients": per_cluster,
        "min_fit_clients": per_cluster,
        "min_evaluate_clients": per_cluster,
    }
    request = sla(REPO, [TAG], mode="hierarchical", training_cycles=args.cycles, training_rounds=args.rounds, **clients)
    sampler = Sampler(bench.stack.state_dir / "local-adapter" / "state.json", args.sample_s)
    note(
        f"submitting: {args.learners} learners in {args.clusters} clusters, {args.cycles} cycles x {args.rounds} rounds"
    )
    posted = time.monotonic()
    project_id = bench.stack.submit(request)
    sampler.start()
    try:
        last = bench.await_message(
            project_id, TrainingProgress, args.timeout, lambda m: m.cluster is None and m.cycle == args.cycles
        )
        project = bench.complete(project_id, args.timeout)
    finally:
        sampler.stop()
    note(f"project {project['status']} after {last.at - posted:.1f} s; {sampler.samples} samples")
    root = [h for h in bench.recorder.all_of(project_id, TrainingProgress) if h.message.cluster is None]
    done = {h.message.cycle: round(h.at - posted, 3) for h in root}
    cluster_first = [h for h in bench.recorder.all_of(project_id, TrainingProgress) if h.message.cluster is not None]
    began = min(h.at - h.message.round_seconds for h in cluster_first) - posted if cluster_first else None
    cycles = sorted(done)
    starts = [began, *(done[c] for c in cycles[:-1])]
    seconds = [round(done[c] - s, 3) if s is not None else None for c, s in zip(cycles, starts, strict=True)]
    started = {
        h.message.sender
        for h in bench.recorder.all_of(project_id, ServiceStatus)
        if h.message.service == "learner" and h.message.state is ReportedState.STARTED
    }
    connected = [h.at - posted for h in bench.recorder.all_of(project_id, EventLine) if "connected" in h.message.text]
    peaks = sampler.peaks
    processes = [p.processes for p in peaks.values()]
    pss = [p.pss_mib for p in peaks.values()]
    return {
        "status": project["status"],
        "learners_started": len(started),
        "learners_sampled": len(peaks),
        "samples": sampler.samples,
        "post_to_last_connected_s": round(max(connected), 3) if connected else None,
        "post_to_cycle_done_s": done,
        "cycle_seconds": dict(zip(cycles, seconds, strict=True)),
        "processes_per_learner": {"median": statistics.median(processes), "max": max(processes)} if peaks else None,
        "process_kinds_of_a_learner": max(peaks.values(), key=lambda p: p.processes).kinds if peaks else None,
        "pss_mib_per_learner": {"median": round(statistics.median(pss), 1), "max": round(max(pss), 1)}
        if peaks
        else None,
        "learners_pss_peak_mib": round(sampler.total_pss_peak_mib, 1),
        "learners_processes_peak": sampler.total_processes_peak,
        "lowest_mem_available_mib": round(sampler.lowest_available_mib) if sampler.samples else None,
        "load_avg_1m_peak": round(sampler.load_peak, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per cycle")
    parser.add_argument("--sample-s", type=float, default=3.0, help="seconds between process/PSS samples")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--work-dir", type=Path, help="keep state, logs and cache here (default: a temporary dir)")
    args = parser.parse_args()
    if args.clusters < 1 or args.learners < args.clusters:
        parser.error("need at least one cluster and one learner per cluster")
    root = args.work_dir or Path(os.environ.get("TMPDIR", "/tmp")) / f"flops-bench-scale-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    sizes = nodes_file(root / "nodes.json", args.learners, args.clusters)
    overrides = {
        "adapter_settings": {"local": {"nodes_file": str(root / "nodes.json")}},
        "lifecycle": {"training_timeout_s": args.timeout, "build_timeout_s": 600},  # 100 learners take a while
    }
    try:
        with running_stack(root, overrides) as bench:
            figures = run(bench, args, min(sizes.values()))
    except BenchmarkError as error:
        print(f"scale: {error}", file=sys.stderr)
        return 1
    finally:
        if args.work_dir is None:
            import shutil

            shutil.rmtree(root, ignore_errors=True)

    per = figures
    cycles = [per["cycle_seconds"].get(c) for c in range(1, args.cycles + 1)]
    rows = [
        [
            args.learners,
            args.clusters,
            per["learners_started"],
            per["status"],
            per["processes_per_learner"]["median"] if per["processes_per_learner"] else None,
            per["pss_mib_per_learner"]["median"] if per["pss_mib_per_learner"] else None,
            per["learners_pss_peak_mib"],
            *cycles,
        ]
    ]
    headers = [
        "learners",
        "clusters",
        "started",
        "status",
        "processes/learner",
        "PSS MiB/learner",
        "all learners PSS MiB",
        *(f"cycle {c} s" for c in range(1, args.cycles + 1)),
    ]
    print_table(headers, rows, f"scale: sklearn example, hierarchical, {args.cycles} cycles x {args.rounds} rounds")
    print_json(
        "scale",
        {"learners": args.learners, "clusters": args.clusters, "cycles": args.cycles, "rounds": args.rounds, **figures},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
