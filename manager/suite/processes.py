"""Detached child processes the suite starts, finds again and stops.

Suite processes must outlive the Python process that started them (the CLI starts
the suite and exits), so they run in their own session and process group, write to a
log file, and are remembered by pid plus kernel start time: the start time protects
against a recycled pid being mistaken for ours (``flops_utils.process_groups`` tells
whether they run and stops them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flops_utils.process_groups import process_alive, start_ticks, stop_group

# Popen objects of the children this Python process started: polling them reaps
# zombies, which would otherwise look alive to a /proc probe.
_own_children: dict[int, subprocess.Popen[bytes]] = {}

_ADDRESS_IN_USE = ("address already in use", "address in use", "only one usage of each socket")


class SuiteError(RuntimeError):
    """A suite component could not be found, started, reached or stopped."""


class PortTaken(SuiteError):
    """The process died at start because its port was taken (retry on another)."""


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_ticks: int

    def as_dict(self) -> dict[str, int]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}


def find_binary(name: str, hint: str, *, extra_dirs: Sequence[Path] = ()) -> str:
    """Absolute path of ``name``; ``hint`` says how to install it when missing."""
    for directory in (*extra_dirs, Path(sys.executable).parent):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search_path)
    if found is None:
        raise SuiteError(f"{name} not found: {hint}")
    return found


def launch(
    argv: Sequence[str], *, log_file: Path, cwd: Path, name: str, env: Mapping[str, str] | None = None
) -> ProcessRecord:
    """Start ``argv`` detached, output appended to ``log_file`` (``env`` replaces the environment when given)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            raise SuiteError(f"cannot start {name}: {error}") from None
    _own_children[process.pid] = process
    ticks = start_ticks(process.pid)
    # A process that died already has no /proc entry we can trust; record 0 so it reads as stopped.
    return ProcessRecord(pid=process.pid, start_ticks=ticks if ticks is not None else 0)


def is_running(record: ProcessRecord) -> bool:
    child = _own_children.get(record.pid)
    if child is not None and child.poll() is not None:
        del _own_children[record.pid]
        return False
    return process_alive(record.pid, record.start_ticks)


def stop(record: ProcessRecord, *, name: str, timeout: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout``; return once the whole group is gone.

    A record whose process is not running (any more) is left alone: its pid may belong
    to someone else by now.
    """
    if not is_running(record):
        return
    child = _own_children.get(record.pid)
    if not stop_group(record.pid, timeout, reap=child.poll if child else None, kill_wait_s=10.0):
        raise SuiteError(f"{name} (pid {record.pid}) did not exit after SIGKILL")


def last_log_line(log_file: Path) -> str:
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def wait_ready(
    record: ProcessRecord,
    is_ready: Callable[[], bool],
    *,
    name: str,
    log_file: Path,
    timeout: float,
) -> None:
    """Poll ``is_ready`` until it holds; fail early, with the log's last line, if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        if not is_running(record):
            detail = last_log_line(log_file)
            error_type = PortTaken if any(mark in detail.lower() for mark in _ADDRESS_IN_USE) else SuiteError
            raise error_type(f"{name} exited at start: {detail} (log: {log_file})")
        if is_ready():
            return
        if time.monotonic() >= deadline:
            stop(record, name=name)
            raise SuiteError(f"{name} not ready after {timeout:.0f} s: {last_log_line(log_file)} (log: {log_file})")
        time.sleep(0.1)


def run_tool(argv: Sequence[str], *, name: str) -> str:
    """Run a short helper command (mosquitto_passwd, htpasswd) and return its stdout."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SuiteError(f"{name} failed: {error}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise SuiteError(f"{name} failed: {detail[-1] if detail else f'exit code {done.returncode}'}")
    return done.stdout
