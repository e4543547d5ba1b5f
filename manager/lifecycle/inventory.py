"""The node inventory users see (``GET /nodes``) and node-scoped write tokens (``POST /data-tokens``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flops_utils.data_client import DataServerError, DataServerUnavailable
from manager.control import ControlError
from manager.data_models import DataToken, NodeList, NodeView, TagInfo
from manager.lifecycle.data_access import DataAccess
from manager.lifecycle.data_nodes import DataServers
from orchestrator_adapters.base import NodeInfo

_LIST_WORKERS = 8


def _view(node: NodeInfo, customer: str, servers: DataServers) -> NodeView:
    view = NodeView(name=node.name, cluster=node.cluster, learner=node.learner, data_server=node.data_server)
    if not node.data_server:
        return view
    try:
        with servers.reader(node.data_server, customer, None) as client:
            client.ping()
            shapes = client.list_shapes()
    except DataServerUnavailable as error:
        return view.model_copy(update={"reachable": False, "error": str(error)})
    except DataServerError as error:
        return view.model_copy(update={"reachable": True, "error": str(error)})
    tags = [TagInfo(tag=tag, rows=shape.rows, width=shape.width) for tag, shape in sorted(shapes.items())]
    return view.model_copy(update={"reachable": True, "tags": tags})


def node_inventory(nodes: list[NodeInfo], customer: str, servers: DataServers) -> NodeList:
    """Every node; for those with a data server, whether it answers and ``customer``'s tags there."""
    with ThreadPoolExecutor(max_workers=_LIST_WORKERS) as pool:
        views = list(pool.map(lambda node: _view(node, customer, servers), nodes))
    return NodeList(customer=customer, data_tls=servers.access is not None, ca_pem=servers.ca_pem, nodes=views)


def write_token_for(nodes: list[NodeInfo], customer: str, node: str, access: DataAccess | None) -> DataToken:
    by_name = {info.name: info for info in nodes if info.learner and info.data_server}
    target = by_name.get(node)
    if target is None:
        raise ControlError(
            f"no learner node with a data server named {node!r}; such nodes: {', '.join(sorted(by_name)) or 'none'}",
            404,
        )
    if access is None:
        return DataToken(customer=customer, node=node, data_server=str(target.data_server))
    token, expires_at = access.write_token(customer, node)
    return DataToken(
        customer=customer,
        node=node,
        data_server=str(target.data_server),
        token=token,
        expires_at=expires_at,
        ca_pem=access.ca_pem(),
    )
