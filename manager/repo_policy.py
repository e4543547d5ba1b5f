"""The manager's repository access rules: which :class:`RepoAccessPolicy` a project's owner gets.

Customers' repositories may be local paths under ``repo_base_dir`` (and the admin's
``repo_access.local_roots``) and network hosts other than loopback, link-local and the
suite's own addresses (unless ``repo_access.allow_hosts`` names them); they learn only
"cannot reach the repository" when refused. The admin's own projects (customer ``Admin``)
are the operator's: only ``repo_access.deny_hosts`` applies to them, with full errors.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flops_utils.repo_access import DEFAULT_DENIED_HOSTS, RepoAccessPolicy

if TYPE_CHECKING:
    from manager.settings import ManagerSettings

ADMIN_OWNER = "Admin"  # manager.api.auth.ADMIN_CUSTOMER
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class RepoAccessRules:
    customers: RepoAccessPolicy = field(default_factory=RepoAccessPolicy)
    admin: RepoAccessPolicy = field(default_factory=RepoAccessPolicy)

    def for_owner(self, owner: str) -> RepoAccessPolicy:
        return self.admin if owner == ADMIN_OWNER else self.customers


def repo_access_rules(settings: ManagerSettings) -> RepoAccessRules:
    access = settings.repo_access
    base_dir = Path(settings.repo_base_dir or Path.cwd())
    customers = RepoAccessPolicy(
        local_roots=[str(base_dir), *map(str, access.local_roots)],
        local_denied=manager_folders(settings),
        allow_hosts=list(access.allow_hosts),
        deny_hosts=[*DEFAULT_DENIED_HOSTS, *suite_hosts(settings), *access.deny_hosts],
        detailed_errors=False,
        follow_redirects=False,
    )
    admin = RepoAccessPolicy(deny_hosts=list(access.deny_hosts))
    return RepoAccessRules(customers=customers, admin=admin)


def manager_folders(settings: ManagerSettings) -> list[str]:
    """Folders holding the manager's state, cache, configuration and keys: no customer repository may be there."""
    files = [settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, settings.config_file]
    if settings.mqtt.ca_file:
        files.append(Path(settings.mqtt.ca_file))
    folders = [Path(settings.state_dir), Path(settings.cache_dir), *(Path(file).parent for file in files if file)]
    return list(dict.fromkeys(str(folder.expanduser().absolute()) for folder in folders))


def suite_hosts(settings: ManagerSettings) -> list[str]:
    """Names and addresses of the manager, its database, broker and registry, and this machine's name."""
    hosts = [settings.host, settings.public_host or "", settings.mqtt.host, *_mongo_hosts(settings.mongo_uri)]
    if settings.registry is not None:
        hosts.append(_host_of(settings.registry.address))
    hosts.append(socket.gethostname())
    return list(dict.fromkeys(host.strip("[]") for host in hosts if host not in _WILDCARD_HOSTS))


def _mongo_hosts(uri: str) -> list[str]:
    netloc = uri.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return [_host_of(part) for part in netloc.split(",") if part]


def _host_of(address: str) -> str:
    try:
        return urlsplit(f"//{address.split('://', 1)[-1]}").hostname or ""
    except ValueError:
        return ""
