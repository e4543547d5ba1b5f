"""Service configurations kept by the manager and fetched by reference.

On an orchestrator without a secrets object (Oakestra keeps a service's environment
in its database as it is), a service gets only ``FLOPS_CONFIG_URL`` and a bearer token
(:mod:`flops_utils.config_fetch`). The document it fetches is stored sealed (Fernet,
:class:`manager.security.secret_box.SecretBox`) next to the SHA-256 of its token, so neither a
database dump nor the orchestrator's records reveal the passwords and keys in it.
Deleting an owner's configurations (the project ends) makes its references useless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from manager.security.secret_box import SecretBox
from manager.storage.base import ProjectStore

CONFIG_PATH = "/service-config"


class ConfigRefused(LookupError):
    """A fetch the vault refuses: ``status`` 404 (no such or revoked) or 401 (wrong token)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ConfigReference:
    config_id: str
    token: str


def config_owner(project_id: str, service_name: str) -> str:
    """Whose configuration it is: the serving endpoint outlives the rest of its project."""
    return f"{project_id}/serving" if service_name == "serving" else project_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ConfigVault:
    store: ProjectStore
    box: SecretBox

    def deposit(self, owner: str, config: dict[str, Any]) -> ConfigReference:
        """Keep ``config`` sealed; the reference a service fetches it with."""
        reference = ConfigReference(config_id=secrets.token_hex(16), token=secrets.token_urlsafe(32))
        sealed = self.box.seal(json.dumps(config))
        self.store.save_service_config(
            reference.config_id, owner, {"token_sha256": _digest(reference.token), "sealed": sealed}
        )
        return reference

    def withdraw(self, config_id: str, token: str) -> str:
        """The configuration document (JSON text) if ``token`` is its token."""
        stored = self.store.get_service_config(config_id)
        if stored is None:
            raise ConfigRefused(f"no service configuration {config_id} (its project may have ended)", 404)
        if not hmac.compare_digest(str(stored.get("token_sha256", "")), _digest(token)):
            raise ConfigRefused("wrong token for this service configuration", 401)
        return self.box.open(str(stored["sealed"]))

    def revoke(self, *owners: str) -> int:
        """Delete the configurations of ``owners``; how many went."""
        return self.store.delete_service_configs(owners)
