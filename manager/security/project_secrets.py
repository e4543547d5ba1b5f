"""The secrets a project keeps, sealed, in its record: today its repository's credentials.

The SLA never dumps them (``ProjectSLA.repo_credentials`` is excluded), so the stored and
served SLA holds the URL without them; the record holds them encrypted, for a manager
that restarts the project later.
"""

from __future__ import annotations

from flops_utils.repo_credentials import RepoCredentials
from manager.records import ProjectRecord
from manager.security.secret_box import SecretBox
from manager.sla import ProjectSLA

REPO_CREDENTIALS = "repo_credentials"


def seal_project_secrets(sla: ProjectSLA, box: SecretBox) -> dict[str, str]:
    """What :class:`ProjectRecord` stores in ``sealed`` for ``sla``; empty when it carries no secret."""
    if sla.repo_credentials is None:
        return {}
    return {REPO_CREDENTIALS: box.seal(sla.repo_credentials.model_dump_json())}


def with_project_secrets(sla: ProjectSLA, record: ProjectRecord, box: SecretBox) -> ProjectSLA:
    """``sla`` (read back from ``record``) with the secrets that were sealed with it.

    Raises :class:`manager.security.secret_box.SecretUnreadable` when this manager's key cannot open them.
    """
    sealed = record.sealed.get(REPO_CREDENTIALS)
    if sealed is None:
        return sla
    credentials = RepoCredentials.model_validate_json(box.open(sealed))
    return sla.model_copy(update={"repo_credentials": credentials})
