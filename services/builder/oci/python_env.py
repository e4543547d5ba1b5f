"""Installing Python requirements into an image's virtualenv (``/opt/venv``).

The install runs inside the working container (``buildah run``, chroot isolation,
host network). uv does it when the host has a uv binary for the image's architecture
(FLOps' own virtualenv has one: flwr depends on it): it is mounted read-only, so it
is not left in the image, and it installs several times faster than pip. Otherwise
pip runs from the wheel that Debian's python3-venv ships (or ensurepip), and is not
left in the virtualenv either. Nothing is cached in the image (``--no-cache``). The
host's CA bundle is mounted for TLS-intercepting proxies, and proxy variables pass
through.
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

from services.builder.errors import BuildError, one_line
from services.builder.oci.engine import ContainerEngine, EngineError, describe_failure

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
        extras = tuple(url for url in os.environ.get("PIP_EXTRA_INDEX_URL", "").split()
                       if url.startswith(("http://", "https://")))
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


def _install_script(use_uv: bool, index: PackageIndex) -> str:
    create = f"[ -x {VENV_DIR}/bin/python ] || python3 -m venv --without-pip {VENV_DIR}"
    requirements = f"-r {_BUILD_MOUNT}/requirements.txt -c {_BUILD_MOUNT}/constraints.txt"
    index_options = ""
    if index.index_url:
        index_options += f" --index-url '{index.index_url}'"
    for url in index.extra_index_urls:
        index_options += f" --extra-index-url '{url}'"
    if use_uv:
        install = (f"{_TOOLS_MOUNT}/uv pip install --python {VENV_DIR}/bin/python --no-cache --compile-bytecode"
                   f"{index_options} {requirements}")
        return f"set -e\n{create}\n{install}\nrm -rf /root/.cache\n"
    return "\n".join([
        "set -e",
        create,
        'W=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | head -n 1)',
        'CLEAN=""',
        f'if [ -n "$W" ]; then PIP="{VENV_DIR}/bin/python $W/pip"; '
        f'else {VENV_DIR}/bin/python -m ensurepip --default-pip >/dev/null; PIP="{VENV_DIR}/bin/python -m pip"; '
        'CLEAN=1; fi',
        f"$PIP install --no-cache-dir --no-input --progress-bar off --disable-pip-version-check{index_options} "
        f"{requirements}",
        f'[ -z "$CLEAN" ] || {VENV_DIR}/bin/python -m pip uninstall -y -q pip',
        "rm -rf /root/.cache",
        "",
    ])


def install_failure_reason(output: str) -> str:
    """The line of uv/pip output that says why an install failed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("╰─▶", "ERROR: ", "error: "):
        found = [line for line in lines if line.startswith(marker) or marker in line[:6]]
        if found:
            return one_line(found[0].removeprefix("╰─▶").strip(), 300)
    return one_line(lines[-1], 300) if lines else "no output"


def install_requirements(
    engine: ContainerEngine,
    container: str,
    requirements: Sequence[str],
    constraints: Sequence[str] = (),
    *,
    index: PackageIndex | None = None,
    native: bool = True,
    timeout: float = INSTALL_TIMEOUT_S,
) -> str:
    """Create ``/opt/venv`` if needed and install ``requirements`` into it; returns which installer ran."""
    index = index or PackageIndex.from_environment()
    uv = host_uv() if native else None
    with tempfile.TemporaryDirectory(prefix="flops-oci-install-") as staging_name:
        staging = Path(staging_name)
        (staging / "requirements.txt").write_text("".join(f"{line}\n" for line in requirements))
        (staging / "constraints.txt").write_text("".join(f"{line}\n" for line in constraints))
        os.chmod(staging, 0o755)
        args = ["run", "--isolation", "chroot", "-v", f"{staging}:{_BUILD_MOUNT}:ro"]
        env: dict[str, str] = {"PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_HTTP_TIMEOUT": "180",
                               "PIP_DEFAULT_TIMEOUT": "180"}
        ca = host_ca_bundle()
        if ca is not None:
            shutil.copyfile(ca, staging / "ca.crt")
            for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
                env[name] = f"{_BUILD_MOUNT}/ca.crt"
        if uv is not None:
            args += ["-v", f"{uv.parent}:{_TOOLS_MOUNT}:ro"]
            env["UV_SYSTEM_CERTS"] = "1"
        for name in _PROXY_VARIABLES:
            if os.environ.get(name):
                env[name] = os.environ[name]
        for key, value in sorted(env.items()):
            args += ["--env", f"{key}={value}"]
        args += [container, "--", "sh", "-c", _install_script(uv is not None, index)]
        for _attempt in range(INSTALL_ATTEMPTS):  # a second try for a dropped connection (uv retries requests too)
            outcome = engine.run("buildah", args, timeout=timeout, check=False)
            if outcome.ok or outcome.timed_out:
                break
    if outcome.timed_out:
        raise BuildError(f"installing the Python requirements took longer than {timeout:g} s")
    if not outcome.ok:
        reason = install_failure_reason(outcome.stderr + "\n" + outcome.stdout)
        raise BuildError(f"cannot install the Python requirements: {reason}")
    return "uv" if uv is not None else "pip"


def run_check(engine: ContainerEngine, container: str, script: str, what: str, timeout: float = 300.0) -> str:
    """Run a Python snippet in the working container with the image's interpreter; raise a one-line error."""
    outcome = engine.run("buildah", ["run", "--isolation", "chroot", container, "--", f"{VENV_DIR}/bin/python", "-c",
                                     script], timeout=timeout, check=False)
    if not outcome.ok:
        raise EngineError(f"{what}: {describe_failure(outcome, timeout)}")
    return outcome.stdout
