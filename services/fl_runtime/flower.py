"""Flower deployment processes (SuperLink, SuperNode) and the ``flwr`` CLI against one SuperLink.

In flwr 1.41 a SuperLink serves its Fleet, Control and Runtime APIs on one HTTP port
(``--host``/``--port``); a SuperNode serves its own Runtime API on another port.
Every Flower process gets a private ``FLWR_HOME`` so apps and configs never mix.

With :class:`TlsFiles` that port speaks HTTPS only: the SuperLink gets its certificate
and key, SuperNodes and the ``flwr`` CLI verify it against the project's CA.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from flops_utils.process_groups import free_port
from flops_utils.service_config import FlowerTls
from services.fl_runtime.processes import ManagedProcess, child_environment, flower_binary
from services.fl_runtime.warm_start import SOCKET_ENV, write_shim

CONNECTION_NAME = "flops"
CLI_TIMEOUT_S = 120.0


class FlowerError(RuntimeError):
    """A Flower process or command failed; the message is one line."""


def connect_host(bind_host: str) -> str:
    """Where a local client reaches a server bound to ``bind_host``."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "", "::") else bind_host


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def serves(self) -> bool:
        return self.cert_file is not None and self.key_file is not None


def _write_private(path: Path, text: str) -> Path:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def write_tls_files(tls: FlowerTls | None, directory: Path) -> TlsFiles | None:
    """Flower takes certificates as files: write the config's PEMs (the key with mode 0600)."""
    if tls is None:
        return None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_file = directory / "ca.pem"
    ca_file.write_text(tls.ca_pem)
    if not (tls.cert_pem and tls.key_pem):
        return TlsFiles(ca_file)
    cert_file = directory / "superlink.pem"
    cert_file.write_text(tls.cert_pem)
    return TlsFiles(ca_file, cert_file, _write_private(directory / "superlink.key", tls.key_pem))


def _healthy(host: str, port: int, tls: TlsFiles | None = None) -> bool:
    scheme = "https" if tls is not None else "http"
    context = ssl.create_default_context(cafile=str(tls.ca_file)) if tls is not None else None
    try:
        with urllib.request.urlopen(f"{scheme}://{host}:{port}/health", timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class SuperLink:
    """``flower-superlink`` on ``bind_host:port`` with its state under ``work_dir`` (``--insecure`` without TLS)."""

    def __init__(
        self, bind_host: str, port: int, work_dir: Path, name: str = "superlink", tls: TlsFiles | None = None
    ) -> None:
        if tls is not None and not tls.serves:
            raise ValueError("a SuperLink with TLS needs its certificate and key")
        self.tls = tls
        self.bind_host = bind_host
        self.port = port
        self.work_dir = work_dir
        self.name = name
        self.process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"{connect_host(self.bind_host)}:{self.port}"

    def start(self, ready_timeout: float = 90.0) -> SuperLink:
        home = self.work_dir / f"{self.name}-home"
        home.mkdir(parents=True, exist_ok=True)
        if self.tls is not None:
            security = [
                "--ssl-ca-certfile",
                str(self.tls.ca_file),
                "--ssl-certfile",
                str(self.tls.cert_file),
                "--ssl-keyfile",
                str(self.tls.key_file),
            ]
        else:
            security = ["--insecure"]
        command = [
            flower_binary("flower-superlink"),
            *security,
            "--host",
            self.bind_host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        env = child_environment({"FLWR_HOME": str(home)})
        self.process = ManagedProcess(self.name, command, self.work_dir / f"{self.name}.log", env).start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise FlowerError(f"{self.name} exited at start: {self.process.log_tail()}")
            if _healthy(connect_host(self.bind_host), self.port, self.tls):
                return self
            time.sleep(0.3)
        raise FlowerError(f"{self.name} not healthy on {self.address} after {ready_timeout:g} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def write_toml(path: Path, values: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(values))
    return path


class SuperNode:
    """``flower-supernode`` connected to a SuperLink's Fleet API (verified with ``ca_file``, else ``--insecure``).

    With ``warm_preload`` (module names), ClientApp processes are forked from a warm
    starter that imported those modules once (see :mod:`services.fl_runtime.warm_start`).
    """

    def __init__(
        self,
        superlink_address: str,
        work_dir: Path,
        node_config: dict[str, str],
        env: dict[str, str] | None = None,
        name: str = "supernode",
        cwd: str | None = None,
        warm_preload: list[str] | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.superlink_address = superlink_address
        self.ca_file = ca_file
        self.work_dir = work_dir
        self.node_config = node_config
        self.extra_env = env or {}
        self.name = name
        self.cwd = cwd
        self.warm_preload = warm_preload
        self.process: ManagedProcess | None = None
        self.warm_starter: ManagedProcess | None = None
        self._socket_dir: Path | None = None
        self._env: dict[str, str] | None = None

    def prepare(self) -> SuperNode:
        """Start the warm ClientApp starter (if any): its imports overlap the wait for the SuperLink."""
        if self._env is not None:
            return self
        home = self.work_dir / f"{self.name}-home"
        home.mkdir(parents=True, exist_ok=True)
        env = child_environment({"FLWR_HOME": str(home), **self.extra_env})
        if self.warm_preload is not None:
            env = self._start_warm_starter(env)
        self._env = env
        return self

    def start(self) -> SuperNode:
        env = self.prepare()._env
        assert env is not None
        node_config_file = write_toml(self.work_dir / f"{self.name}-node-config.toml", dict(self.node_config))
        flower_binary("flower-supernode")  # fail early and clearly when Flower is missing
        command = [
            sys.executable,
            "-m",
            "services.fl_runtime.supernode",  # flower-supernode with a shorter idle poll
            *(["--root-certificates", str(self.ca_file)] if self.ca_file else ["--insecure"]),
            "--superlink",
            self.superlink_address,
            "--port",
            str(free_port()),
            "--node-config",
            str(node_config_file),
        ]
        log_path = self.work_dir / f"{self.name}.log"
        self.process = ManagedProcess(self.name, command, log_path, env, cwd=self.cwd).start()
        return self

    def _start_warm_starter(self, env: dict[str, str]) -> dict[str, str]:
        # Unix socket paths are limited to ~100 bytes: keep the socket in a short temp dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="flops-warm-"))
        socket_path = self._socket_dir / "clientapp.sock"
        shim_dir = write_shim(self.work_dir / f"{self.name}-bin").parent
        starter_env = dict(env)
        if self.cwd:
            starter_env["FLOPS_WARM_APP_DIR"] = self.cwd
        command = [sys.executable, "-m", "services.fl_runtime.warm_start", str(socket_path), *(self.warm_preload or [])]
        log_path = self.work_dir / f"{self.name}-warm.log"
        self.warm_starter = ManagedProcess(f"{self.name}-warm", command, log_path, starter_env, cwd=self.cwd).start()
        return {**env, SOCKET_ENV: str(socket_path), "PATH": f"{shim_dir}{os.pathsep}{env['PATH']}"}

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def log_tail(self) -> str:
        return self.process.log_tail() if self.process else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.warm_starter is not None:
            self.warm_starter.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


class FlowerControl:
    """The ``flwr`` CLI pointed at one SuperLink's Control API through a private Flower config."""

    def __init__(self, control_address: str, work_dir: Path, ca_file: Path | None = None) -> None:
        self.control_address = control_address
        self.ca_file = ca_file
        self.home = work_dir / "flwr-cli-home"
        self.log_path = work_dir / "flwr-cli.log"

    def _prepare(self) -> None:
        connection: dict[str, Any] = {"address": self.control_address, "insecure": self.ca_file is None}
        if self.ca_file is not None:
            connection["root-certificates"] = str(self.ca_file)
        config = {"superlink": {"default": CONNECTION_NAME, CONNECTION_NAME: connection}}
        write_toml(self.home / "config.toml", config)

    def _flwr(self, *args: str) -> dict[str, Any]:
        self._prepare()
        command = [flower_binary("flwr"), *args, "--format", "json"]
        env = child_environment({"FLWR_HOME": str(self.home)})
        try:
            done = subprocess.run(
                command, capture_output=True, env=env, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
            )
        except subprocess.TimeoutExpired:
            raise FlowerError(f"flwr {args[0]} did not answer in {CLI_TIMEOUT_S:g} s") from None
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        with self.log_path.open("a") as log:
            log.write(f"$ {' '.join(command)}\n{out}\n{err}\n")
        try:
            answer: dict[str, Any] = json.loads(out[out.find("{") :]) if "{" in out else {}
        except json.JSONDecodeError:
            answer = {}
        if done.returncode != 0 or not answer.get("success", False):
            reason = answer.get("error-message") or err.strip() or out.strip() or f"exit code {done.returncode}"
            raise FlowerError(f"flwr {args[0]} failed: {' '.join(str(reason).split())[:300]}")
        return answer

    def start_run(self, app_dir: str, run_config: dict[str, Any], work_dir: Path) -> int:
        """Submit ``app_dir`` as a new run; return its run id."""
        overrides = write_toml(work_dir / "run-config.toml", run_config)
        answer = self._flwr("run", app_dir, CONNECTION_NAME, "--run-config", str(overrides))
        return int(answer["run-id"])

    def run_status(self, run_id: int) -> str:
        """Flower's status of a run, e.g. ``running``, ``finished:completed``, ``finished:failed``."""
        answer = self._flwr("ls", CONNECTION_NAME, "--run-id", str(run_id))
        runs = answer.get("runs") or []
        return str(runs[0].get("status", "unknown")) if runs else "unknown"


__all__ = [
    "FlowerControl",
    "FlowerError",
    "SuperLink",
    "SuperNode",
    "TlsFiles",
    "connect_host",
    "write_tls_files",
    "write_toml",
]
