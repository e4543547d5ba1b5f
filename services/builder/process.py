"""Run a child process with a deadline, killing its whole process group on timeout."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flops_utils.process_groups import signal_group


@dataclass(frozen=True)
class CommandOutcome:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_command(
    args: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandOutcome:
    """Run ``args`` (no shell) and capture its output; children die with it on timeout."""
    process = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        stdout, stderr = process.communicate()
        return CommandOutcome(returncode=-1, stdout=stdout, stderr=stderr, timed_out=True)
    except BaseException:
        _kill_group(process)
        process.wait()
        raise
    return CommandOutcome(returncode=process.returncode, stdout=stdout, stderr=stderr)


def _kill_group(process: subprocess.Popen[str]) -> None:
    signal_group(process.pid, signal.SIGKILL)


def last_meaningful_line(text: str, prefixes: tuple[str, ...] = ()) -> str:
    """The first line starting with one of ``prefixes`` (prefix removed), else the last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        for prefix in prefixes:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    return lines[-1] if lines else ""
