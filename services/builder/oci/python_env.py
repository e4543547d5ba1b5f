"""Installing Python requirements into an image's virtualenv (``/opt/venv``).

Native images: the install runs inside the working container (``buildah run``, chroot
isolation, host network). uv does it when the host has a uv binary (FLOps' own
virtualenv has one: flwr depends on it): it is mounted read-only, so it is not left in
the image, and it installs several times faster than pip. Otherwise pip runs from the
wheel that Debian's python3-venv ships (or ensurepip), and is not left in the
virtualenv either.

Foreign images (linux/arm64 on an amd64 host): nothing is resolved or unpacked under
emulation. The host's uv installs the target platform's wheels
(``--python-platform aarch64-manylinux_2_36``, Python 3.11 as in the base) straight into
the mounted container (``buildah mount``); only ``python3 -m venv`` runs emulated. No
source distribution is compiled for the foreign architecture: a requirement without a
wheel for it fails the build with uv's one-line reason.

Both ways: nothing is cached in the image (``--no-cache``), test suites shipped inside
packages (``site-packages/**/tests``) are removed, and ``excludes`` keeps declared but
unused dependencies out (uv only). The host's CA bundle is mounted for TLS-intercepting
proxies, and proxy variables pass through.
"""

from __future__ import annotations

import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flops_utils.message_text import one_line
from services.builder.errors import BuildError
from services.builder.oci.engine import ContainerEngine, EngineError, describe_failure
from services.builder.oci.platforms import Platform, host_architecture
from services.builder.process import CommandOutcome, run_command

VENV_DIR = "/opt/venv"
IMAGE_PATH = f"{VENV_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Every FLOps image on top of the Python base carries these.
IMAGE_ENVIRONMENT: dict[str, str] = {
    "PATH": IMAGE_PATH,
    "VIRTUAL_ENV": VENV_DIR,
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "GIT_PYTHON_REFRESH": "quiet",  # mlflow imports GitPython; images have no git
}
INSTALL_TIMEOUT_S = 1800.0
INSTALL_ATTEMPTS = 2
_BUILD_MOUNT = "/flops-build"
_TOOLS_MOUNT = "/flops-tools"
IMAGE_PYTHON_VERSION = "3.11"  # Debian bookworm's python3, the base image's interpreter
IMAGE_GLIBC = "2_36"  # bookworm's glibc: the newest manylinux wheels the image can load
_UV_ARCHITECTURES = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "ppc64le": "powerpc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
# Package test suites are never run in an image (tens of MB for numpy/scipy/scikit-learn/pyarrow).
_TRIM_TESTS = f"find {VENV_DIR}/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {{}} +"
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@dataclass(frozen=True)
class PackageIndex:
    """Where pip/uv look for packages (default: PyPI)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls) -> PackageIndex:
        """Index settings the host's pip would use from its environment (remote URLs only)."""
        index = os.environ.get("PIP_INDEX_URL") or None
        extras = tuple(
            url for url in os.environ.get("PIP_EXTRA_INDEX_URL", "").split() if url.startswith(("http://", "https://"))
        )
        return cls(index, extras)


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts (a TLS-intercepting proxy's CA is in it), if any."""
    candidates = [os.environ.get(name) for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")]
    candidates += [ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def host_uv() -> Path | None:
    """A uv binary on this host (next to our interpreter first)."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.resolve()
    found = shutil.which("uv")
    return Path(found).resolve() if found else None


_CREATE_VENV = f"[ -x {VENV_DIR}/bin/python ] || python3 -m venv --without-pip {VENV_DIR}"


def _index_options(index: PackageIndex) -> list[str]:
    options = ["--index-url", index.index_url] if index.index_url else []
    for url in index.extra_index_urls:
        options += ["--extra-index-url", url]
    return options


def _install_script(use_uv: bool, index: PackageIndex) -> str:
    create = _CREATE_VENV
    requirements = f"-r {_BUILD_MOUNT}/requirements.txt -c {_BUILD_MOUNT}/constraints.txt"
    index_options = "".join(f" '{option}'" for option in _index_options(index))
    if use_uv:
        install = (
            f"{_TOOLS_MOUNT}/uv pip install --python {VENV_DIR}/bin/python --no-cache --compile-bytecode"
            f"{index_options} {requirements} --excludes {_BUILD_MOUNT}/excludes.txt"
        )
        return f"set -e\n{create}\n{install}\n{_TRIM_TESTS}\nrm -rf /root/.cache\n"
    return "\n".join(
        [
            "set -e",
            create,
            "W=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | head -n 1)",
            'CLEAN=""',
            f'if [ -n "$W" ]; then PIP="{VENV_DIR}/bin/python $W/pip"; '
            f'else {VENV_DIR}/bin/python -m ensurepip --default-pip >/dev/null; PIP="{VENV_DIR}/bin/python -m pip"; '
            "CLEAN=1; fi",
            f"$PIP install --no-cache-dir --no-input --progress-bar off --disable-pip-version-check{index_options} "
            f"{requirements}",
            f'[ -z "$CLEAN" ] || {VENV_DIR}/bin/python -m pip uninstall -y -q pip',
            _TRIM_TESTS,
            "rm -rf /root/.cache",
            "",
        ]
    )


def install_failure_reason(output: str) -> str:
    """The line of uv/pip output that says why an install failed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("╰─▶", "ERROR: ", "error: "):
        found = [line for line in lines if line.startswith(marker) or marker in line[:6]]
        if found:
            return one_line(found[0].removeprefix("╰─▶").strip(), 300)
    return one_line(lines[-1], 300) if lines else "no output"


def _install_environment(staging: Path) -> dict[str, str]:
    """Installer settings, the host's CA bundle (copied to ``staging``) and proxy variables."""
    env: dict[str, str] = {
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "UV_HTTP_TIMEOUT": "180",
        "PIP_DEFAULT_TIMEOUT": "180",
    }
    ca = host_ca_bundle()
    if ca is not None:
        shutil.copyfile(ca, staging / "ca.crt")
        for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
            env[name] = f"{_BUILD_MOUNT}/ca.crt"
    for name in _PROXY_VARIABLES:
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def install_requirements(
    engine: ContainerEngine,
    container: str,
    requirements: Sequence[str],
    constraints: Sequence[str] = (),
    *,
    excludes: Sequence[str] = (),
    index: PackageIndex | None = None,
    platform: Platform | None = None,
    timeout: float = INSTALL_TIMEOUT_S,
) -> str:
    """Create ``/opt/venv`` if needed and install ``requirements`` into it; returns which installer ran.

    ``platform`` other than the host's architecture installs that platform's wheels from the host
    (see the module docstring); ``excludes`` names distributions to leave out (uv only).
    """
    index = index or PackageIndex.from_environment()
    foreign = platform is not None and platform.architecture != host_architecture()
    uv = host_uv()
    if foreign and uv is None:
        raise BuildError(f"building {platform.name if platform else ''} images needs uv on the host (pip install uv)")
    with tempfile.TemporaryDirectory(prefix="flops-oci-install-") as staging_name:
        staging = Path(staging_name)
        (staging / "requirements.txt").write_text("".join(f"{line}\n" for line in requirements))
        (staging / "constraints.txt").write_text("".join(f"{line}\n" for line in constraints))
        (staging / "excludes.txt").write_text("".join(f"{line}\n" for line in excludes))
        os.chmod(staging, 0o755)
        env = _install_environment(staging)
        if foreign:
            assert platform is not None and uv is not None
            outcome = _install_foreign(engine, container, staging, env, uv, index, platform, timeout)
        else:
            args = ["run", "--isolation", "chroot", "-v", f"{staging}:{_BUILD_MOUNT}:ro"]
            if uv is not None:
                args += ["-v", f"{uv.parent}:{_TOOLS_MOUNT}:ro"]
                env["UV_SYSTEM_CERTS"] = "1"
            for key, value in sorted(env.items()):
                args += ["--env", f"{key}={value}"]
            args += [container, "--", "sh", "-c", _install_script(uv is not None, index)]
            for _attempt in range(INSTALL_ATTEMPTS):  # a second try for a dropped connection (uv retries too)
                outcome = engine.run("buildah", args, timeout=timeout, check=False)
                if outcome.ok or outcome.timed_out:
                    break
    if outcome.timed_out:
        raise BuildError(f"installing the Python requirements took longer than {timeout:g} s")
    if not outcome.ok:
        reason = install_failure_reason(outcome.stderr + "\n" + outcome.stdout)
        raise BuildError(f"cannot install the Python requirements: {reason}")
    return "uv" if uv is not None else "pip"


def _install_foreign(
    engine: ContainerEngine,
    container: str,
    staging: Path,
    env: dict[str, str],
    uv: Path,
    index: PackageIndex,
    platform: Platform,
    timeout: float,
) -> CommandOutcome:
    """The host's uv installs ``platform``'s wheels into the mounted container's ``/opt/venv``."""
    engine.buildah(
        "run",
        "--isolation",
        "chroot",
        container,
        "--",
        "sh",
        "-c",
        _CREATE_VENV,
        timeout=600,
        what="creating the virtualenv under emulation",
    )
    root = Path(engine.buildah("mount", container, what="mounting the working container").strip().splitlines()[-1])
    try:
        prefix = root / VENV_DIR.lstrip("/")
        uv_env = {key: value.replace(_BUILD_MOUNT, str(staging)) for key, value in env.items()}
        uv_env["UV_SYSTEM_CERTS"] = "1"
        args = [
            "pip",
            "install",
            "--no-cache",
            "--compile-bytecode",
            "--prefix",
            str(prefix),
            "--python",
            sys.executable,
            "--python-version",
            IMAGE_PYTHON_VERSION,
            "--python-platform",
            f"{_UV_ARCHITECTURES[platform.architecture]}-manylinux_{IMAGE_GLIBC}",
            "--no-build",
            *_index_options(index),
            "-r",
            str(staging / "requirements.txt"),
            "-c",
            str(staging / "constraints.txt"),
            "--excludes",
            str(staging / "excludes.txt"),
        ]
        outcome = CommandOutcome(returncode=1, stdout="", stderr="")
        for _attempt in range(INSTALL_ATTEMPTS):
            outcome = run_command([str(uv), *args], timeout=timeout, env={**os.environ, **uv_env})
            if outcome.ok or outcome.timed_out:
                break
        if outcome.ok:
            _relocate_scripts(prefix / "bin")
            engine.run(
                "find",
                [
                    str(prefix / "lib"),
                    "-depth",
                    "-type",
                    "d",
                    "-name",
                    "tests",
                    "-path",
                    "*/site-packages/*",
                    "-exec",
                    "rm",
                    "-rf",
                    "{}",
                    "+",
                ],
                timeout=300,
            )
        return outcome
    finally:
        engine.run("buildah", ["umount", container], timeout=120, check=False)


def _relocate_scripts(bin_dir: Path) -> None:
    """Console scripts written by the host's uv name the host's interpreter: point them at the image's."""
    for script in bin_dir.iterdir() if bin_dir.is_dir() else ():
        if script.is_symlink() or not script.is_file():
            continue
        with script.open("rb") as handle:
            first = handle.readline()
        if first.startswith(b"#!") and b"python" in first:
            body = script.read_bytes()[len(first) :]
            script.write_bytes(f"#!{VENV_DIR}/bin/python\n".encode() + body)


def run_check(engine: ContainerEngine, container: str, script: str, what: str, timeout: float = 300.0) -> str:
    """Run a Python snippet in the working container with the image's interpreter; raise a one-line error."""
    outcome = engine.run(
        "buildah",
        ["run", "--isolation", "chroot", container, "--", f"{VENV_DIR}/bin/python", "-c", script],
        timeout=timeout,
        check=False,
    )
    if not outcome.ok:
        raise EngineError(f"{what}: {describe_failure(outcome, timeout)}")
    return outcome.stdout
