"""``flops project watch``: a live progress bar plus new events, polled every 0.3 s.

On a terminal the progress line is redrawn in place (elapsed time and ETA tick); when the
output is not a terminal (a log, a pipe) each change of progress is printed once, the
changing times riding along on that line only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from manager.cli.client import CliError, FlopsClient, ManagerUnreachable

POLL_INTERVAL_S = 0.3
BAR_WIDTH = 24
EXIT_BY_STATUS = {"COMPLETED": 0, "FAILED": 1, "STOPPED": 3}


def watch_project(
    client: FlopsClient,
    project_id: str,
    out: TextIO,
    *,
    interval_s: float = POLL_INTERVAL_S,
    reconnect_timeout_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Print events and progress until the project is finished; return the last events answer."""
    view = _ProgressView(out, live=out.isatty())
    after = 0
    unreachable_since: float | None = None
    drained_after_finish = False
    while True:
        try:
            answer = client.get(f"/api/flops/projects/{project_id}/events", params={"after": after})
        except ManagerUnreachable:
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since > reconnect_timeout_s:
                raise
            view.note(f"(manager unreachable at {client.url}, retrying)")
            sleep(max(interval_s, 1.0))
            continue
        unreachable_since = None
        if not isinstance(answer, dict) or not isinstance(answer.get("events"), list):
            raise CliError("the FLOps manager answered the events request with an unexpected document")
        events: list[dict[str, Any]] = answer["events"]
        for event in events:
            view.event(event)
            after = max(after, int(event.get("seq", after)))
        view.progress(answer)
        if answer.get("finished"):
            if drained_after_finish and not events:
                view.finish(project_id, answer)
                return answer
            drained_after_finish = True  # one more poll picks up events written with the final status
        if len(events) < 1000:
            sleep(interval_s)


def exit_code_for(status: str) -> int:
    return EXIT_BY_STATUS.get(status, 1)


class _ProgressView:
    """A redrawn progress line on a terminal; a printed line per change otherwise."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live = live
        self._line = ""
        self._last_printed = ""
        self._last_progress = ""  # the progress printed last, without its times (non-terminal output)

    def event(self, event: dict[str, Any]) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("at") or 0)))
        level = str(event.get("level", "info"))
        marker = "" if level == "info" else f"{level.upper()} "
        self._print(f"{stamp} {event.get('source', '?')}: {marker}{event.get('text', '')}")

    def note(self, text: str) -> None:
        if text != self._last_printed:
            self._print(text)

    def progress(self, answer: dict[str, Any]) -> None:
        line = progress_line(answer)
        if self.live:
            if line != self._line:
                self._clear()  # redraw in place: the times tick on every poll
                self._line = line
                self._redraw()
            return
        state = progress_line(answer, times=False)
        if state != self._last_progress:
            self._last_progress = state
            self._print(line)

    def finish(self, project_id: str, answer: dict[str, Any]) -> None:
        self._clear()
        self._line = ""
        status = answer.get("status", "?")
        progress = answer.get("progress") or {}
        metrics = [
            f"{name} {progress[name]:.4f}"
            for name in ("accuracy", "loss")
            if isinstance(progress.get(name), int | float)
        ]
        run_url = answer.get("mlflow_run_url")
        if run_url:
            self.out.write(f"MLflow run: {run_url}\n")
        summary = f"project {project_id} {status}"
        if metrics:
            summary += ": " + ", ".join(metrics)
        if answer.get("error"):
            summary += f" - {answer['error']}"
        self.out.write(summary + "\n")
        self.out.flush()

    def _print(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self._last_printed = text
        self._redraw()

    def _clear(self) -> None:
        if self.live and self._line:
            self.out.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.live and self._line:
            self.out.write(self._line)
        self.out.flush()


def duration_text(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    whole = max(int(round(seconds)), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_line(answer: dict[str, Any], *, times: bool = True) -> str:
    """``[#####-----]  50%  training  round 2/4  accuracy 0.91  elapsed 1m05s  ETA 40s``."""
    progress = answer.get("progress") or {}
    rounds, total_rounds = int(progress.get("round") or 0), int(progress.get("total_rounds") or 0)
    cycle, total_cycles = int(progress.get("cycle") or 0), int(progress.get("total_cycles") or 0)
    if total_cycles > 1 and total_rounds:
        done, total = max(cycle - 1, 0) * total_rounds + rounds, total_cycles * total_rounds
    else:
        done, total = rounds, total_rounds
    if answer.get("status") == "COMPLETED":
        done, total = max(total, 1), max(total, 1)
    fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
    filled = round(fraction * BAR_WIDTH)
    parts = [f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%", str(answer.get("phase", "?"))]
    if total_rounds:
        parts.append(f"round {rounds}/{total_rounds}")
    if total_cycles > 1:
        parts.append(f"cycle {cycle}/{total_cycles}")
    for name in ("accuracy", "loss"):
        value = progress.get(name)
        if isinstance(value, int | float):
            parts.append(f"{name} {value:.4f}")
    if isinstance(epsilon := progress.get("dp_epsilon"), int | float):
        parts.append(f"ε {epsilon:.3g}")
    if times:
        elapsed, eta = answer.get("elapsed_s"), answer.get("eta_s")
        if isinstance(elapsed, int | float):
            parts.append(f"elapsed {duration_text(elapsed)}")
        if isinstance(eta, int | float) and answer.get("phase") == "training":
            parts.append(f"ETA {duration_text(eta)}")
    return "  ".join(parts)
