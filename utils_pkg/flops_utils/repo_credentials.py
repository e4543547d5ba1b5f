"""Credentials for a private ML repository, kept apart from its URL.

Git hosts document ``https://user:token@host/org/repo.git`` for private repositories, so
users put tokens there. FLOps takes them out as soon as it reads the URL: the URL it
stores, logs, shows and writes into image labels is the one without them. Git gets the
credentials from a credential helper that reads the git process's environment, so they
never appear on a command line or in a clone's ``.git/config``.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

CREDENTIAL_SCHEMES = ("http", "https")  # ssh authenticates with keys; git:// has no authentication


class RepoCredentials(BaseModel):
    """What git answers when the repository's host asks who is cloning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # No control characters: git's credential protocol is line based.
    username: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")
    password: str = Field(default="", max_length=8192, pattern=r"^[^\x00-\x1f\x7f]*$", repr=False)


def split_repo_credentials(url: str) -> tuple[str, RepoCredentials | None]:
    """``url`` without its user information, and the credentials it carried (None: there were none).

    Only http(s) URLs are split; any other URL comes back unchanged.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url, None  # not a URL git could use either; the URL checks say why
    if parts.scheme.lower() not in CREDENTIAL_SCHEMES or "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=host))
    if not username and not password:
        return clean, None
    return clean, RepoCredentials(username=unquote(username) or "git", password=unquote(password))
