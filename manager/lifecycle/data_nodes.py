"""The manager's calls to node data servers, each with a token scoped to one customer.

Everything here goes through :class:`~manager.lifecycle.data_access.DataAccess` when the
deployment has one (``data_auth``); without it the data servers are open and share one
namespace (development only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from flops_utils.data_client import DataServerClient, DataServerError, DataServerUnavailable, TagShape
from manager.lifecycle.data_access import MANAGER_TOKEN_TTL_S, DataAccess
from manager.lifecycle.errors import PhaseFailed
from orchestrator_adapters.base import NodeInfo

log = logging.getLogger(__name__)

ShapeLister = Callable[[NodeInfo], dict[str, TagShape]]


@dataclass(frozen=True)
class DataServers:
    """Clients for a customer's view of the nodes' data servers."""

    access: DataAccess | None

    @property
    def ca_pem(self) -> str | None:
        return self.access.ca_pem() if self.access else None

    def reader(
        self, address: str, customer: str, tags: list[str] | None, project_id: str | None = None
    ) -> DataServerClient:
        """A short-lived read-only client (placement, listings)."""
        token = self.access.read_token(customer, project_id, tags, ttl_s=MANAGER_TOKEN_TTL_S) if self.access else None
        return DataServerClient(address, token, self.ca_pem)

    def writer(self, node: NodeInfo, customer: str) -> DataServerClient:
        token = self.access.write_token(customer, node.name, ttl_s=MANAGER_TOKEN_TTL_S)[0] if self.access else None
        return DataServerClient(str(node.data_server), token, self.ca_pem)

    def project_read_token(self, customer: str, project_id: str, node: str, tags: list[str]) -> str | None:
        return self.access.read_token(customer, project_id, tags, node=node) if self.access else None

    def shape_lister(self, customer: str, tags: list[str] | None) -> ShapeLister:
        def list_shapes(node: NodeInfo) -> dict[str, TagShape]:
            with self.reader(str(node.data_server), customer, tags) as client:
                return client.list_shapes(tags)

        return list_shapes

    def revoke_project(self, nodes: list[NodeInfo], project_id: str) -> list[str]:
        """Tell every node's data server to refuse the project's read tokens; returns what could not be told."""
        if self.access is None:
            return []
        problems = []
        for node in nodes:
            if not node.data_server:
                continue
            try:
                with DataServerClient(node.data_server, self.access.admin_token(), self.ca_pem) as client:
                    client.revoke_project(project_id)
            except DataServerError as error:
                problems.append(f"{node.name}: {error}")
        return problems


def check_feature_widths(nodes: list[NodeInfo], tags: list[str], list_shapes: ShapeLister) -> None:
    """Every chosen node must hold each tag with the same feature width; one clear line otherwise."""
    widths: dict[str, dict[int, list[str]]] = {}
    for node in nodes:
        try:
            shapes = list_shapes(node)
        except DataServerUnavailable:
            continue  # placement already noted it
        for tag, shape in shapes.items():
            if tag in tags and shape.rows and shape.width:
                widths.setdefault(tag, {}).setdefault(shape.width, []).append(node.name)
    for tag, by_width in widths.items():
        if len(by_width) > 1:
            found = "; ".join(f"{width} on {', '.join(names)}" for width, names in sorted(by_width.items()))
            raise PhaseFailed(
                f"data tag {tag!r} has different feature widths across the chosen nodes ({found}); "
                "every node must hold rows of the same width"
            )
    mixed = {tag: next(iter(by_width)) for tag, by_width in widths.items()}
    if len(set(mixed.values())) > 1:
        found = ", ".join(f"{tag}: {width}" for tag, width in sorted(mixed.items()))
        raise PhaseFailed(f"the project's data tags have different feature widths ({found}); a model takes one width")
