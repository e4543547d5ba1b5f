"""The REST API's data calls: node inventory, write tokens, mock data, the data servers' security."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flops_utils.service_config import DataServerSecurity
from manager.control import ControlError, MockRequest, MockResult
from manager.data_models import DataToken, NodeList
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.data_nodes import DataServers
from manager.lifecycle.inventory import node_inventory, write_token_for
from orchestrator_adapters.base import AdapterError, NodeInfo, OrchestratorAdapter

log = logging.getLogger(__name__)


class DataDesk:
    def __init__(self, settings: LifecycleSettings, adapter: Callable[[], OrchestratorAdapter]) -> None:
        """``adapter`` gives the default orchestrator's adapter, whose nodes hold the data servers."""
        self.settings = settings
        self._adapter = adapter

    def push_mock_data(self, request: MockRequest) -> MockResult:
        from manager.mocks import push_mock_data

        return push_mock_data(
            self._nodes(),
            request.mock_data_configuration,
            request.customer_id,
            DataServers(self.settings.data_access),
        )

    def list_nodes(self, customer: str) -> NodeList:
        return node_inventory(self._nodes(), customer, DataServers(self.settings.data_access))

    def data_write_token(self, customer: str, node: str) -> DataToken:
        return write_token_for(self._nodes(), customer, node, self.settings.data_access)

    def data_server_security(self) -> DataServerSecurity | None:
        access = self.settings.data_access
        return access.server_security() if access is not None else None

    def _nodes(self) -> list[NodeInfo]:
        """The nodes, once the data servers that died since the last call are running again."""
        try:
            adapter = self._adapter()
            for note in adapter.revive_data_servers():
                log.warning("%s", note)
            return adapter.list_nodes()
        except AdapterError as error:
            raise ControlError(f"the {self.settings.orchestrator} orchestrator is unavailable: {error}", 503) from None
