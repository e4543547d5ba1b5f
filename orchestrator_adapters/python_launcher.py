"""Run a Python program in this very process and record its exit code in a file.

    python .../python_launcher.py EXIT_FILE MEMORY_LIMIT_KB (-m MODULE | -c CODE | SCRIPT) [ARG...]

The local adapter starts Python commands through this file instead of a ``/bin/sh`` wrapper
(:mod:`orchestrator_adapters.local_process`): the service is one process, not a shell plus the
service, and its exit code still reaches disk when no manager is there to wait on it (a manager
started later reads the file). It is run by path, not with ``-m``, so it works with any
interpreter (a project's environment or the manager's) and a user's folder of the same name cannot
shadow it; it imports only the standard library.

What is recorded (what ``Popen.returncode`` would say): the code of ``SystemExit`` (0 when the
program returns; 1 for an uncaught exception, whose traceback Python prints as usual), ``-N`` for a
death by a signal ``N`` that the program did not handle (SIGTERM, SIGHUP, SIGINT), written just
before the signal is delivered again with its default action. The file is written at the very end,
after non-daemon threads and other ``atexit`` handlers, by this process only (not by forked
children). Nothing can record SIGKILL or ``os._exit``: then the adapter's watcher thread (while the
manager that started the process runs) or the adapter's own kill records the code, or none is known.
``MEMORY_LIMIT_KB`` > 0 caps the address space (``ulimit -v``) before the program starts; when
that fails the code is 125.
"""

import os
import sys

# Running a file puts its own folder first on sys.path (unless -P / PYTHONSAFEPATH); the program must
# see what ``python -m`` / ``-c`` / a script would: fix that before importing anything else.
_MODE = sys.argv[3] if len(sys.argv) > 3 else ""
if _MODE and sys.path and sys.path[0] == os.path.dirname(os.path.realpath(__file__)):
    if _MODE == "-m":
        sys.path[0] = os.getcwd()
    elif _MODE == "-c":
        sys.path[0] = ""
    else:
        sys.path[0] = os.path.dirname(os.path.realpath(_MODE))

import atexit  # noqa: E402
import contextlib  # noqa: E402
import resource  # noqa: E402
import runpy  # noqa: E402
import signal  # noqa: E402
import types  # noqa: E402

USAGE = "usage: python_launcher.py EXIT_FILE MEMORY_LIMIT_KB (-m MODULE | -c CODE | SCRIPT) [ARG...]"
FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
LIMIT_FAILED = 125


class ExitRecord:
    """The exit-code file of this process, written once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.code: int | None = None

    def write(self) -> None:
        if self.code is None or os.getpid() != self.pid:  # a forked child's exit is not ours
            return
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w") as handle:
                handle.write(f"{self.code}\n")
            os.replace(temporary, self.path)
        except OSError as error:
            print(f"python_launcher: cannot record exit code {self.code} in {self.path}: {error}", file=sys.stderr)
        self.code = None

    def die_of(self, signum: int, _frame: object) -> None:
        """A fatal signal the program left to its default action: record it, then die of it."""
        if os.getpid() == self.pid:
            self.code = -signum
            self.write()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def exit_code(stop: SystemExit) -> int:
    """The status Python exits with for ``stop``."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code & 0xFF
    return 1  # Python prints the object and exits 1


def run_program(mode: str, target: str, args: list[str]) -> None:
    if mode == "-m":
        sys.argv = [target, *args]  # run_module puts the module's file in argv[0], as -m does
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif mode == "-c":
        sys.argv = ["-c", *args]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(target, "<string>", "exec"), main.__dict__)
    else:
        sys.argv = [mode, *args]
        runpy.run_path(mode, run_name="__main__")


def launch(argv: list[str]) -> None:
    if len(argv) < 3 or (argv[2] in ("-m", "-c") and len(argv) < 4):
        raise SystemExit(USAGE)
    exit_file, limit_kb, mode = argv[0], int(argv[1]), argv[2]
    record = ExitRecord(exit_file)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(exit_file)
    atexit.register(record.write)  # registered first, so it runs last
    if limit_kb > 0:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit_kb * 1024, limit_kb * 1024))
        except (OSError, ValueError) as error:
            print(f"python_launcher: cannot limit memory to {limit_kb} KiB: {error}", file=sys.stderr)
            record.code = LIMIT_FAILED
            raise SystemExit(LIMIT_FAILED) from None
    for signum in FATAL_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, record.die_of)
    target, args = (argv[3], argv[4:]) if mode in ("-m", "-c") else (mode, argv[3:])
    try:
        run_program(mode, target, args)
    except SystemExit as stop:
        record.code = exit_code(stop)
        raise
    except KeyboardInterrupt:
        record.code = -signal.SIGINT  # Python ends by dying of SIGINT, after atexit
        raise
    except BaseException as error:  # what Python does with an uncaught exception, minus this file's frames
        trace = _program_frames(error.__traceback__)
        sys.excepthook(type(error), error.with_traceback(trace), trace)
        record.code = 1
        raise SystemExit(1) from None
    record.code = 0


def _program_frames(trace: types.TracebackType | None) -> types.TracebackType | None:
    """``trace`` from the program's first frame on (without the launcher's and runpy's)."""
    own = {__file__, runpy.__file__, "<frozen runpy>"}
    while trace is not None and trace.tb_frame.f_code.co_filename in own:
        trace = trace.tb_next
    return trace


if __name__ == "__main__":
    launch(sys.argv[1:])
