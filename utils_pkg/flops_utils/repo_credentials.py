"""Credentials for a private ML repository, kept apart from its URL.

Git hosts document ``https://user:token@host/org/repo.git`` for private repositories, so
users put tokens there; some put them in the query string (``?token=...``). FLOps takes
both out as soon as it reads the URL: the URL it stores, logs, shows and writes into
image labels is the one without them. Git gets user and password from a credential
helper and the query from a URL rewrite (``url.<with query>.insteadOf``), both through
the git process's environment, so they never appear on a command line or in a clone's
``.git/config``.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

CREDENTIAL_SCHEMES = ("http", "https")  # ssh authenticates with keys; git:// has no authentication


class RepoCredentials(BaseModel):
    """What git answers when the repository's host asks who is cloning."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"anyOf": [{"required": ["username"]}, {"required": ["query"]}]}
    )

    # No control characters: git's credential protocol is line based.
    username: str | None = Field(default=None, min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")
    password: str = Field(default="", max_length=8192, pattern=r"^[^\x00-\x1f\x7f]*$", repr=False)
    query: str = Field(
        default="",
        max_length=8192,
        pattern=r"^[^\x00-\x20\x7f#]*$",
        repr=False,
        description="the repository URL's query string (e.g. token=...), kept out of the URL",
    )

    @model_validator(mode="after")
    def _username_or_query(self) -> RepoCredentials:
        if self.username is None and not self.query:
            raise ValueError("username is required")
        return self

    def with_query_of(self, other: RepoCredentials | None) -> RepoCredentials:
        """These credentials plus ``other``'s query string when they carry none of their own."""
        if other is None or not other.query or self.query:
            return self
        return self.model_copy(update={"query": other.query})

    def secrets(self) -> list[str]:
        """The values to blank out of any text shown to people (git's messages may quote its URL)."""
        return [value for value in (self.password, self.query) if len(value) >= 4]


def split_repo_credentials(url: str) -> tuple[str, RepoCredentials | None]:
    """``url`` without its user information and query string, and the credentials they carried
    (None: there were none).

    Only http(s) URLs are split; any other URL comes back unchanged. The whole query string
    counts as secret: a git repository's URL needs none, so one given is most likely a token.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url, None  # not a URL git could use either; the URL checks say why
    if parts.scheme.lower() not in CREDENTIAL_SCHEMES or ("@" not in parts.netloc and not parts.query):
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=host, query=""))
    if not username and not password and not parts.query:
        return clean, None
    user = (unquote(username) or "git") if username or password else None
    return clean, RepoCredentials(username=user, password=unquote(password), query=parts.query)


def url_with_query(url: str, credentials: RepoCredentials | None) -> str:
    """``url`` with the query string that was taken out of it (for git only; never shown)."""
    return f"{url}?{credentials.query}" if credentials is not None and credentials.query else url


def redact(text: str, credentials: RepoCredentials | None) -> str:
    """``text`` with the credentials' password and query blanked out."""
    for secret in credentials.secrets() if credentials is not None else []:
        text = text.replace(secret, "***")
    return text
