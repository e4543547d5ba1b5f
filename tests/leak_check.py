"""A pytest plugin: the session fails when a process it started is still alive at its end.

At start it puts a marker (``FLOPS_TEST_SESSION=<random id>``) into its own
environment, which every process the tests start inherits: suites, managers,
services, data servers, and whatever those start in turn, even after they moved to
a session of their own or were re-parented to PID 1. When the session ends (after
every fixture's teardown) it looks for live processes carrying the marker, gives them
a few seconds to finish exiting, then names what is left (pid and command line),
ends it, and fails the run. Processes that build an environment from scratch
(containers inside podman) do not carry it: stopping their container ends them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

MARKER = "FLOPS_TEST_SESSION"
GRACE_S = 10.0


def marked_processes(value: str) -> dict[int, str]:
    """pid -> command line of every live process (other than this one) whose environment holds the marker."""
    needle = f"{MARKER}={value}".encode()
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{entry.name}/environ").read_bytes()
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :][:1] in ("Z", "X"):
            continue  # ended, only not reaped yet
        if needle in environment.split(b"\0"):
            found[int(entry.name)] = command.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    return found


def pytest_configure(config: pytest.Config) -> None:
    os.environ[MARKER] = uuid.uuid4().hex  # fresh: a pytest run inside a test checks only its own


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    value = os.environ.get(MARKER)
    if not value:
        return
    deadline = time.monotonic() + GRACE_S
    left = marked_processes(value)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = marked_processes(value)
    if not left:
        return
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # so they do not pile up on a reused machine
    lines = "\n".join(f"  pid {pid}: {command}" for pid, command in sorted(left.items()))
    message = f"the test session left {len(left)} process(es) it started running (now killed):\n{lines}"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(message)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
