"""Which platforms this host can build images for.

The host's own architecture always works. Another architecture needs a
qemu-user-static interpreter registered with binfmt_misc *with the F (fix binary)
flag*, so that the interpreter works inside a chroot (buildah's isolation) where
its path does not exist. Without one, the build fails up front with one line.
"""

from __future__ import annotations

import platform as host_platform
from dataclasses import dataclass
from pathlib import Path

from services.builder.errors import BuildError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# OCI architecture -> (qemu binfmt handler name, Debian architecture)
_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "amd64": ("qemu-x86_64", "amd64"),
    "arm64": ("qemu-aarch64", "arm64"),
    "arm": ("qemu-arm", "armhf"),
    "ppc64le": ("qemu-ppc64le", "ppc64el"),
    "s390x": ("qemu-s390x", "s390x"),
    "riscv64": ("qemu-riscv64", "riscv64"),
}
_MACHINE_TO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class PlatformUnsupported(BuildError):
    """This host cannot build one of the requested platforms."""


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    @property
    def debian_architecture(self) -> str:
        return _ARCHITECTURES[self.architecture][1]

    @property
    def suffix(self) -> str:
        """Tag suffix for this platform's image inside a manifest list."""
        return self.architecture + (self.variant or "")


def host_architecture() -> str:
    machine = host_platform.machine().lower()
    return _MACHINE_TO_ARCH.get(machine, machine)


def parse_platform(text: str) -> Platform:
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or parts[0] != "linux" or parts[1] not in _ARCHITECTURES:
        supported = ", ".join(f"linux/{arch}" for arch in _ARCHITECTURES)
        raise PlatformUnsupported(f"unsupported platform {text!r}: use one of {supported}")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def binfmt_handler_usable(handler: str, binfmt_dir: Path | None = None) -> bool:
    """A registered, enabled handler with the F flag (usable in a chroot)."""
    try:
        text = ((binfmt_dir or BINFMT_DIR) / handler).read_text()
    except OSError:
        return False
    lines = [line.strip() for line in text.splitlines()]
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    return "enabled" in lines and "F" in flags


def check_platforms(requested: list[str], binfmt_dir: Path | None = None) -> list[Platform]:
    """The requested platforms, host first; :class:`PlatformUnsupported` names the first one we cannot build."""
    platforms = list(dict.fromkeys(parse_platform(text) for text in requested or ["linux/" + host_architecture()]))
    native = host_architecture()
    for wanted in platforms:
        if wanted.architecture == native:
            continue
        handler = _ARCHITECTURES[wanted.architecture][0]
        if not binfmt_handler_usable(handler, binfmt_dir):
            raise PlatformUnsupported(f"cannot build {wanted.name} on this host: no qemu-user-static binfmt handler")
    return sorted(platforms, key=lambda item: item.architecture != native)
