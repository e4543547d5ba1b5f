"""Faults for the tests: crash or freeze one instance of a service the local adapter runs.

Found through the adapter's public state (``LocalAdapter.state``: pids with their start
times), so the adapter itself ships nothing that only tests use.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from orchestrator_adapters.base import AppRef
from orchestrator_adapters.local import LocalAdapter
from orchestrator_adapters.local_process import descendant_pids, process_alive, signal_group, write_exit_file
from orchestrator_adapters.local_state import InstanceRecord


def _instance(adapter: LocalAdapter, app: AppRef, service_id: str, index: int) -> InstanceRecord:
    service = adapter.state.read().apps[app.app_id].services[service_id]
    return next(item for item in service.instances if item.index == index)


def kill_instance(adapter: LocalAdapter, app: AppRef, service_id: str, index: int = 0) -> None:
    """SIGKILL one instance's process group, as a crash would."""
    instance = _instance(adapter, app, service_id, index)
    if not process_alive(instance.pid, instance.start_ticks):
        return
    signal_group(instance.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(instance.pid, instance.start_ticks) and time.monotonic() < deadline:
        time.sleep(0.02)
    write_exit_file(instance.exit_file, -signal.SIGKILL)


def pause_instance(adapter: LocalAdapter, app: AppRef, service_id: str, paused: bool, index: int = 0) -> None:
    """SIGSTOP (or SIGCONT) one instance and every process below it, as a frozen machine would."""
    instance = _instance(adapter, app, service_id, index)
    assert process_alive(instance.pid, instance.start_ticks), f"{service_id} instance {index} is not running"
    signum = signal.SIGSTOP if paused else signal.SIGCONT
    for pid in [instance.pid, *descendant_pids(instance.pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
