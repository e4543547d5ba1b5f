"""Set-up shared by the benchmarks: a real suite and flops-manager, an MQTT recorder, printing.

The stack is the one the end-to-end tests use (``tests.fixtures_stack``): the
management suite (password-protected Mosquitto + SecantusDB) from
``manager.suite.start_suite`` in a private directory, and a real ``flops-manager``
process with the local orchestrator and a fresh ``cache_dir``, so the first build of
a run is a cold one. The recorder hears every catalogue message on the broker and
stamps it with its arrival time, which is what the timing benchmarks measure against.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

from flops_utils.mqtt_catalogue import ALL_PROJECTS_FILTER, FlopsMessage
from flops_utils.mqtt_link import MqttLink
from flops_utils.process_groups import free_port
from flops_utils.service_config import MqttSettings
from manager.suite import SuiteEndpoints, start_suite, stop_suite
from tests.fixtures_stack import (
    FINISHED,
    FlopsStack,
    manager_config,
    sla,
    start_manager,
    stop_local_services,
    stop_manager,
    wait_healthy,
)

SKLEARN_REPO = "examples/sklearn_digits"
_STARTED = time.monotonic()
M = TypeVar("M")


class BenchmarkError(RuntimeError):
    """The system did not do what the benchmark needs (a project failed, a message never came)."""


# -- MQTT --------------------------------------------------------------------------
@dataclass(frozen=True)
class Heard(Generic[M]):
    at: float  # time.monotonic() when the message arrived
    message: M


class MessageRecorder:
    """Every catalogue message of every project, in arrival order, with its arrival time."""

    def __init__(self, settings: MqttSettings) -> None:
        self._link = MqttLink(settings, client_id=f"flops-bench-{os.getpid()}")
        self._heard: list[Heard[FlopsMessage]] = []
        self._changed = threading.Condition()

    def start(self) -> MessageRecorder:
        self._link.subscribe(ALL_PROJECTS_FILTER, self._on_message)
        self._link.connect()
        return self

    def close(self) -> None:
        self._link.close()

    def _on_message(self, _topic: str, message: FlopsMessage) -> None:
        with self._changed:
            self._heard.append(Heard(time.monotonic(), message))
            self._changed.notify_all()

    def all_of(self, project_id: str, kind: type[M]) -> list[Heard[M]]:
        with self._changed:
            return [
                Heard(heard.at, heard.message)
                for heard in self._heard
                if heard.message.project_id == project_id and isinstance(heard.message, kind)
            ]

    def first(
        self, project_id: str, kind: type[M], timeout: float, where: Callable[[M], bool] = lambda _: True
    ) -> Heard[M] | None:
        """The first matching message, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for heard in self.all_of(project_id, kind):
                    if where(heard.message):
                        return heard
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)


# -- the running system -----------------------------------------------------------
@dataclass
class Bench:
    stack: FlopsStack
    suite: SuiteEndpoints
    recorder: MessageRecorder
    work_dir: Path

    def await_message(
        self, project_id: str, kind: type[M], timeout: float, where: Callable[[M], bool] = lambda _: True
    ) -> Heard[M]:
        """Wait for a project's message; fail at once if the project finishes without sending it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heard = self.recorder.first(project_id, kind, min(2.0, max(0.0, deadline - time.monotonic())), where)
            if heard is not None:
                return heard
            project = self.stack.project(project_id)
            if project["status"] in FINISHED:
                raise BenchmarkError(f"project {project['status']} before a {kind.__name__}: {project['error']}")
        raise BenchmarkError(f"no {kind.__name__} from project {project_id} within {timeout:g} s")

    def complete(self, project_id: str, timeout: float = 600) -> dict[str, Any]:
        """Wait until the project finishes; its record, which must say COMPLETED."""
        project = self.stack.wait(project_id, timeout)
        if project["status"] != "COMPLETED":
            raise BenchmarkError(f"project {project_id} {project['status']}: {project['error']}")
        return project

    def stop(self, project_id: str, timeout: float = 180) -> dict[str, Any]:
        """DELETE the project (its services are undeployed) and wait until it has finished."""
        answer = self.stack.api("DELETE", f"/api/flops/projects/{project_id}")
        if answer.status_code not in (200, 202):  # 202: it stops in the background
            raise BenchmarkError(f"cannot stop project {project_id}: {answer.status_code} {answer.text[:300]}")
        return self.stack.wait(project_id, timeout)

    def push_digits(self, tag: str, partitions: int) -> None:
        pushed = self.stack.push_mocks(tag, partitions)
        if sum(pushed["partitions"].values()) != 1797:
            raise BenchmarkError(f"mock data not pushed as asked: {pushed}")


def classic_sklearn_sla(tag: str, rounds: int, learners: int) -> dict[str, Any]:
    clients = {"min_available_clients": learners, "min_fit_clients": learners, "min_evaluate_clients": learners}
    return sla(SKLEARN_REPO, [tag], mode="classic", training_rounds=rounds, **clients)


def _interrupt_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the clean-up below


@contextmanager
def running_stack(work_dir: Path | None = None, config_overrides: dict[str, Any] | None = None) -> Iterator[Bench]:
    """Suite + manager (local orchestrator, fresh cache) + recorder; everything is stopped afterwards.

    ``work_dir`` keeps state, logs and caches there (it is removed only when it was a temporary one);
    ``config_overrides`` replace top-level keys of the manager's configuration (e.g. ``adapter_settings``).
    """
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    root = work_dir or Path(tempfile.mkdtemp(prefix="flops-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    suite_dir, state_dir, cache_dir = root / "suite", root / "state", root / "cache"
    try:
        note("starting Mosquitto, SecantusDB and flops-manager ...")
        suite = start_suite(suite_dir)
        port = free_port()
        config_path, log_path = root / "manager.json", root / "manager.log"
        config = {**manager_config(suite, state_dir, cache_dir, port), **(config_overrides or {})}
        config_path.write_text(json.dumps(config))
        stack = FlopsStack(
            f"http://127.0.0.1:{port}", state_dir, start_manager(config_path, log_path), log_path, config_path
        )
        try:
            wait_healthy(stack.url, stack.process, log_path)
            recorder = MessageRecorder(suite.mqtt).start()
            try:
                yield Bench(stack, suite, recorder, root)
            finally:
                recorder.close()
        finally:
            note("stopping everything ...")
            stop_manager(stack.process)
            stop_local_services(state_dir)
    finally:
        stop_suite(suite_dir)
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
        note("stopped")


# -- figures ----------------------------------------------------------------------
def describe(values: Sequence[float]) -> dict[str, float]:
    """mean / median / max (rounded to milliseconds)."""
    if not values:
        return {"mean": float("nan"), "median": float("nan"), "max": float("nan")}
    return {
        "mean": round(statistics.fmean(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> None:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return "-" if value is None else str(value)

    text = [[cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in text)) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(value.rjust(w) for value, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def machine() -> dict[str, object]:
    """When and where the figures were taken (the machine is shared: the load matters)."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def print_json(benchmark: str, figures: dict[str, Any]) -> None:
    """The final line: one JSON object with the figures."""
    print(json.dumps({"benchmark": benchmark, **machine(), **figures}), flush=True)


def note(text: str) -> None:
    """Progress lines go to stderr so stdout holds only the tables and the JSON line."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)
