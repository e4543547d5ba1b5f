"""FLOps' container storage on this host: its layout and the configuration files buildah and podman read.

Every FLOps process that touches containers (the OCI builder, the container adapter's
``podman system service``) uses the same storage root, so an image built once is
found again by the next build and by the adapter. The root defaults to
``~/.cache/flops/containers`` (``$FLOPS_CONTAINERS_DIR`` overrides it) and holds:

* ``engine/<driver>/storage`` - containers/storage graph root (overlay when the kernel
  allows an overlay mount here, else vfs; the choice is remembered in ``driver``);
* ``conf/`` - ``storage.conf``, ``containers.conf`` (runc, cgroupfs, raised ulimits)
  and one ``registries-<hash>.conf`` per set of insecure registries;
* ``auth/`` - registry credential files (mode 0600), so passwords never appear on a
  command line;
* ``home/.config/containers/certs.d/<host:port>/ca.crt`` - the CA of a registry with
  its own CA: buildah reads it with ``--cert-dir``, the podman service (whose ``HOME``
  is ``home/``) and the builder's HTTP client find it there too.

Builds run with ``BUILDAH_ISOLATION=chroot``: no user namespaces or extra daemons needed.
Shared by the OCI builder (``services.builder.oci.engine`` runs the tools) and the container
adapter (its ``podman system service``), so neither imports the other.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flops_utils.service_config import RegistrySettings

ROOT_ENV = "FLOPS_CONTAINERS_DIR"
DEFAULT_ULIMITS = ("nofile=20000:20000", "nproc=4096:4096")
_DRIVER_FILE = "driver"
_ENV_PREFIXES_DROPPED = ("CONTAINERS_", "BUILDAH_", "STORAGE_", "REGISTRIES_CONFIG_PATH")

Driver = Literal["overlay", "vfs"]


class ContainerToolMissing(RuntimeError):
    """A system tool (buildah, podman, an OCI runtime) is not installed; the message says which package."""


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or "~/.cache/flops/containers").expanduser()


@dataclass(frozen=True)
class StorageSettings:
    root: Path = field(default_factory=default_root)
    driver: Literal["auto", "overlay", "vfs"] = "auto"


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(scratch, mode)
    os.replace(scratch, path)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def find_tool(name: str) -> str:
    """Absolute path of a system tool, looking in the sbin folders too."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        raise ContainerToolMissing(f"{name} not found: install the Debian package '{name}' (make system-packages)")
    return found


def overlay_mount_works(probe_dir: Path) -> bool:
    """Whether the kernel lets us mount an overlay on this file system (root, no nested overlay)."""
    if os.geteuid() != 0:
        return False
    shutil.rmtree(probe_dir, ignore_errors=True)
    layers = {name: probe_dir / name for name in ("lower", "upper", "work", "merged")}
    for path in layers.values():
        path.mkdir(parents=True)
    options = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}"
    try:
        mounted = _quiet(["mount", "-t", "overlay", "overlay", "-o", options, str(layers["merged"])])
        if mounted:
            _quiet(["umount", str(layers["merged"])])
        return mounted
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def registry_cert_dir(root: Path, address: str) -> Path:
    """Where containers/image looks for ``address``'s CA when ``HOME`` is ``root/home``."""
    return root / "home" / ".config" / "containers" / "certs.d" / address


def install_registry_ca(root: Path, registry: RegistrySettings) -> Path | None:
    """Write ``registry.ca_pem`` as ``ca.crt`` in its cert dir; return that dir (None without a CA)."""
    if not registry.ca_pem:
        return None
    directory = registry_cert_dir(root, registry.address)
    atomic_write(directory / "ca.crt", registry.ca_pem)
    return directory


def _quiet(args: list[str]) -> bool:
    return subprocess.run(args, capture_output=True, timeout=20, check=False).returncode == 0


class ContainerStorage:
    """FLOps' storage root and the configuration every tool call on it uses (written on first use)."""

    def __init__(self, settings: StorageSettings | None = None) -> None:
        self.settings = settings or StorageSettings()
        self.root = self.settings.root
        self._environment: dict[str, str] | None = None
        self._driver: Driver | None = None
        self._lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------
    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    def driver(self) -> Driver:
        """The storage driver for this root: an explicit setting, else decided once and kept in ``<root>/driver``."""
        if self._driver is not None:
            return self._driver
        if self.settings.driver != "auto":
            self._driver = self.settings.driver  # each driver has its own graph root
            return self._driver
        self.root.mkdir(parents=True, exist_ok=True)
        with self.locked("driver"):
            record = self.root / _DRIVER_FILE
            text = record.read_text().strip() if record.is_file() else ""
            chosen: Driver
            if text in ("overlay", "vfs"):
                chosen = "overlay" if text == "overlay" else "vfs"
            else:
                chosen = "overlay" if overlay_mount_works(self.root / ".overlay-probe") else "vfs"
                atomic_write(record, chosen + "\n")
        self._driver = chosen
        return chosen

    def graph_root(self) -> Path:
        return self.root / "engine" / self.driver() / "storage"

    def run_root(self) -> Path:
        """Runtime state (mount counts, locks): on /run when we may write there, else next to the graph root."""
        graph = self.graph_root()
        tag = hashlib.sha256(str(graph).encode()).hexdigest()[:12]
        run = Path("/run")
        if os.access(run, os.W_OK):
            return run / "flops-containers" / tag
        return graph.parent / "run"

    def _runtime(self) -> str:
        for name in ("runc", "crun"):
            try:
                return find_tool(name)
            except ContainerToolMissing:
                continue
        raise ContainerToolMissing("no OCI runtime found: install the Debian package 'runc' (make system-packages)")

    def write_configuration(self) -> dict[str, str]:
        """Write storage.conf and containers.conf; return the environment every tool call uses."""
        with self._lock:
            if self._environment is not None:
                return dict(self._environment)
            driver = self.driver()
            graph, run = self.graph_root(), self.run_root()
            graph.mkdir(parents=True, exist_ok=True, mode=0o700)
            run.mkdir(parents=True, exist_ok=True, mode=0o700)
            storage = self.conf_dir / "storage.conf"
            atomic_write(
                storage,
                "\n".join(
                    [
                        "# written by FLOps (flops_utils.container_storage)",
                        "[storage]",
                        f"driver = {_toml_string(driver)}",
                        f"graphroot = {_toml_string(str(graph))}",
                        f"runroot = {_toml_string(str(run))}",
                        "",
                    ]
                ),
            )
            containers = self.conf_dir / "containers.conf"
            ulimits = ", ".join(_toml_string(limit) for limit in DEFAULT_ULIMITS)
            atomic_write(
                containers,
                "\n".join(
                    [
                        "# written by FLOps (flops_utils.container_storage)",
                        "[containers]",
                        f"default_ulimits = [{ulimits}]",
                        'log_driver = "k8s-file"',
                        "[engine]",
                        f"runtime = {_toml_string(Path(self._runtime()).name)}",
                        'cgroup_manager = "cgroupfs"',
                        'events_logger = "file"',
                        f"tmp_dir = {_toml_string(str(run / 'libpod'))}",
                        "",
                    ]
                ),
            )
            base = {key: value for key, value in os.environ.items() if not key.startswith(_ENV_PREFIXES_DROPPED)}
            base.update(
                CONTAINERS_STORAGE_CONF=str(storage),
                CONTAINERS_CONF=str(containers),
                CONTAINERS_REGISTRIES_CONF=str(self.registries_conf(())),
                BUILDAH_ISOLATION="chroot",
                STORAGE_DRIVER=driver,
            )
            self._environment = base
            return dict(base)

    def registries_conf(self, insecure: Sequence[str]) -> Path:
        """A registries.conf that marks ``insecure`` (host:port) as plain-HTTP / unverified registries."""
        addresses = sorted(set(insecure))
        name = hashlib.sha256("\n".join(addresses).encode()).hexdigest()[:12]
        path = self.conf_dir / f"registries-{name}.conf"
        lines = ["# written by FLOps (flops_utils.container_storage)", "unqualified-search-registries = []"]
        for address in addresses:
            lines += ["", "[[registry]]", f"location = {_toml_string(address)}", "insecure = true"]
        atomic_write(path, "\n".join(lines) + "\n")
        return path

    def environment(self, insecure_registries: Sequence[str] = ()) -> dict[str, str]:
        env = self.write_configuration()
        if insecure_registries:
            env["CONTAINERS_REGISTRIES_CONF"] = str(self.registries_conf(insecure_registries))
        return env

    @property
    def home(self) -> Path:
        """``HOME`` for tools that read per-registry CAs only from ``$HOME`` (the podman service)."""
        return self.root / "home"

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """An exclusive lock across processes (e.g. one builder per image tag at a time)."""
        directory = self.root / "locks"
        directory.mkdir(parents=True, exist_ok=True)
        safe = hashlib.sha256(name.encode()).hexdigest()[:24]
        with open(directory / f"{safe}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
