"""Run a container's command as a local process, for the orchestrator stand-ins in the tests.

The Kubernetes API emulator and the Oakestra contract server use it to give pods and
instances real outcomes (exit codes, the last lines a crash wrote), so the adapter contract
suite can run against both without a cluster. The image is ignored: commands run on the host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from flops_utils.process_groups import signal_group


class LocalProcess:
    def __init__(self, argv: list[str], environment: dict[str, str]) -> None:
        self._log = tempfile.NamedTemporaryFile(prefix="flops-pod-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        env = {**os.environ, **environment}
        self._process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def poll(self) -> int | None:
        return self._process.poll()

    def tail(self, lines: int = 5) -> str:
        """The last lines the process wrote (what ``FallbackToLogsOnError`` makes the termination message)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def kill(self) -> None:
        """Stop the whole process group and forget the log."""
        if self._process.poll() is None:
            signal_group(self._process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=10)
        self._log.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()
