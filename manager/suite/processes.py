"""Detached child processes the suite starts, finds again and stops.

Suite processes must outlive the Python process that started them (the CLI starts
the suite and exits), so they run in their own session and process group, write to a
log file, and are remembered by pid plus kernel start time: the start time protects
against a recycled pid being mistaken for ours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def accepts_tcp(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks, state letter) of ``pid`` from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]), fields[0]


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
    info = _start_ticks(process.pid)
    # A process that died already has no /proc entry we can trust; record 0 so it reads as stopped.
    return ProcessRecord(pid=process.pid, start_ticks=info[0] if info else 0)


def is_running(record: ProcessRecord) -> bool:
    if record.pid <= 1:
        return False
    child = _own_children.get(record.pid)
    if child is not None and child.poll() is not None:
        del _own_children[record.pid]
        return False
    info = _start_ticks(record.pid)
    if info is None:
        return False
    ticks, state = info
    return ticks == record.start_ticks and state not in ("Z", "X")


def stop(record: ProcessRecord, *, name: str, timeout: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout``; return once it is gone.

    A record whose process is not running (any more) is left alone: its pid may belong
    to someone else by now.
    """
    if not is_running(record):
        return
    _signal_group(record.pid, signal.SIGTERM)
    if not _wait_gone(record, timeout):
        _signal_group(record.pid, signal.SIGKILL)
        if not _wait_gone(record, 10.0):
            raise SuiteError(f"{name} (pid {record.pid}) did not exit after SIGKILL")
    # Helpers the leader left behind in its group die with it.
    _signal_group(record.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    if pgid <= 1:  # killpg(0) would signal our own group
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(record):
            return True
        time.sleep(0.05)
    return not is_running(record)


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
