"""A private PostgreSQL server for a test: initdb in a temporary directory, run as user postgres.

PostgreSQL refuses to run as root, so its files belong to the ``postgres`` account
(Debian's package creates it) and the server listens on loopback and a socket in its own
directory. Password authentication, as a deployment would use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from flops_utils.process_groups import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER, PASSWORD = "mlflow", "s3cret-pw"


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="flops-pg-"))  # under /tmp: reachable by the postgres user
        self._process: subprocess.Popen[bytes] | None = None

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    def start(self) -> PostgresServer:
        data = self.directory / "data"
        password_file = self.directory / "password"
        password_file.write_text(PASSWORD)
        shutil.chown(self.directory, "postgres")
        shutil.chown(password_file, "postgres")
        subprocess.run(
            self._as_postgres(
                str(BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        log = (self.directory / "server.log").open("wb")
        self._process = subprocess.Popen(
            self._as_postgres(
                str(BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.directory),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            ).returncode
            != 0
        ):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {(self.directory / 'server.log').read_text()[-500:]}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGINT)  # fast shutdown
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
