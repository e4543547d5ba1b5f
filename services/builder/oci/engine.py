"""buildah and podman on this host, run against FLOps' container storage (see
:mod:`flops_utils.container_storage` for its layout and configuration files)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from flops_utils.container_storage import (
    ContainerStorage,
    ContainerToolMissing,
    atomic_write,
    install_registry_ca,
)
from flops_utils.container_storage import StorageSettings as EngineSettings
from flops_utils.container_storage import default_root as default_root
from flops_utils.container_storage import find_tool as find_storage_tool
from flops_utils.message_text import one_line
from flops_utils.service_config import RegistrySettings
from services.builder.errors import BuildError
from services.builder.process import CommandOutcome, run_command

__all__ = [
    "ContainerEngine",
    "EngineError",
    "EngineSettings",
    "default_root",
    "describe_failure",
    "find_tool",
    "install_registry_ca",
]

TOOL_TIMEOUT_S = 900.0


class EngineError(BuildError):
    """buildah/podman failed or is missing; the message is one line."""


def find_tool(name: str) -> str:
    """Absolute path of a system tool (EngineError when it is missing)."""
    try:
        return find_storage_tool(name)
    except ContainerToolMissing as error:
        raise EngineError(str(error)) from None


class ContainerEngine(ContainerStorage):
    """Runs buildah/podman against FLOps' storage; remembers every command it ran (without secrets)."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        super().__init__(settings)
        self.history: list[tuple[str, ...]] = []

    def write_configuration(self) -> dict[str, str]:
        try:
            return super().write_configuration()
        except ContainerToolMissing as error:
            raise EngineError(str(error)) from None

    def transport_args(self, registry: RegistrySettings) -> list[str]:
        """buildah push/pull options for ``registry``: TLS verification, its CA, its credentials file."""
        args = [f"--tls-verify={'true' if registry.verifies_tls else 'false'}"]
        cert_dir = install_registry_ca(self.root, registry)
        if cert_dir is not None:
            args += ["--cert-dir", str(cert_dir)]
        auth = self.auth_file(registry)
        if auth is not None:
            args += ["--authfile", str(auth)]
        return args

    def auth_file(self, registry: RegistrySettings) -> Path | None:
        """A credentials file for ``registry`` (None without credentials)."""
        if not registry.username:
            return None
        token = base64.b64encode(f"{registry.username}:{registry.password or ''}".encode()).decode()
        document = json.dumps({"auths": {registry.address: {"auth": token}}}, indent=1) + "\n"
        name = hashlib.sha256(document.encode()).hexdigest()[:16]
        directory = self.root / "auth"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        path = directory / f"{name}.json"
        atomic_write(path, document, mode=0o600)
        return path

    # -- running tools ---------------------------------------------------------------
    def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        timeout: float = TOOL_TIMEOUT_S,
        check: bool = True,
        what: str = "",
        extra_env: Mapping[str, str] | None = None,
    ) -> CommandOutcome:
        """Run ``tool args``; raise :class:`EngineError` (last error line) unless it succeeds or ``check`` is off."""
        binary = find_tool(tool)
        env = self.environment()
        if extra_env:
            env.update(extra_env)
        self.history.append((tool, *args))
        try:
            outcome = run_command([binary, *args], timeout=timeout, env=env, cwd=self.root)
        except OSError as error:
            raise EngineError(f"cannot run {tool}: {error.strerror or error}") from None
        if check and not outcome.ok:
            action = what or f"{tool} {args[0] if args else ''}".strip()
            raise EngineError(f"{action} failed: {describe_failure(outcome, timeout)}")
        return outcome

    def buildah(self, *args: str, timeout: float = TOOL_TIMEOUT_S, what: str = "") -> str:
        return self.run("buildah", args, timeout=timeout, what=what).stdout

    def image_exists(self, reference: str) -> bool:
        outcome = self.run(
            "buildah",
            ["inspect", "--type", "image", "--format", "{{.FromImageID}}", reference],
            timeout=60,
            check=False,
        )
        return outcome.ok

    def image_size(self, reference: str) -> int | None:
        """Uncompressed size in bytes of a local image (None when unknown)."""
        outcome = self.run("podman", ["image", "inspect", "--format", "{{.Size}}", reference], timeout=60, check=False)
        text = outcome.stdout.strip()
        return int(text) if outcome.ok and text.isdigit() else None

    def mutating_commands(self) -> list[tuple[str, ...]]:
        """Commands that built, changed or pushed something (what a cache hit must not run)."""
        verbs = {"from", "run", "commit", "copy", "add", "push", "build", "bud", "manifest", "pull", "tag"}
        return [
            command for command in self.history if command[0] == "buildah" and len(command) > 1 and command[1] in verbs
        ]


def describe_failure(outcome: CommandOutcome, timeout: float) -> str:
    if outcome.timed_out:
        return f"timed out after {timeout:g} s"
    lines = [line.strip() for line in (outcome.stderr + "\n" + outcome.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "fatal")) or " error" in line.lower()]
    chosen = errors[-1] if errors else (lines[-1] if lines else f"exit code {outcome.returncode}")
    return one_line(chosen, 300)
