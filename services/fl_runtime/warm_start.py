"""Warm ClientApp processes: a pre-imported parent forks one child per Flower task.

A SuperNode starts a fresh ``flwr-clientapp`` process for every message; importing
Flower, the user's model code and its ML library costs seconds per round. The
learner runs this *warm starter* next to its SuperNode: it imports all of that once
and waits on a Unix socket. The SuperNode finds a tiny ``flwr-clientapp`` shim first
on its PATH; the shim hands its arguments, environment, working directory and
stdin/stdout/stderr to the warm starter, which forks a child that runs Flower's own
``flwr-clientapp`` entry point, and passes the child's exit code back. The child is a
normal ClientApp process: it fetches its task, runs the ClientApp and exits, so
rounds never share state. Only imports are done before forking (no threads, no data),
which keeps fork safe. If the warm starter is not there, the shim runs the real
``flwr-clientapp``.

Run as ``python -m services.fl_runtime.warm_start SOCKET MODULE...``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
from pathlib import Path

log = logging.getLogger("flops.warm_start")

SOCKET_ENV = "FLOPS_WARM_CLIENTAPP_SOCKET"
SHIM_NAME = "flwr-clientapp"
ENTRY_MODULE = "flwr.supernode.cli.flwr_clientapp"
SOCKET_WAIT_S = 60.0

_SHIM = """#!{python} -S
# FLOps shim: run this ClientApp task in a child of the warm starter (see services.fl_runtime.warm_start).
import json, os, socket, struct, sys, time

REAL = {real!r}


def cold():
    os.execv(REAL, [REAL] + sys.argv[1:])


path = os.environ.get({env!r}, "")
deadline = time.monotonic() + {wait!r}
while path and not os.path.exists(path) and time.monotonic() < deadline:
    time.sleep(0.05)
try:
    link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    link.connect(path)
except OSError:
    cold()
request = json.dumps({{"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(link, [struct.pack("!I", len(request)) + request], [0, 1, 2])
answer = b""
while len(answer) < 4:
    chunk = link.recv(4 - len(answer))
    if not chunk:
        sys.exit(70)
    answer += chunk
sys.exit(struct.unpack("!i", answer)[0])
"""


def write_shim(bin_dir: Path) -> Path:
    """Write the ``flwr-clientapp`` shim into ``bin_dir`` (put it first on the SuperNode's PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    real = Path(sys.executable).parent / SHIM_NAME
    shim = bin_dir / SHIM_NAME
    shim.write_text(_SHIM.format(python=sys.executable, real=str(real), env=SOCKET_ENV, wait=SOCKET_WAIT_S))
    shim.chmod(0o755)
    return shim


# -- the warm starter ---------------------------------------------------------------------
def _read_request(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    data, fds, _flags, _address = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < 4:
        raise ConnectionError("short request")
    size = struct.unpack("!I", data[:4])[0]
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def _run_child(request: dict[str, object], fds: list[int]) -> int:
    """In the forked child: become the shim's process and run Flower's ClientApp entry point."""
    for target, fd in zip((0, 1, 2), fds, strict=False):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
    os.chdir(str(request["cwd"]))
    sys.argv = [str(arg) for arg in request["argv"]]  # type: ignore[attr-defined]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    entry = importlib.import_module(ENTRY_MODULE)
    try:
        entry.flwr_clientapp()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def _fork(request: dict[str, object], fds: list[int], close_in_child: list[socket.socket]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    code = 1
    try:
        for sock in close_in_child:
            sock.close()
        code = _run_child(request, fds)
    except BaseException:  # the child must never return into the server loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return 0  # unreachable


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else 1


def _remove_on_exit(socket_path: Path) -> None:
    """Leave no socket (or private temp dir) behind when stopped with SIGTERM."""

    def stop(signum: int, _frame: object) -> None:
        socket_path.unlink(missing_ok=True)
        if socket_path.parent.name.startswith("flops-warm-"):
            with contextlib.suppress(OSError):
                socket_path.parent.rmdir()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def serve(socket_path: Path, preload: list[str]) -> None:
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception as error:  # the child imports it again and reports properly
            log.warning("preloading %s failed: %s", module, error)
    importlib.import_module(ENTRY_MODULE)
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    scratch = socket_path.with_name(socket_path.name + ".new")
    scratch.unlink(missing_ok=True)
    listener.bind(str(scratch))
    listener.listen(32)
    os.replace(scratch, socket_path)  # appears only when ready
    _remove_on_exit(socket_path)
    log.info("warm ClientApp starter ready on %s (preloaded %s)", socket_path, ", ".join(preload) or "nothing")
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    while True:
        for _key, _events in selector.select(timeout=0.05):
            conn, _ = listener.accept()
            conn.settimeout(10.0)
            try:
                request, fds = _read_request(conn)
            except (OSError, ValueError, ConnectionError) as error:
                log.warning("bad request: %s", error)
                conn.close()
                continue
            pid = _fork(request, fds, [listener, *waiting.values(), conn])
            waiting[pid] = conn
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            finished = waiting.pop(pid, None)
            if finished is not None:
                with contextlib.suppress(OSError):
                    finished.sendall(struct.pack("!i", _exit_code(status)))
                finished.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    socket_path = Path(sys.argv[1])
    preload = sys.argv[2:]
    app_dir = os.environ.get("FLOPS_WARM_APP_DIR")
    if app_dir and app_dir not in sys.path:
        sys.path.append(app_dir)
    serve(socket_path, preload)


if __name__ == "__main__":
    main()
