"""One-line human-readable text: every catalogue message (observer log, manager events) and every error reason."""

from __future__ import annotations

from flops_utils.mqtt_catalogue import (
    BuildResult,
    BuildStep,
    ControlCommand,
    EventLine,
    FlopsMessage,
    ModelImageBuilt,
    ServiceStatus,
    TrainingProgress,
    TrainingResult,
)


def _metric(name: str, value: float | None) -> str:
    return f" {name}={value:.4f}" if value is not None else ""


def describe(message: FlopsMessage) -> str:
    match message:
        case ServiceStatus():
            detail = f": {message.detail}" if message.detail else ""
            return f"{message.sender} {message.state.value}{detail}"
        case BuildStep():
            detail = f" ({message.detail})" if message.detail else ""
            return f"build step {message.step} {message.outcome} in {message.duration_s:.1f}s{detail}"
        case BuildResult():
            how = "reused from cache" if message.cached else "built"
            seconds = f"{message.total_seconds:.1f}s"
            return f"environment {message.digest[:12]} {how} for commit {message.commit[:12]} in {seconds}"
        case ModelImageBuilt():
            how = "found in the registry" if message.cached else f"built in {message.total_seconds:.1f}s"
            return f"inference image {message.pinned} {how} for {message.model_uri}"
        case TrainingProgress():
            where = f"cluster {message.cluster} " if message.cluster else ""
            cycle = f"cycle {message.cycle}/{message.total_cycles} " if message.total_cycles > 1 else ""
            return (
                f"{where}{cycle}round {message.round}/{message.total_rounds} done in {message.round_seconds:.1f}s "
                f"with {message.participants} learners{_metric('loss', message.loss)}"
                f"{_metric('accuracy', message.accuracy)}"
            )
        case TrainingResult():
            return (
                f"training finished after {message.rounds_completed} rounds{_metric('loss', message.loss)}"
                f"{_metric('accuracy', message.accuracy)} (MLflow run {message.mlflow_run_id})"
            )
        case EventLine():
            return f"{message.sender}: {message.text}"
        case ControlCommand():
            return f"{message.sender} asked to {message.command}"
    return str(message)  # pragma: no cover - the union is exhaustive


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters, cut at a word boundary (never inside a word)."""
    flat = " ".join(str(text).split()) or "unknown error"
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    if " " in cut and not flat[limit - 1].isspace():
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def error_line(error: BaseException, limit: int = 300) -> str:
    """An exception as a one-line reason (its type name when it has no message)."""
    return one_line(str(error).strip() or type(error).__name__, limit)
