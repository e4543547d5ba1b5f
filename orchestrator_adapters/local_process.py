"""Starting, watching and stopping supervised local processes.

Each process leads its own process group (``start_new_session``) and its exit code is
written to a file when it ends: a Python command (``python -m M``, ``python -c C``,
``python script``) runs inside :mod:`orchestrator_adapters.python_launcher`, in the same
process, which writes the file itself; any other command runs under a tiny ``sh`` wrapper
that does (one more process). The manager that started it also waits on it in a watcher
thread; a manager started later finds the process by pid (checked against its start time)
and its outcome in the exit-code file (see ``flops_utils.process_groups``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flops_utils.process_groups import ended, every_stat, group_alive, process_alive, signal_group, start_ticks
from orchestrator_adapters.base import AdapterError, killing_signal

# "$0" is the exit-code file, "$@" the command (not a Python one, see _launch_command). A signal
# that kills the wrapper itself leaves no file; the watcher thread writes one then.
_WRAPPER = 'rm -f "$0"; {limit}"$@"; code=$?; printf "%s\\n" "$code" > "$0.tmp" && mv -f "$0.tmp" "$0"; exit "$code"'
_TAIL_BYTES = 16384
_LAUNCHER = Path(__file__).with_name("python_launcher.py")
_PYTHON_NAME = re.compile(r"python(3(\.\d+)?)?")
OWNER_ENV = "FLOPS_OWNER"  # "<app id>/<service id>/<index>" of what the local adapter started; inherited


def read_exit_file(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def write_exit_file(path: str, code: int) -> None:
    """Record ``code`` unless the process (its launcher or wrapper) already did."""
    target = Path(path)
    if target.exists():
        return
    temporary = target.with_name(target.name + ".watcher")
    with contextlib.suppress(OSError):
        temporary.write_text(f"{code}\n")
        if not target.exists():
            os.replace(temporary, target)
        temporary.unlink(missing_ok=True)


def last_log_line(path: str, limit: int = 300) -> str:
    """The last non-empty line of a log, trimmed to ``limit`` characters."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_exit(code: int | None, last_line: str) -> str:
    """One line saying how a process ended, with the last thing it logged."""
    if code is None:
        reason = "process was killed before it recorded an exit code"
    elif code < 0:
        reason = f"process exited with code {code} (killed by {killing_signal(code) or f'signal {-code}'})"
    elif code > 128 and (name := killing_signal(code)):
        reason = f"process exited with code {code} (killed by {name})"
    else:
        reason = f"process exited with code {code}"
    return f"{reason}: {last_line}" if last_line else reason


def spawn(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    log_file: str,
    exit_file: str,
    memory_limit_mb: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session so that its exit code lands in ``exit_file``, output
    appended to ``log_file``."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            _launch_command(command, exit_file, memory_limit_mb),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _launch_command(command: list[str], exit_file: str, memory_limit_mb: int | None) -> list[str]:
    """``command`` run in-process by the Python launcher when it is a plain Python command
    (interpreter, then ``-m``/``-c``/a script), else under the ``sh`` wrapper."""
    limit_kb = memory_limit_mb * 1024 if memory_limit_mb else 0
    if len(command) >= 2 and _PYTHON_NAME.fullmatch(Path(command[0]).name):
        mode = command[1]
        if (mode in ("-m", "-c") and len(command) >= 3) or not mode.startswith("-"):
            return [command[0], str(_LAUNCHER), exit_file, str(limit_kb), *command[1:]]
    limit = f"ulimit -v {limit_kb} || exit 125; " if limit_kb else ""
    return ["/bin/sh", "-c", _WRAPPER.format(limit=limit), exit_file, *command]


def watch(
    process: subprocess.Popen[bytes], exit_file: str, on_exit: Callable[[], None] | None = None
) -> threading.Thread:
    """Reap ``process`` when it ends, make sure its exit code is on disk, then call ``on_exit``."""

    def wait() -> None:
        code = process.wait()
        write_exit_file(exit_file, code)
        if on_exit is not None:
            on_exit()

    thread = threading.Thread(target=wait, name=f"local-watch-{process.pid}", daemon=True)
    thread.start()
    return thread


def descendant_pids(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), parents before children, whatever session it moved to."""
    children: dict[int, list[int]] = {}
    for child, fields in every_stat():
        children.setdefault(int(fields[1]), []).append(child)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def owned_processes(owner_prefixes: Iterable[str]) -> list[tuple[int, int | None]]:
    """(pid, start ticks) of live processes whose ``FLOPS_OWNER`` starts with one of ``owner_prefixes``.

    Every process the local adapter starts carries its owner in its environment, and its
    children inherit it: this finds them after they moved to another session or were
    re-parented to PID 1, where neither the process group nor the tree reaches them.
    """
    needles = [f"{OWNER_ENV}={prefix}".encode() for prefix in owner_prefixes]

    def owned(pid: int) -> bool:
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        return any(entry.startswith(needle) for entry in environment.split(b"\0") for needle in needles)

    return _live_processes(owned) if needles else []


def processes_in(folders: Iterable[Path]) -> list[tuple[int, int | None]]:
    """(pid, start ticks) of live processes whose working directory is inside one of ``folders``."""
    roots = [Path(folder).resolve() for folder in folders]

    def inside(pid: int) -> bool:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        return any(cwd == root or root in cwd.parents for root in roots)

    return _live_processes(inside) if roots else []


def _live_processes(matches: Callable[[int], bool]) -> list[tuple[int, int | None]]:
    """(pid, start ticks) of live processes other than this one for which ``matches(pid)`` holds
    (a process that ends while it is being read does not match)."""
    found = []
    for pid, fields in every_stat():
        if pid == os.getpid() or ended(fields):
            continue
        try:
            if matches(pid):
                found.append((pid, int(fields[19]) if len(fields) > 19 else None))
        except OSError:
            continue
    return found


def _signal_processes(processes: Iterable[tuple[int, int | None]], signum: int) -> None:
    for pid, ticks in processes:
        if process_alive(pid, ticks):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)


def stop_groups(
    processes: list[tuple[int, int | None]],
    grace_s: float,
    owners: Iterable[str] = (),
    folders: Iterable[Path] = (),
) -> None:
    """TERM each (pid, start ticks) process group, KILL what is left of it after ``grace_s``.

    Waits for the whole group, not just its leader, so a service that shuts down
    gracefully gets its grace time even after the group's leader is gone. Processes below
    a leader that left its group, processes carrying one of ``owners`` (see
    :func:`owned_processes`) and processes working inside ``folders`` get the same
    treatment, so nothing a service started outlives it.
    """
    owners, folders = list(owners), list(folders)
    targets = [pid for pid, ticks in processes if process_alive(pid, ticks) or group_alive(pid)]

    def loose() -> set[tuple[int, int | None]]:
        below = [(child, start_ticks(child)) for pid in targets for child in descendant_pids(pid)]
        return {*below, *owned_processes(owners), *processes_in(folders)}

    stragglers = loose()
    for pid in targets:
        signal_group(pid, signal.SIGTERM)
    _signal_processes(stragglers, signal.SIGTERM)

    def anything_alive() -> bool:
        return any(group_alive(pid) for pid in targets) or any(process_alive(*p) for p in stragglers)

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and anything_alive():
        time.sleep(0.1)
    stragglers |= loose()  # what was started meanwhile
    for pid in targets:
        signal_group(pid, signal.SIGKILL)
    _signal_processes(stragglers, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and anything_alive():
        time.sleep(0.05)


class Spawner:
    """Starts supervised processes for one state directory and keeps the ones it started until they are reaped.

    The node fleet and the host processes of an adapter share one: a process this object started
    but whose wrapper was killed gets its exit code from ``Popen.wait``. Owner markers (``OWNER_ENV``)
    begin with a key of the state directory, so another adapter's app of the same name is not ours.
    """

    def __init__(self, state_dir: Path) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # pid -> processes this object started
        self._lock = threading.Lock()
        self._owner_key = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:12]

    def owner(self, *parts: str) -> str:
        """The owner-marker prefix of everything (no parts), an app, a service or one instance."""
        return "/".join((self._owner_key, *parts, ""))

    def spawn(
        self,
        command: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        log_file: str,
        exit_file: str,
        memory_limit_mb: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """:func:`spawn` and :func:`watch` ``command``; an OSError becomes a one-line ``AdapterError``."""
        try:
            process = spawn(
                command, env=env, cwd=cwd, log_file=log_file, exit_file=exit_file, memory_limit_mb=memory_limit_mb
            )
        except OSError as error:
            raise AdapterError(f"cannot start {command[0]}: {error.strerror or error}") from error
        with self._lock:
            self._children[process.pid] = process
        watch(process, exit_file, on_exit=lambda: self._forget(process))
        return process

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        """The watcher reaped ``process`` and its exit code is on disk: nothing more to keep."""
        with self._lock:
            if self._children.get(process.pid) is process:
                del self._children[process.pid]

    def exit_code(self, pid: int, exit_file: str) -> int | None:
        code = read_exit_file(exit_file)
        if code is None:
            with self._lock:
                process = self._children.get(pid)
            if process is not None:  # the wrapper itself was killed: the watcher records how
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = process.wait(timeout=2.0)
        return code
