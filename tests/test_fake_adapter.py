"""The fake orchestrator of the fast lifecycle tests passes the adapter contract like the real adapters."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from orchestrator_adapters.base import NodeInfo, OrchestratorAdapter, ServiceKind, ServiceSpec
from tests.adapter_contract import FAILURE_LINE, AdapterContract, Behaviour, SpecFactory
from tests.fake_adapter import FakeAdapter, FakeService, ServiceCrashed


def contract_program(service: FakeService) -> None:
    """What ``make_spec``'s behaviour (the last word of its command) asks for."""
    behaviour = service.spec.command[-1]
    if behaviour == "fail":
        raise ServiceCrashed(FAILURE_LINE)
    if behaviour == "run":
        service.wait_stopped()


class TestFakeAdapterContract(AdapterContract):
    timeout_s = 10.0

    @pytest.fixture
    def adapter(self) -> Iterator[OrchestratorAdapter]:
        nodes = [NodeInfo("n1", "a", data_server="127.0.0.1:1"), NodeInfo("n2", "b"), NodeInfo("edge", None)]
        programs = {ServiceKind.BUILDER.value: contract_program, ServiceKind.OBSERVER.value: contract_program}
        fake = FakeAdapter(nodes, programs, reports=lambda message: None)
        yield fake
        fake.close()

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        def make(name: str, behaviour: Behaviour) -> ServiceSpec:
            kind = ServiceKind.OBSERVER if behaviour == "run" else ServiceKind.BUILDER
            return ServiceSpec(name=name, kind=kind, config={}, command=(sys.executable, "-c", behaviour))

        return make
