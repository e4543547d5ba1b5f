"""Fetch the user's ML repository: a git URL, a local git repository or a plain directory.

Git always runs as ``git clone ... -- URL DEST`` with prompts off and a protocol
allow-list (a private repository's credentials in its environment, read by a credential
helper: never in its arguments, never saved in the clone), after :func:`check_repo_url`
has refused anything git could read as an option (a leading '-'), transport helpers
(``ext::``, ``fd::``), other schemes and '..' path segments. A local git repository is
cloned, not copied, so uncommitted files never reach a build; a plain directory is
copied and identified by a hash of its content.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from flops_utils.repo_credentials import RepoCredentials, redact, split_repo_credentials, url_with_query
from services.builder.errors import BuildError
from services.builder.process import CommandOutcome, last_meaningful_line, run_command

ALLOWED_SCHEMES = ("https", "http", "ssh", "git", "file")
_SSH_ALIASES = ("git+ssh", "ssh+git")
GIT_ALLOW_PROTOCOL = "https:http:ssh:git:file"
CLONE_TIMEOUT_S = 600.0
USERNAME_ENV, PASSWORD_ENV = "FLOPS_GIT_USERNAME", "FLOPS_GIT_PASSWORD"
# git runs this through the shell with the action (get, store, erase) as $1; only 'get' answers.
CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || exit 0; '
    f'printf "username=%s\\npassword=%s\\n" "${USERNAME_ENV}" "${PASSWORD_ENV}"; }}; f'
)

_URL_WITH_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
_TRANSPORT_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._~-]+@)?(?P<host>[A-Za-z0-9._-]+):(?!//)")
_SAFE_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/@+-]{0,254}$")
_COPY_IGNORED = (".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache")


@dataclass(frozen=True)
class SourceCheckout:
    """The repository's files at ``path`` and what identifies them."""

    path: Path
    commit: str = ""  # git commit sha, or the sha256 content hash of a plain directory
    kind: Literal["git", "directory"] = "git"


def _refuse(url: str, why: str) -> BuildError:
    return BuildError(f"refused repo URL {url!r}: {why}", step="clone")


def check_repo_url(url: str) -> str:
    """Return ``url`` stripped, or raise :class:`BuildError` when git must not be given it."""
    value = url.strip()
    if not value:
        raise BuildError("refused repo URL: it is empty", step="clone")
    if value.startswith("-"):
        raise _refuse(value, "it starts with '-' and would be read as a git option")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise _refuse(value, "it contains control characters")
    if _TRANSPORT_HELPER.match(value) or "ext::" in value.lower():
        raise _refuse(value, "git transport helpers such as 'ext::' are not allowed")
    if any(segment == ".." for segment in re.split(r"[/\\]", value.split("?", 1)[0])):
        raise _refuse(value, "'..' path segments are not allowed")
    with_scheme = _URL_WITH_SCHEME.match(value)
    if with_scheme:
        scheme = with_scheme["scheme"].lower()
        if scheme not in ALLOWED_SCHEMES and scheme not in _SSH_ALIASES:
            raise _refuse(value, f"scheme {scheme!r} is not allowed (use {', '.join(ALLOWED_SCHEMES)})")
        host = with_scheme["rest"].split("/", 1)[0].rsplit("@", 1)[-1]
        if scheme != "file" and (not host or host.startswith("-")):
            raise _refuse(value, "it has no valid host")
        return value
    scp = _SCP_LIKE.match(value)
    if scp and "/" not in value.split(":", 1)[0] and scp["host"].startswith("-"):
        raise _refuse(value, "it has no valid host")
    return value


def check_repo_ref(ref: str) -> str:
    if not _SAFE_REF.fullmatch(ref) or ".." in ref or ref.endswith((".", "/", ".lock")):
        raise BuildError(f"refused repo_ref {ref!r}: not a valid branch, tag or commit name", step="clone")
    return ref


def _local_path(url: str, base_dir: Path) -> Path | None:
    """The filesystem path ``url`` names, or None for a remote URL."""
    with_scheme = _URL_WITH_SCHEME.match(url)
    if with_scheme:
        if with_scheme["scheme"].lower() != "file":
            return None
        return Path(unquote(urlparse(url).path))
    scp = _SCP_LIKE.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        return None  # git@host:path
    path = Path(url).expanduser()
    return path if path.is_absolute() else base_dir / path


def _is_git_repository_root(path: Path) -> bool:
    """A work tree's top level (has ``.git``) or a bare repository; not a folder inside some work tree."""
    if (path / ".git").exists():
        return True
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def git_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL=GIT_ALLOW_PROTOCOL,
        GIT_SSH_COMMAND="ssh -o BatchMode=yes -o ConnectTimeout=30",
        GIT_CONFIG_NOSYSTEM="1",
        LC_ALL="C",
    )
    return env


def _git(
    args: list[str], timeout: float, cwd: Path | None = None, credentials: RepoCredentials | None = None,
    url: str | None = None,
) -> CommandOutcome:
    command = ["git", "-c", "protocol.ext.allow=never"]
    env = git_environment()
    if credentials is not None and credentials.username is not None:
        # The empty value first drops any helper from the user's git configuration.
        command += ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}"]
        env.update({USERNAME_ENV: credentials.username, PASSWORD_ENV: credentials.password})
    if credentials is not None and credentials.query and url is not None:
        # git fetches from the URL with its query string; the arguments (and .git/config) keep the one without.
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0=f"url.{url_with_query(url, credentials)}.insteadOf",
                   GIT_CONFIG_VALUE_0=url)  # fmt: skip
    return run_command([*command, *args], timeout=timeout, cwd=cwd, env=env)


def _git_reason(outcome: CommandOutcome, timeout: float, credentials: RepoCredentials | None = None) -> str:
    if outcome.timed_out:
        return f"git timed out after {timeout:g} s"
    reason = last_meaningful_line(outcome.stderr, ("fatal: ", "error: ")) or f"git exited with {outcome.returncode}"
    return redact(reason, credentials)


def _clone(
    source: str, destination: Path, ref: str | None, shallow: bool, timeout: float, credentials: RepoCredentials | None
) -> str | None:
    """Clone; return None on success or git's one-line reason."""
    args = ["clone", "--quiet", "--no-recurse-submodules"]
    if shallow:
        args += ["--depth", "1"]
    if ref:
        args += ["--branch", ref]
    outcome = _git([*args, "--", source, str(destination)], timeout, credentials=credentials, url=source)
    return None if outcome.ok else _git_reason(outcome, timeout, credentials)


def _clone_git(
    url: str, source: str, destination: Path, ref: str | None, shallow: bool, timeout: float,
    credentials: RepoCredentials | None = None,
) -> str:
    """Clone ``source`` at ``ref`` into ``destination`` and return the checked-out commit."""
    failure = _clone(source, destination, ref, shallow, timeout, credentials)
    if failure is not None and shallow and "shallow" in failure:
        # Hosts on git's "dumb" HTTP protocol (static files) cannot serve shallow clones.
        shutil.rmtree(destination, ignore_errors=True)
        failure = _clone(source, destination, ref, False, timeout, credentials)
    if failure is not None and ref:
        # --branch takes branches and tags only: a commit needs a full clone and a checkout.
        shutil.rmtree(destination, ignore_errors=True)
        full_clone_failure = _clone(source, destination, None, False, timeout, credentials)
        if full_clone_failure is not None:
            raise BuildError(f"cannot clone {url}: {full_clone_failure}", step="clone")
        checkout = _git(["-C", str(destination), "checkout", "--quiet", "--detach", f"{ref}^{{commit}}", "--"], 120)
        if not checkout.ok:
            raise BuildError(f"cannot check out {ref!r} in {url}: {_git_reason(checkout, 120)}", step="clone")
        failure = None
    if failure is not None:
        raise BuildError(f"cannot clone {url}: {failure}", step="clone")
    head = _git(["-C", str(destination), "rev-parse", "HEAD"], 60)
    if not head.ok:
        raise BuildError(f"cannot read the commit of {url}: {_git_reason(head, 60)}", step="clone")
    return head.stdout.strip()


def content_hash(root: Path) -> str:
    """sha256 over relative paths and contents of every file under ``root`` (ignored folders skipped)."""
    digest = hashlib.sha256()
    for current, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if name not in _COPY_IGNORED)
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            path = Path(current) / name
            relative = path.relative_to(root).as_posix()
            digest.update(relative.encode() + b"\0")
            if path.is_symlink():
                digest.update(b"link:" + os.readlink(path).encode())
            else:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            digest.update(b"\n")
    return digest.hexdigest()


def copy_tree(source: Path, destination: Path) -> None:
    """Copy a repository's files (not its .git, caches or virtualenvs), keeping symlinks as links."""
    shutil.copytree(
        source,
        destination,
        symlinks=True,
        ignore=shutil.ignore_patterns(*_COPY_IGNORED, "*.pyc"),
    )


def fetch_source(
    url: str,
    ref: str | None,
    destination: Path,
    *,
    base_dir: Path | None = None,
    timeout: float = CLONE_TIMEOUT_S,
    credentials: RepoCredentials | None = None,
) -> SourceCheckout:
    """Put the repository's files at ``destination`` (which must not exist yet).

    ``base_dir`` resolves relative local paths (default: the working directory).
    Credentials written into an http(s) ``url`` are used like ``credentials`` and kept out of messages.
    """
    url, embedded = split_repo_credentials(check_repo_url(url))
    credentials = credentials.with_query_of(embedded) if credentials is not None else embedded
    if ref is not None:
        ref = check_repo_ref(ref)
    local = _local_path(url, base_dir or Path.cwd())
    if local is None:
        commit = _clone_git(url, url, destination, ref, shallow=True, timeout=timeout, credentials=credentials)
        return SourceCheckout(destination, commit, "git")
    if local.is_dir() and not _is_git_repository_root(local):
        if ref is not None:
            raise BuildError(f"cannot check out {ref!r} in {url}: it is a plain directory, not a git repository")
        try:
            commit = content_hash(local)
            copy_tree(local, destination)
        except OSError as error:
            raise BuildError(f"cannot copy {url}: {error.strerror or error}", step="clone") from None
        return SourceCheckout(destination, commit, "directory")
    # A local git repository (or a path that does not exist: git says so in its own words).
    commit = _clone_git(url, str(local), destination, ref, shallow=False, timeout=timeout)
    return SourceCheckout(destination, commit, "git")
