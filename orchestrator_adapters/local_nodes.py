"""The local adapter's declared "nodes": a small JSON file, so hierarchical placement and
per-node data servers work on one machine.

File format::

    {"nodes": [{"name": "node-a1", "cluster": "cluster-a", "labels": {"gpu": "no"}, "learner": true}]}
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator_adapters.base import AdapterError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class LocalNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    cluster: str | None = Field(default=None, pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)
    learner: bool = True


class LocalNodesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[LocalNode] = Field(min_length=1)

    @field_validator("nodes")
    @classmethod
    def _unique_names(cls, nodes: list[LocalNode]) -> list[LocalNode]:
        names = [node.name for node in nodes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        return nodes


DEFAULT_NODES: tuple[LocalNode, ...] = (
    LocalNode(name="node-a1", cluster="cluster-a"),
    LocalNode(name="node-a2", cluster="cluster-a"),
    LocalNode(name="node-b1", cluster="cluster-b"),
    LocalNode(name="node-b2", cluster="cluster-b"),
)


def load_nodes(path: str | None) -> list[LocalNode]:
    """The nodes declared in ``path``, or the default four (two clusters of two learners)."""
    if path is None:
        return list(DEFAULT_NODES)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise AdapterError(f"cannot read the local nodes file {path}: {error.strerror or error}") from error
    try:
        return LocalNodesFile.model_validate(json.loads(text)).nodes
    except json.JSONDecodeError as error:
        reason = f"{error.msg} at line {error.lineno}"
        raise AdapterError(f"the local nodes file {path} is not valid JSON: {reason}") from error
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        raise AdapterError(f"the local nodes file {path} is invalid at {where}: {first['msg']}") from error
