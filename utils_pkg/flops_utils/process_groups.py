"""Processes that lead their own process group: ports for them, telling whether they still run, stopping them.

The suite (``manager.suite.processes``), the local adapter (``orchestrator_adapters.local_process``) and the
services' Flower children (``services.fl_runtime.processes``) each start processes their own way, in a
new session; they all find and stop them with this module. A process is known by its pid plus its kernel
start time (``/proc/<pid>/stat``), so a recycled pid is never mistaken for it, and a zombie counts as gone.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from signal import SIGKILL, SIGTERM


def free_port(host: str = "127.0.0.1", exclude: Iterable[int] = ()) -> int:
    """A port nothing listens on now (the kernel's pick) and that is not in ``exclude`` (planned, not bound yet)."""
    excluded = set(exclude)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in excluded:
            return port
    raise OSError("no free port found")


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PLANNED_PORTS_FLOOR = 20000  # planned listeners take ports from here up to the kernel's ephemeral range


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections and ``bind(0)`` (Linux default 32768-60999)."""
    try:
        low, high = (int(value) for value in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def planned_port(host: str = "127.0.0.1", exclude: Iterable[int] = (), *, seed: int | None = None) -> int:
    """A port for a listener that will bind later (a planned endpoint): free now, not in ``exclude``, and below
    the kernel's ephemeral range, so no outgoing connection can take it between the plan and the bind (at 100
    learners a cluster aggregator's port from :func:`free_port` was once taken that way). Falls back to
    :func:`free_port` when that range is exhausted."""
    low, _ = ephemeral_range()
    floor = min(PLANNED_PORTS_FLOOR, max(1024, low - 1000))
    excluded = set(exclude)
    candidates = list(range(floor, low))
    random.Random(seed).shuffle(candidates)
    for port in candidates[:2000]:
        if port not in excluded and port_is_free(host, port):
            return port
    return free_port(host, excluded)


def port_is_free(host: str, port: int) -> bool:
    """True when a server could listen on ``port`` now (old connections in TIME_WAIT do not count,
    as servers bind with SO_REUSEADDR; a listening socket does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/<pid>/stat`` after "pid (comm) ": state, ppid, pgrp, ...; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def every_stat() -> Iterator[tuple[int, list[str]]]:
    """``(pid, stat fields)`` of every process now in /proc."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat_fields(entry.name)
            if fields is not None:
                yield int(entry.name), fields


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when there is no such process."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def ended(fields: list[str]) -> bool:
    """A zombie whose threads have all exited. A zombie *leader* with live threads is still
    tearing down (e.g. after SIGKILL) and may still hold files and sockets."""
    return not fields or (fields[0] in ("Z", "X") and (len(fields) < 18 or int(fields[17]) <= 1))


def process_alive(pid: int, ticks: int | None) -> bool:
    """True while ``pid`` runs and is the same process (not a zombie, not a reused pid; ``ticks`` None: any)."""
    if pid <= 1:
        return False
    fields = stat_fields(pid)
    if fields is None or ended(fields):
        return False
    return ticks is None or (len(fields) > 19 and int(fields[19]) == ticks)


def group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process is in process group ``pgid``."""
    return any(len(fields) > 2 and fields[2] == str(pgid) and not ended(fields) for _pid, fields in every_stat())


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to process group ``pgid``; a group that is gone (or not ours) is left alone."""
    if pgid <= 1:  # killpg(0) would signal our own group
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_group(
    pgid: int, grace_s: float, *, reap: Callable[[], object] | None = None, kill_wait_s: float = 5.0
) -> bool:
    """SIGTERM process group ``pgid``, SIGKILL what is left of it after ``grace_s``; True once it is gone.

    Waits for the whole group, not just its leader, so helpers the leader started get
    their grace time too. ``reap`` collects the leader when it is the caller's child.
    """

    def gone_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if reap is not None:
                reap()
            if not group_alive(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    signal_group(pgid, SIGTERM)
    if gone_within(grace_s):
        return True
    signal_group(pgid, SIGKILL)
    return gone_within(kill_wait_s)
