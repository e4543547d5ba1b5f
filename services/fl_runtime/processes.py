"""Child processes of the federated services: started in their own process group, stopped as a group.

Flower's SuperLink and SuperNode start helpers (``flower-superexec``, ServerApp and
ClientApp processes) by bare name, so every child gets this environment's ``bin``
directory first on ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from flops_utils.process_groups import stop_group

# Flower phones home (telemetry, update check) unless told not to.
QUIET_FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}


def environment_bin() -> Path:
    """The ``bin`` directory of the Python environment running this process."""
    return Path(sys.executable).parent


def flower_binary(name: str) -> str:
    """Path of a Flower command (``flower-superlink``, ``flwr``...) next to ``sys.executable``."""
    path = environment_bin() / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed in {environment_bin()}")
    return str(path)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the environment's ``bin`` first on PATH and Flower kept quiet."""
    env = dict(os.environ)
    env.update(QUIET_FLOWER_ENV)
    env["PATH"] = f"{environment_bin()}{os.pathsep}{env.get('PATH', '')}"
    if extra:
        env.update(extra)
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the service that started us dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ManagedProcess:
    """One child process in its own session, ended with its parent; output goes to a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = dict(env) if env is not None else child_environment()
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def wait(self, timeout: float | None = None) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._process.wait(timeout)

    def log_tail(self, lines: int = 5) -> str:
        """The last non-empty lines of the log, joined into one line (for failure reasons)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail)[-400:]

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds."""
        process = self._process
        if process is None:
            return
        stop_group(process.pid, grace, reap=process.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)
        if self._log is not None:
            self._log.close()
            self._log = None
