"""The suite's MongoDB-wire database: SecantusDB (production uses the official mongo image)."""

from __future__ import annotations

from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

from manager.suite.processes import ProcessRecord, find_binary, launch, wait_ready
from manager.suite.state import HOST, SECANTUSDB, ComponentState

READY_TIMEOUT_S = 60.0


def log_file(state_dir: Path) -> Path:
    return state_dir / "logs" / f"{SECANTUSDB}.log"


def mongo_uri(component: ComponentState) -> str:
    return f"mongodb://{HOST}:{component.port}"


def start(state_dir: Path, component: ComponentState) -> ProcessRecord:
    """Start SecantusDB on ``component.port``; return once it answers ``ping``.

    The caller must make sure no earlier server still has the data dir open.
    """
    binary = find_binary("secantusd-py", "install the Python package SecantusDB (make venv)")
    directory = state_dir / SECANTUSDB
    (directory / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
    # An explicit (empty) config file turns off discovery of ./ or ~/.secantus/secantusd.toml.
    config = directory / "secantusd.toml"
    config.write_text("# written by manager.suite: all settings are on the command line\n")
    argv = [
        binary,
        "--config",
        str(config),
        "--host",
        HOST,
        "--port",
        str(component.port),
        "--storage-path",
        str(directory / "data"),
        "--log-level",
        "WARNING",
    ]
    process = launch(argv, log_file=log_file(state_dir), cwd=state_dir, name=SECANTUSDB)
    uri = mongo_uri(component)
    wait_ready(
        process, lambda: database_answers(uri), name=SECANTUSDB, log_file=log_file(state_dir), timeout=READY_TIMEOUT_S
    )
    return process


def database_answers(uri: str, timeout_ms: int = 1000) -> bool:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms * 3
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()
