"""What an ML repository URL may be and what it may reach: one check for the manager's API and the builder.

Two steps, both here so the API and the builder cannot drift apart:

- :func:`check_repo_url` (syntax, no I/O): refuses anything git could read as an option
  (a leading '-', ``--upload-pack`` and similar), transport helpers (``ext::``, ``fd::``),
  control characters, '..' path segments and schemes other than http(s), ssh, git, file.
- :func:`check_repo_reach` (policy): local paths only under the policy's folders, network
  hosts by its allow and deny lists. Entries are host names (``git.example.org``,
  ``*.example.org``), addresses or networks (``10.0.0.0/8``, ``::1``); an allowed entry wins
  over a denied one. The API checks names and literal addresses only (no DNS on a request);
  the builder also resolves the host and checks every address, right before git runs.

A refusal's ``detail`` is for the manager's log; people whose policy says so get only
:data:`UNREACHABLE`, so an error never tells a customer whether a path exists or what
answers on an internal port.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

UNREACHABLE = "cannot reach the repository"
MAX_URL_LENGTH = 2048
REMOTE_SCHEMES = ("https", "http", "ssh", "git", "git+ssh", "ssh+git")
# Denied to customers unless allowed: loopback, "this host", link-local (cloud metadata lives there).
DEFAULT_DENIED_HOSTS = (
    "localhost",
    "*.localhost",
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
)

_URL_WITH_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
_TRANSPORT_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._~-]+@)?(?P<host>[A-Za-z0-9._-]+):(?P<path>[^/].*|/.+)$")
_FORBIDDEN_OPTIONS = ("--upload-pack", "--receive-pack", "--exec", "--config", "--template", "--separate-git-dir")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RepoUrlRefused(ValueError):
    """The URL is malformed or unsafe to hand to git; the message says why in one line."""


class RepoUnreachable(ValueError):
    """The policy forbids what the URL names; ``detail`` says why (for the log, not for customers)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RepoAccessPolicy(BaseModel):
    """What one project's repository URL may reach (the manager makes one per owner; see its settings)."""

    model_config = ConfigDict(extra="forbid")

    local_roots: list[str] | None = Field(
        default=None, description="local paths must lie (symlinks resolved) under one of these; None: anywhere"
    )
    local_denied: list[str] = Field(
        default_factory=list, description="folders refused even inside local_roots (the manager's own state)"
    )
    allow_hosts: list[str] = Field(default_factory=list, description="names, addresses or networks always allowed")
    deny_hosts: list[str] = Field(default_factory=list, description="names, addresses or networks refused")
    detailed_errors: bool = Field(
        default=True,
        description=f"false: refusals and clone failures say only {UNREACHABLE!r}; the detail goes to the log",
    )
    follow_redirects: bool = Field(
        default=True, description="false: git follows no HTTP redirect (which could lead past the host checks)"
    )

    def public_reason(self, detail: str) -> str:
        """What the project's owner is told."""
        return detail if self.detailed_errors else UNREACHABLE


@dataclass(frozen=True)
class RepoTarget:
    """Where a checked URL leads: a local path, or a network host (with the addresses it was checked at)."""

    local_path: Path | None = None
    host: str | None = None
    port: int | None = None
    addresses: tuple[str, ...] = ()


def check_repo_url(url: str) -> str:
    """Return ``url`` stripped if it is a safe git URL or local path; raise :class:`RepoUrlRefused` otherwise."""
    value = url.strip()
    if not value:
        raise RepoUrlRefused("must not be empty")
    if len(value) > MAX_URL_LENGTH:
        raise RepoUrlRefused(f"must not be longer than {MAX_URL_LENGTH} characters")
    if value.startswith("-"):
        raise RepoUrlRefused("must not start with '-' (it would be read as a git option)")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise RepoUrlRefused("must not contain control characters")
    lowered = value.lower()
    for option in _FORBIDDEN_OPTIONS:
        if option in lowered:
            raise RepoUrlRefused(f"must not contain the git option {option!r}")
    if _TRANSPORT_HELPER.match(value) or "ext::" in lowered:
        raise RepoUrlRefused("must not use a git transport helper such as 'ext::'")
    path = value.split("?", 1)[0].split("#", 1)[0]
    if any(segment == ".." for segment in re.split(r"[/\\:]", path)):
        raise RepoUrlRefused("must not contain '..' path segments; use an absolute path")
    with_scheme = _URL_WITH_SCHEME.match(value)
    if with_scheme:
        scheme = with_scheme["scheme"].lower()
        if scheme == "file":
            if not with_scheme["rest"].startswith("/"):
                raise RepoUrlRefused("needs an absolute path in a file:// URL (file:///path/to/repo)")
            return value
        if scheme not in REMOTE_SCHEMES:
            raise RepoUrlRefused(f"scheme {scheme!r} is not supported (use https, http, ssh, git or file)")
        host = with_scheme["rest"].split("/", 1)[0].rsplit("@", 1)[-1]
        if not host or host.startswith("-"):
            raise RepoUrlRefused("has no valid host")
        return value
    scp = _SCP_LIKE.match(value)
    if scp and "/" not in value.split(":", 1)[0] and scp["host"].startswith("-"):
        raise RepoUrlRefused("has no valid host")
    return value  # a local path, absolute or relative to the repository base directory


def repo_target(url: str, base_dir: Path) -> RepoTarget:
    """What a URL that passed :func:`check_repo_url` names: a local path (relative: under ``base_dir``) or a host."""
    with_scheme = _URL_WITH_SCHEME.match(url)
    if with_scheme:
        if with_scheme["scheme"].lower() == "file":
            return RepoTarget(local_path=Path(unquote(urlsplit(url).path)))
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise RepoUrlRefused("has no valid port") from None
        return RepoTarget(host=(parts.hostname or "").rstrip("."), port=port)
    scp = _SCP_LIKE.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        return RepoTarget(host=scp["host"].lower().rstrip("."))  # git@host:path
    path = Path(url).expanduser()
    return RepoTarget(local_path=path if path.is_absolute() else base_dir / path)


def check_repo_reach(url: str, policy: RepoAccessPolicy, base_dir: Path, *, resolve: bool) -> RepoTarget:
    """Raise :class:`RepoUnreachable` when ``policy`` forbids what ``url`` names; return the checked target.

    With ``resolve`` (and a deny list) the host's name is looked up, and every address is checked
    against the denied networks and the addresses of denied names.
    """
    target = repo_target(check_repo_url(url), base_dir)
    if target.local_path is not None:
        _check_local(target.local_path, policy)
        return target
    host = target.host or ""
    own = _literal_address(host)
    addresses = [own] if own is not None else (_resolve(host) if resolve and policy.deny_hosts else [])
    if _matching(host, addresses, policy.allow_hosts, resolve=False):
        return RepoTarget(host=host, port=target.port, addresses=tuple(map(str, addresses)))
    denied = _matching(host, addresses, policy.deny_hosts, resolve=resolve)
    if denied:
        shown = f"{host} ({', '.join(map(str, addresses))})" if addresses and own is None else host
        raise RepoUnreachable(f"the host {shown} is denied by the repository access policy ({denied})")
    return RepoTarget(host=host, port=target.port, addresses=tuple(map(str, addresses)))


def _check_local(path: Path, policy: RepoAccessPolicy) -> None:
    real = os.path.realpath(path)
    if any(_inside(real, folder) or _inside(folder, real) for folder in map(os.path.realpath, policy.local_denied)):
        raise RepoUnreachable(f"the local path {real} holds or lies inside the manager's own files")
    if policy.local_roots is None or any(_inside(real, os.path.realpath(root)) for root in policy.local_roots):
        return
    raise RepoUnreachable(f"the local path {real} is outside the folders repositories may be read from")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _literal_address(host: str) -> IpAddress | None:
    """``host`` as an address when it is one, including the forms git's resolver reads (``127.1``, ``0x7f.1``)."""
    try:
        return _plain(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host) and not re.fullmatch(r"[A-Za-z.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _plain(address: IpAddress) -> IpAddress:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _resolve(host: str) -> list[IpAddress]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as error:
        raise RepoUnreachable(f"cannot resolve the host {host}: {error}") from None
    addresses: list[IpAddress] = []
    for info in infos:
        address = _plain(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def _matching(host: str, addresses: list[IpAddress], entries: list[str], *, resolve: bool) -> str | None:
    """The first entry naming ``host`` or containing one of ``addresses`` (with ``resolve``, last: an entry's
    name resolving to one of them); None when none does."""
    name = host.lower()
    names: list[tuple[str, str]] = []
    for entry in entries:
        wanted = entry.strip().lower().rstrip(".")
        try:
            network = ipaddress.ip_network(wanted.strip("[]"), strict=False)
        except ValueError:
            names.append((entry, wanted))
            continue
        if any(address.version == network.version and address in network for address in addresses):
            return entry
    for entry, wanted in names:
        if name == wanted or (wanted.startswith("*.") and name.endswith(wanted[1:])):
            return entry
    for entry, wanted in names if resolve and addresses else []:
        if wanted.startswith("*."):
            continue
        try:
            if set(addresses) & set(_resolve(wanted)):
                return entry
        except RepoUnreachable:
            continue
    return None
