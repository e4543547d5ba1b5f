"""Fetch the user's ML repository: a git URL, a local git repository or a plain directory.

Git always runs as ``git clone ... -- URL DEST`` with prompts off and a protocol
allow-list (a private repository's credentials in its environment, read by a credential
helper: never in its arguments, never saved in the clone), after
:mod:`flops_utils.repo_access` has refused anything git could read as an option (a leading
'-'), transport helpers (``ext::``, ``fd::``), other schemes and '..' path segments, and
anything the project's repository access policy forbids (checked again here, with the
host's addresses resolved, right before git runs; the addresses are pinned for http(s)). A local git repository is
cloned, not copied, so uncommitted files never reach a build; a plain directory is
copied and identified by a hash of its content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flops_utils.repo_access import (
    RepoAccessPolicy,
    RepoTarget,
    RepoUnreachable,
    RepoUrlRefused,
    check_repo_reach,
)
from flops_utils.repo_access import check_repo_url as check_safe_repo_url
from flops_utils.repo_credentials import RepoCredentials, redact, split_repo_credentials, url_with_query
from services.builder.errors import BuildError
from services.builder.process import CommandOutcome, last_meaningful_line, run_command

GIT_ALLOW_PROTOCOL = "https:http:ssh:git:file"
CLONE_TIMEOUT_S = 600.0
USERNAME_ENV, PASSWORD_ENV = "FLOPS_GIT_USERNAME", "FLOPS_GIT_PASSWORD"
# git runs this through the shell with the action (get, store, erase) as $1; only 'get' answers.
CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || exit 0; '
    f'printf "username=%s\\npassword=%s\\n" "${USERNAME_ENV}" "${PASSWORD_ENV}"; }}; f'
)

log = logging.getLogger("flops.builder")
_SAFE_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/@+-]{0,254}$")
_COPY_IGNORED = (".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache")


@dataclass(frozen=True)
class SourceCheckout:
    """The repository's files at ``path`` and what identifies them."""

    path: Path
    commit: str = ""  # git commit sha, or the sha256 content hash of a plain directory
    kind: Literal["git", "directory"] = "git"


def check_repo_url(url: str) -> str:
    """Return ``url`` stripped, or raise :class:`BuildError` when git must not be given it (the API's rules)."""
    try:
        return check_safe_repo_url(url)
    except RepoUrlRefused as refused:
        raise BuildError(f"refused repo URL {url.strip()!r}: it {refused}", step="clone") from None


def check_repo_ref(ref: str) -> str:
    if not _SAFE_REF.fullmatch(ref) or ".." in ref or ref.endswith((".", "/", ".lock")):
        raise BuildError(f"refused repo_ref {ref!r}: not a valid branch, tag or commit name", step="clone")
    return ref


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


@dataclass(frozen=True)
class _Remote:
    """How git reaches the repository: its credentials and the ``-c`` settings the access policy asks for."""

    credentials: RepoCredentials | None = None
    config: tuple[str, ...] = ()


def _git(
    args: list[str],
    timeout: float,
    cwd: Path | None = None,
    credentials: RepoCredentials | None = None,
    url: str | None = None,
    config: tuple[str, ...] = (),
) -> CommandOutcome:
    command = ["git", "-c", "protocol.ext.allow=never"]
    for setting in config:
        command += ["-c", setting]
    env = git_environment()
    if credentials is not None and credentials.username is not None:
        # The empty value first drops any helper from the user's git configuration.
        command += ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}"]
        env.update({USERNAME_ENV: credentials.username, PASSWORD_ENV: credentials.password})
    if credentials is not None and credentials.query and url is not None:
        # git fetches from the URL with its query string; the arguments (and .git/config) keep the one without.
        env.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0=f"url.{url_with_query(url, credentials)}.insteadOf",
            GIT_CONFIG_VALUE_0=url,
        )
    return run_command([*command, *args], timeout=timeout, cwd=cwd, env=env)


def _git_reason(outcome: CommandOutcome, timeout: float, credentials: RepoCredentials | None = None) -> str:
    if outcome.timed_out:
        return f"git timed out after {timeout:g} s"
    reason = last_meaningful_line(outcome.stderr, ("fatal: ", "error: ")) or f"git exited with {outcome.returncode}"
    return redact(reason, credentials)


def _clone(
    source: str, destination: Path, ref: str | None, shallow: bool, timeout: float, remote: _Remote
) -> str | None:
    """Clone; return None on success or git's one-line reason."""
    args = ["clone", "--quiet", "--no-recurse-submodules"]
    if shallow:
        args += ["--depth", "1"]
    if ref:
        args += ["--branch", ref]
    outcome = _git(
        [*args, "--", source, str(destination)],
        timeout,
        credentials=remote.credentials,
        url=source,
        config=remote.config,
    )
    return None if outcome.ok else _git_reason(outcome, timeout, remote.credentials)


def _clone_git(
    url: str,
    source: str,
    destination: Path,
    ref: str | None,
    shallow: bool,
    timeout: float,
    remote: _Remote = _Remote(),
) -> str:
    """Clone ``source`` at ``ref`` into ``destination`` and return the checked-out commit."""
    failure = _clone(source, destination, ref, shallow, timeout, remote)
    if failure is not None and shallow and "shallow" in failure:
        # Hosts on git's "dumb" HTTP protocol (static files) cannot serve shallow clones.
        shutil.rmtree(destination, ignore_errors=True)
        failure = _clone(source, destination, ref, False, timeout, remote)
    if failure is not None and ref:
        # --branch takes branches and tags only: a commit needs a full clone and a checkout.
        shutil.rmtree(destination, ignore_errors=True)
        full_clone_failure = _clone(source, destination, None, False, timeout, remote)
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
    access: RepoAccessPolicy | None = None,
) -> SourceCheckout:
    """Put the repository's files at ``destination`` (which must not exist yet).

    ``base_dir`` resolves relative local paths (default: the working directory).
    Credentials written into an http(s) ``url`` are used like ``credentials`` and kept out of messages.
    ``access`` (default: anything) says what the URL may reach; without ``detailed_errors`` every
    failure to fetch reads "cannot reach the repository" and its detail goes to the log only.
    """
    policy = access or RepoAccessPolicy()
    url, embedded = split_repo_credentials(check_repo_url(url))
    credentials = credentials.with_query_of(embedded) if credentials is not None else embedded
    if ref is not None:
        ref = check_repo_ref(ref)
    try:
        try:
            target = check_repo_reach(url, policy, base_dir or Path.cwd(), resolve=True)
        except (RepoUnreachable, RepoUrlRefused) as refused:
            raise BuildError(f"refused repo URL {url!r}: {refused}", step="clone") from None
        return _fetch(url, ref, destination, target, timeout, _Remote(credentials, _git_settings(url, target, policy)))
    except BuildError as error:
        if policy.detailed_errors:
            raise
        log.warning("the repository %s of this project cannot be fetched: %s", url, error)
        raise BuildError(policy.public_reason(str(error)), step=error.step) from None


def _git_settings(url: str, target: RepoTarget, policy: RepoAccessPolicy) -> tuple[str, ...]:
    """``-c`` settings that keep git where the policy checked: no redirects, the checked addresses pinned."""
    settings: list[str] = []
    if not policy.follow_redirects:
        settings.append("http.followRedirects=false")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https") and target.host and target.addresses:
        port = target.port or (443 if scheme == "https" else 80)
        pinned = ",".join(f"[{address}]" if ":" in address else address for address in target.addresses)
        settings.append(f"http.curloptResolve={target.host}:{port}:{pinned}")  # DNS cannot change its answer now
    return tuple(settings)


def _fetch(
    url: str, ref: str | None, destination: Path, target: RepoTarget, timeout: float, remote: _Remote
) -> SourceCheckout:
    local = target.local_path
    if local is None:
        commit = _clone_git(url, url, destination, ref, shallow=True, timeout=timeout, remote=remote)
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
    local_remote = _Remote(None, remote.config)
    commit = _clone_git(url, str(local), destination, ref, shallow=False, timeout=timeout, remote=local_remote)
    return SourceCheckout(destination, commit, "git")
