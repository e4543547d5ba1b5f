"""The API's latency under load: many concurrent clients on ``GET /health`` and ``GET /api/flops/projects``.

Starts the suite and a real ``flops-manager`` (as the other benchmarks do), stores
``--projects`` finished project records so the list has something to serialise, then
runs ``--clients`` concurrent clients for ``--seconds`` seconds. Each client keeps one
loopback connection open, as a session of an HTTP library does (``--no-keep-alive``:
a new connection per request), and alternates the two paths; every request has
a ``--timeout`` (a time-out counts as a failure and its full time is kept as its
latency). The clients run in ``--processes`` worker processes so the load generator
is not held back by one interpreter's lock. Prints p50/p99/max per path and ends with
one JSON line.

    .venv/bin/python benchmarks/api_load.py [--clients 200] [--seconds 30] [--threads N]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import note, print_json, print_table, running_stack  # noqa: E402
from tests.fixtures_stack import ADMIN_TOKEN  # noqa: E402

PATHS = ("/health", "/api/flops/projects")


def _client(
    port: int, deadline: float, timeout: float, offset: int, keep_alive: bool, samples: list[tuple[int, float, bool]]
) -> None:
    turn = offset
    connection: http.client.HTTPConnection | None = None
    while time.monotonic() < deadline:
        path_index = turn % len(PATHS)
        turn += 1
        started = time.monotonic()
        ok = False
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            connection.request("GET", PATHS[path_index], headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            answer = connection.getresponse()
            answer.read()
            ok = answer.status == 200
            if not keep_alive or answer.will_close:
                connection.close()
                connection = None
        except OSError:
            ok = False
            if connection is not None:
                connection.close()
                connection = None
        samples.append((path_index, time.monotonic() - started, ok))
    if connection is not None:
        connection.close()


def _worker(port: int, clients: int, seconds: float, timeout: float, first: int, keep_alive: bool, queue: Any) -> None:
    """One process: ``clients`` threads until the deadline; sends back (path index, seconds, ok) samples."""
    samples: list[tuple[int, float, bool]] = []
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(port, deadline, timeout, first + i, keep_alive, samples), daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    queue.put(samples)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(samples: list[tuple[int, float, bool]], seconds: float) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for index, path in enumerate((*PATHS, "all")):
        chosen = [(latency, ok) for which, latency, ok in samples if path == "all" or which == index]
        latencies = [latency for latency, _ok in chosen]
        figures[path] = {
            "requests": len(chosen),
            "failed": sum(1 for _latency, ok in chosen if not ok),
            "per_s": round(len(chosen) / seconds, 1),
            "p50_s": round(percentile(latencies, 0.50), 3),
            "p99_s": round(percentile(latencies, 0.99), 3),
            "max_s": round(max(latencies), 3) if latencies else float("nan"),
        }
    return figures


def store_projects(mongo_uri: str, database: str, count: int) -> None:
    from manager.records import ProjectRecord, ProjectStatus
    from manager.storage import MongoProjectStore

    store = MongoProjectStore(mongo_uri, database)
    store.connect()
    try:
        sla = {
            "customerID": "Admin",
            "ml_repo_url": "examples/sklearn_digits",
            "ml_model_flavor": "sklearn",
            "training_configuration": {"data_tags": ["digits"]},
        }
        for number in range(count):
            store.insert_project(
                ProjectRecord(
                    project_id=f"bench{number:06d}", customer="Admin", sla=sla, status=ProjectStatus.COMPLETED
                )
            )
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="per request")
    parser.add_argument("--processes", type=int, default=4, help="load-generating processes")
    parser.add_argument("--projects", type=int, default=50, help="finished projects stored for the list")
    parser.add_argument(
        "--keep-alive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each client keeps its connection open, as an HTTP client library's session does "
        "(--no-keep-alive: a new connection per request)",
    )
    parser.add_argument("--threads", type=int, default=None, help="the manager's API threads (default: its own)")
    args = parser.parse_args()
    overrides = {} if args.threads is None else {"threads": args.threads}
    with running_stack(config_overrides=overrides) as bench:
        import json

        config = json.loads(bench.stack.config_path.read_text())
        store_projects(config["mongo_uri"], config["database"], args.projects)
        port = int(bench.stack.url.rsplit(":", 1)[1])
        note(f"{args.clients} clients for {args.seconds:g} s on {', '.join(PATHS)} ...")
        queue: Any = multiprocessing.get_context("fork").Queue()
        share, extra = divmod(args.clients, args.processes)
        workers = []
        first = 0
        for number in range(args.processes):
            clients = share + (1 if number < extra else 0)
            if clients:
                worker = multiprocessing.get_context("fork").Process(
                    target=_worker,
                    args=(port, clients, args.seconds, args.timeout, first, args.keep_alive, queue),
                    daemon=True,
                )
                worker.start()
                workers.append(worker)
                first += clients
        samples: list[tuple[int, float, bool]] = []
        for _worker_process in workers:
            samples.extend(queue.get(timeout=args.seconds + args.timeout + 60))
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    figures = summarise(samples, args.seconds)
    print_table(
        ["path", "requests", "failed", "per s", "p50 s", "p99 s", "max s"],
        [
            [path, f["requests"], f["failed"], f["per_s"], f["p50_s"], f["p99_s"], f["max_s"]]
            for path, f in figures.items()
        ],
        title="API latency under load",
    )
    print_json(
        "api_load",
        {
            "clients": args.clients,
            "seconds": args.seconds,
            "threads": args.threads,
            "keep_alive": args.keep_alive,
            "paths": figures,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
