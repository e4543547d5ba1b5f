"""Secrets the manager must keep in its database, encrypted (a private repository's credentials).

A project that is restarted by a new manager process needs its repository's credentials
again, so they are stored with the project, but only as Fernet ciphertext
(AES-128-CBC with HMAC-SHA256, from ``cryptography``). The key is a file the manager keeps
next to its CA (``state_dir/pki/secrets.key``, mode 0600), made on first use: a
database dump, a backup or a customer reading its project document reveals nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "fernet:"  # names the scheme, so another one can be added later
KEY_FILE_NAME = "secrets.key"


class SecretUnreadable(ValueError):
    """A sealed secret that this manager's key cannot open (one line)."""


@dataclass(frozen=True)
class SecretBox:
    key_file: Path  # no I/O until the first seal or open

    def _fernet(self, create: bool) -> Fernet:
        try:
            return Fernet(self.key_file.read_bytes().strip())
        except FileNotFoundError:
            if not create:
                raise SecretUnreadable(f"the manager's secrets key {self.key_file} is missing") from None
        except ValueError:
            raise SecretUnreadable(f"the manager's secrets key {self.key_file} is not a Fernet key") from None
        self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            descriptor = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another thread or process made it first: use theirs
            return self._fernet(create=False)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(Fernet.generate_key())
        return self._fernet(create=False)

    def seal(self, secret: str) -> str:
        return PREFIX + self._fernet(create=True).encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        if not sealed.startswith(PREFIX):
            raise SecretUnreadable("a stored secret is not in a format this manager knows")
        try:
            return self._fernet(create=False).decrypt(sealed.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                f"a stored secret was sealed with another key than {self.key_file} "
                "(was the manager's state_dir replaced?)"
            ) from None
