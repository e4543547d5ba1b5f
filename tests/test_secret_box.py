"""Secrets kept with projects: sealed with the manager's key, stored in the real database, never served."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pymongo
import pytest

from flops_utils.repo_credentials import RepoCredentials
from manager.records import ProjectRecord
from manager.security.project_secrets import REPO_CREDENTIALS, seal_project_secrets, with_project_secrets
from manager.security.secret_box import SecretBox, SecretUnreadable
from manager.sla import ProjectSLA
from manager.storage import MongoProjectStore

PASSWORD = "glpat-7Qx2-private"


def test_sealed_text_opens_only_with_the_key_that_sealed_it(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "pki" / "secrets.key")
    assert not (tmp_path / "pki").exists()  # no I/O before the first seal
    sealed = box.seal(PASSWORD)
    assert PASSWORD not in sealed and sealed.startswith("fernet:")
    assert stat.S_IMODE(box.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(box.key_file.parent.stat().st_mode) == 0o700
    assert box.open(sealed) == PASSWORD
    assert SecretBox(box.key_file).open(box.seal("again")) == "again"  # the key is made once and kept

    other = SecretBox(tmp_path / "other.key")
    other.seal("makes the other key")
    with pytest.raises(SecretUnreadable, match="sealed with another key than .*other.key"):
        other.open(sealed)
    with pytest.raises(SecretUnreadable, match="secrets key .*missing.key is missing"):
        SecretBox(tmp_path / "missing.key").open(sealed)
    with pytest.raises(SecretUnreadable, match="not in a format"):
        box.open("plain text")


def test_a_projects_credentials_are_stored_sealed_and_come_back_for_a_restart(
    tmp_path: Path, mongo_uri: str, mongo_db_name: str
) -> None:
    box = SecretBox(tmp_path / "secrets.key")
    sla = ProjectSLA.model_validate(
        {
            "ml_repo_url": f"https://alice:{PASSWORD}@git.example.org/ml/repo.git?t={PASSWORD}",
            "ml_model_flavor": "sklearn",
        }
    )
    record = ProjectRecord(
        project_id="sealed-1",
        customer="alice",
        sla=sla.model_dump(mode="json", by_alias=True),
        sealed=seal_project_secrets(sla, box),
    )
    assert set(record.sealed) == {REPO_CREDENTIALS}
    assert PASSWORD not in record.model_dump_json() and "sealed" not in record.model_dump()  # what the API serves

    store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    store.connect()
    try:
        store.insert_project(record)
        stored = store.get_project("sealed-1")
    finally:
        store.close()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    with client:
        raw = client[mongo_db_name]["projects"].find_one({"_id": "sealed-1"})
    assert raw is not None and raw["sealed"] == record.sealed and PASSWORD not in str(raw)
    assert stored is not None
    restarted = with_project_secrets(ProjectSLA.model_validate(stored.sla), stored, box)
    assert restarted.ml_repo_url == "https://git.example.org/ml/repo.git"
    assert restarted.repo_credentials == RepoCredentials(username="alice", password=PASSWORD, query=f"t={PASSWORD}")
    with pytest.raises(SecretUnreadable):
        with_project_secrets(ProjectSLA.model_validate(stored.sla), stored, SecretBox(tmp_path / "new.key"))
